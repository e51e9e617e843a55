"""What each CLI command does, as plain functions with explicit arguments."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from advrepair.data import balanced_subset, subset_label, load_dataset
from advrepair.defenses import DEFENSES, ReverseAttack, make_defense
from advrepair.errors import InputError
from advrepair.validation import check_int_at_least
from advrepair.factories import is_factory_spec
from advrepair.adaptive.contract import as_module
from advrepair.evaluation import CLEAN, AttackSpec, ModelEntry, ResultsStore, evaluate_matrix
from advrepair.evaluation.adaptive import AdaptiveConfig, DefenseUnderTest, run_adaptive
from advrepair.models import Classifier, load_checkpoint
from advrepair.apps.pipeline import (CLASSIFIER_FILE, CONTRASTIVE_FILE, ensure_classifier, ensure_ssl_task, load_contrastive_task,
                                load_ssl_task, negative_bank)
from advrepair.ssl import check_task_name
from advrepair.report import accuracy_table, write_report
from advrepair.training import ClassifierRecipe, SSLRecipe
from advrepair.attacks import make_attack, parse_spec


def demo(*, out: Path, data_root: str | None, n_images: int, autoattack: bool, adaptive_images: int, seed: int,
         device: str, progress: bool) -> Path:
    from advrepair.apps.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=out, data_root=data_root, n_images=n_images, autoattack=autoattack, seed=seed,
                     device=device, progress=progress, adaptive_images=adaptive_images)
    if adaptive_images == 0:
        cfg.adaptive = None
    return run_demo(cfg)


def train_classifier(*, dataset: str, data_root: str | None, arch: str, model_dir: Path, recipe: ClassifierRecipe,
                     eval_eps: float, seed: int, device: str, progress: bool) -> None:
    train = load_dataset(dataset, split="train", root=data_root)
    test = load_dataset(dataset, split="test", root=data_root)
    ensure_classifier(model_dir, train, test, arch=arch, recipe=recipe, seed=seed, eval_eps=eval_eps,
                      device=torch.device(device), progress=progress)


def train_ssl(*, dataset: str, data_root: str | None, model_dir: Path, recipe: SSLRecipe, tau: float, n_views: int,
              eval_eps: float, seed: int, device: str, progress: bool, task: str = "contrastive",
              mask: str = "center") -> None:
    check_task_name(task)
    train = load_dataset(dataset, split="train", root=data_root)
    test = load_dataset(dataset, split="test", root=data_root)
    clf, card = load_checkpoint(Path(model_dir) / CLASSIFIER_FILE, map_location=device, expected_kind="classifier")
    options: dict[str, Any] = {"tau": tau, "n_views": n_views} if task == "contrastive" else (
        {"mask": mask} if task == "inpainting" else {})
    if not isinstance(clf, Classifier):
        raise InputError(f"{model_dir} holds a {type(clf).__name__}, not an advrepair Classifier to train a head on")
    ensure_ssl_task(model_dir, task, clf, card, train, test, recipe=recipe, seed=seed,
                    negatives=negative_bank(train, seed=seed), task_options=options, eval_eps=eval_eps,
                    device=torch.device(device), progress=progress)


def train_purifier(*, dataset: str, data_root: str | None, feature_model_dir: Path, layer: str | None, out: Path,
                   recipe: Any, width: int, seed: int, device: str, progress: bool) -> Path:
    """naseer2020 Algorithm 2: a purifier trained against SSP on ``feature_model_dir``'s classifier."""
    from advrepair.defenses import save_purifier
    from advrepair.models import Critic, Purifier
    from advrepair.training import train_purifier as fit

    train = load_dataset(dataset, split="train", root=data_root)
    feature_model, card = load_checkpoint(Path(feature_model_dir) / CLASSIFIER_FILE, map_location=device,
                                          expected_kind="classifier")
    channels, size = train.image_shape[0], train.image_shape[1]
    torch.manual_seed(seed)
    purifier, critic = Purifier(in_channels=channels, width=width), Critic(in_channels=channels, input_size=size)
    history = fit(purifier, critic, feature_model, layer, train, recipe, seed=seed, device=device, progress=progress)
    stem = Path(out) / "purifier"
    save_purifier(purifier.cpu(), stem, feature_model=card.weights_sha256, layer=layer, recipe=recipe.to_dict(),
                  dataset=train.name, seed=seed, metrics=[{"metric": "history", "value": history}])
    tqdm.write(f"saved {stem}.safetensors")
    return stem


def parse_ssl_tasks(spec: str) -> list[tuple[str, float]]:
    """``"contrastive:1,rotation:50,inpainting:10"`` -> [(name, weight), ...] (weight 1 if omitted)."""
    pairs = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, weight = part.partition(":")
        check_task_name(name)
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise InputError(f"the weight of {name} in --ssl-tasks must be a number, got {weight!r}") from None
        if w < 0:
            raise InputError(f"the weight of {name} in --ssl-tasks must be >= 0, got {w}")
        pairs.append((name, w))
    if not pairs:
        raise InputError("--ssl-tasks names no task")
    return pairs


@dataclasses.dataclass(frozen=True)
class EvalRequest:
    """Everything `advrepair eval` is asked to do, whether it came from flags or a TOML run file
    (both go through the same parser and become this)."""

    dataset: str
    data_root: str | None
    model_dirs: tuple[Path, ...]
    attack_specs: tuple[str, ...]
    defenses: tuple[str, ...]
    eps_v: float | None
    reverse_steps: int
    n_views: int
    n_images: int
    batch_size: int
    out: Path
    resume: bool
    seed: int
    device: str
    progress: bool
    transfer_from: Path | None = None
    through: str | None = None
    adaptive: dict[str, Any] | None = None
    ssl_tasks: str = "contrastive"
    ray: str | None = None
    ray_workers: int = 2
    purifier: Path | None = None
    nrp_dynamic: bool = False
    precision: str = "fp32"
    channels_last: bool | None = None
    ride_iterations: int = 2000

    def __post_init__(self) -> None:
        if not self.model_dirs:
            raise InputError("eval needs at least one --model-dir")
        for name in ("n_images", "batch_size", "ray_workers", "n_views"):
            check_int_at_least(getattr(self, name), f"--{name.replace('_', '-')}", 1)
        check_int_at_least(self.reverse_steps, "--reverse-steps", 0)


def evaluate(request: EvalRequest) -> Path:
    """``advrepair eval``: the matrix (and the adaptive protocol) for one request."""
    return _evaluate(**{f.name: getattr(request, f.name) for f in dataclasses.fields(request)})


def _evaluate(*, dataset: str, data_root: str | None, model_dirs: Sequence[Path], attack_specs: Sequence[str],
             defenses: Sequence[str], eps_v: float | None, reverse_steps: int, transfer_from: Path | None = None,
             through: str | None = None, n_views: int, n_images: int, batch_size: int,
             out: Path, resume: bool, seed: int, device: str, progress: bool,
             adaptive: dict[str, Any] | None = None, ssl_tasks: str = "contrastive", ray: str | None = None,
             ray_workers: int = 2, purifier: Path | None = None, nrp_dynamic: bool = False,
             precision: str = "fp32", channels_last: bool | None = None, ride_iterations: int = 2000) -> Path:
    from advrepair.runtime import AutocastModule, autocast_context, prepare_module

    autocast_context(device, precision)  # refuse fp16 on a CPU before any work
    chosen = list(dict.fromkeys(d for d in defenses if d != "none"))
    specs = [AttackSpec(*parse_spec(s)) for s in attack_specs]
    parse_ssl_tasks(ssl_tasks)
    adaptive_config = None
    if adaptive is not None:
        if not chosen:
            raise InputError("--adaptive needs a defense to attack (--defense NAME)")
        if adaptive.get("eps") is None:
            given = {float(s.params["eps"]) for s in specs if s.name != CLEAN and s.params.get("eps") is not None}
            if len(given) != 1:
                raise InputError(f"give --adaptive-eps: the attacks' budgets {sorted(given)} do not name one eps")
            adaptive = {**adaptive, "eps": given.pop()}
        adaptive_config = AdaptiveConfig(**adaptive)
    for spec in specs:  # fail on a bad name or parameter before any work is done
        if spec.name != CLEAN:
            make_attack(spec.name, torch.nn.Identity(), **spec.params)
    if "reverse-attack" in chosen and eps_v is None:
        budgets = [s.params.get("eps") for s in specs if s.name != CLEAN]
        if not budgets or budgets[0] is None:
            raise InputError("give --eps-v, or an attack with eps=..., to size the reverse attack (eps_v = 2 eps)")
        if len(set(budgets)) > 1:
            raise InputError(f"attacks have different budgets {budgets}; give --eps-v explicitly")
        eps_v = 2 * float(budgets[0])
    store = ResultsStore(out, resume=resume)  # an unwritable --out fails here, before any work
    if transfer_from is not None:
        source, _ = load_checkpoint(Path(transfer_from) / CLASSIFIER_FILE, map_location=device, expected_kind="classifier")
        specs = [s if s.name == CLEAN else AttackSpec("transfer", {"source": source, "attack": s.name,
                                                                   "source_name": Path(transfer_from).name, **s.params})
                 for s in specs]
    if through is not None:
        if not chosen:
            raise InputError("--through needs a defense to attack through (--defense NAME)")
        specs += [AttackSpec(s.name, s.params, through=through) for s in specs if s.name != CLEAN]
    test = load_dataset(dataset, split="test", root=data_root)
    subset = balanced_subset(test, min(n_images, len(test)), seed=seed)
    train = load_dataset(dataset, split="train", root=data_root) if "reverse-attack" in chosen else None
    entries = []
    for model_dir in model_dirs:
        clf, card = load_checkpoint(Path(model_dir) / CLASSIFIER_FILE, map_location=device, expected_kind="classifier")
        clf = prepare_module(clf, device, channels_last)
        if precision != "fp32":
            clf = AutocastModule(clf, device, precision)
        modules: dict[str, torch.nn.Module] = {}
        for defense in chosen:
            if defense in DEFENSES or is_factory_spec(defense):
                modules[defense] = as_module(make_defense(defense, seed=seed))
            elif defense == "ride":
                from advrepair.defenses import RIDE

                modules["ride"] = RIDE(seed=seed, iterations=ride_iterations, progress=progress)
            elif defense == "nrp":
                from advrepair.defenses import NRPDefense

                if purifier is None:
                    raise InputError("--defense nrp needs --purifier STEM (made by `advrepair train purifier`)")
                modules["nrp"] = NRPDefense.from_checkpoint(purifier, map_location=device, dynamic=nrp_dynamic,
                                                            seed=seed)
            elif defense == "reverse-attack":
                assert train is not None and eps_v is not None
                negatives = negative_bank(train, seed=seed)
                tasks = [(load_contrastive_task(model_dir, card, negatives, n_views, torch.device(device))
                          if name == "contrastive" else load_ssl_task(model_dir, name, card, device=torch.device(device)),
                          weight) for name, weight in parse_ssl_tasks(ssl_tasks)]
                # clf may be the AutocastModule around the Classifier: it forwards features() too
                modules["reverse-attack"] = ReverseAttack(clf, tasks, eps_v=eps_v, steps=reverse_steps,  # type: ignore[arg-type]
                                                           seed=seed)
        # the precision is part of the results key (via the card), so bf16 never reuses fp32 records
        entries.append(ModelEntry(Path(model_dir).name, clf, card={**card.__dict__, "precision": precision},
                                  defenses=modules))
    if ray is not None:
        from advrepair.evaluation.distributed import evaluate_matrix_ray

        records = evaluate_matrix_ray(subset, entries, specs, store, workers=ray_workers,
                                      address=None if ray == "local" else ray,
                                      gpus_per_worker=1.0 if device.startswith("cuda") else 0.0,
                                      batch_size=batch_size, device=device,
                                      subset=subset_label(len(subset), seed))
    else:
        records = evaluate_matrix(subset, entries, specs, store, batch_size=batch_size, device=device,
                                  subset=subset_label(len(subset), seed), progress=progress)
    if adaptive_config is not None:
        for entry in entries:
            for label, module in entry.defenses.items():
                target = DefenseUnderTest.build(label, module, adaptive_config)
                if ray is not None:
                    from advrepair.evaluation.distributed import evaluate_adaptive_ray

                    evaluate_adaptive_ray(subset, entry, target, adaptive_config, store, workers=ray_workers,
                                          address=None if ray == "local" else ray,
                                          gpus_per_worker=1.0 if device.startswith("cuda") else 0.0,
                                          batch_size=batch_size, device=device,
                                          subset=subset_label(len(subset), seed), progress=progress)
                else:
                    run_adaptive(subset, entry, target, adaptive_config, store, batch_size=batch_size,
                                 device=device, subset=subset_label(len(subset), seed), progress=progress)
    with store.lock:  # another run writing into the same folder must not interleave its report
        path = write_report(out, title=f"advrepair eval on {dataset}")
    tqdm.write(accuracy_table(records))
    tqdm.write(f"report: {path}")
    return path


def resolve_classifier(spec: str, *, seed: int, device: str) -> tuple[torch.nn.Module, str]:
    """A classifier by zoo name, model directory or ``module:factory``, and its display name."""
    from advrepair import zoo
    from advrepair.factories import call_factory, is_factory_spec, load_factory

    if spec in zoo.ENTRIES:
        if zoo.entry(spec).kind is not zoo.ZooKind.CLASSIFIER:
            raise InputError(f"zoo entry {spec!r} is a {zoo.entry(spec).kind.value}, not a classifier")
        module, _ = zoo.load(spec, device=device)
        assert isinstance(module, torch.nn.Module)
        return module, spec
    if Path(spec).is_dir():
        clf, _ = load_checkpoint(Path(spec) / CLASSIFIER_FILE, map_location=device, expected_kind="classifier")
        return clf, Path(spec).name
    if is_factory_spec(spec):
        made = call_factory(load_factory(spec), seed=seed, device=device)
        if not isinstance(made, torch.nn.Module):
            raise InputError(f"{spec} returned a {type(made).__name__}, not an nn.Module classifier")
        return made.to(device).eval(), spec
    raise InputError(f"--classifier {spec!r} is neither a zoo classifier {sorted(zoo.ENTRIES)}, a model directory, "
                     "nor module:factory")


def resolve_defense(spec: str, classifier: torch.nn.Module, classifier_spec: str, *, eps: float,
                    eps_v: float | None, reverse_steps: int, seed: int, device: str, dataset: str = "fashion-mnist",
                    data_root: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A defense by baseline name, zoo head (the reverse attack with it), a folder (an NRP
    purifier from `train purifier`, or a model directory with a contrastive head from `train
    ssl`: the reverse attack), ``none`` or ``module:factory``."""
    from advrepair import zoo
    from advrepair.factories import call_factory, is_factory_spec, load_factory

    if spec == "none":
        return torch.nn.Identity()
    if spec in DEFENSES:
        return make_defense(spec, seed=seed)
    if spec in zoo.ENTRIES:
        head = zoo.entry(spec)
        if head.kind is not zoo.ZooKind.SSL_HEAD:
            raise InputError(f"zoo entry {spec!r} is a {head.kind.value}, not a self-supervised head")
        if classifier_spec in zoo.ENTRIES and head.parent != classifier_spec:
            raise InputError(f"zoo head {spec!r} was trained on {head.parent!r}, not on {classifier_spec!r}")
        task, _ = zoo.load(spec, device=device)
        assert isinstance(task, torch.nn.Module)
        return ReverseAttack(classifier, task, eps_v=2 * eps if eps_v is None else eps_v,  # type: ignore[arg-type]
                             steps=reverse_steps, seed=seed)
    if Path(spec).is_dir():
        folder = Path(spec)
        if (folder / "purifier.safetensors").exists():
            from advrepair.defenses import NRPDefense

            return NRPDefense.from_checkpoint(folder / "purifier", map_location=device, seed=seed)
        if (folder / f"{CONTRASTIVE_FILE}.safetensors").exists():
            _, card = load_checkpoint(folder / CLASSIFIER_FILE, map_location=device, expected_kind="classifier")
            negatives = negative_bank(load_dataset(dataset, split="train", root=data_root), seed=seed)
            task = load_contrastive_task(folder, card, negatives, device=torch.device(device))
            return ReverseAttack(classifier, task, eps_v=2 * eps if eps_v is None else eps_v,  # type: ignore[arg-type]
                                 steps=reverse_steps, seed=seed)
        raise InputError(f"--defense {spec}: the folder holds neither purifier.safetensors nor "
                         f"{CONTRASTIVE_FILE}.safetensors")
    if is_factory_spec(spec):
        made = call_factory(load_factory(spec), classifier=classifier, eps=eps, seed=seed, device=device)
        if not callable(made):
            raise InputError(f"{spec} returned a {type(made).__name__}, not a defense (images -> images)")
        return made
    raise InputError(f"--defense {spec!r} is neither none, a baseline {sorted(DEFENSES)}, a zoo head, nor "
                     "module:factory")


def audit(*, classifier: str, defense: str, eps: float, norm: str, preset: str, dataset: str,
          data_root: str | None, n_images: int, eps_v: float | None, reverse_steps: int, batch_size: int,
          out: Path, seed: int, device: str, progress: bool, cascade: bool = False) -> Path:
    from advrepair.auditing import audit as run_audit
    from advrepair.validation import check_int_at_least

    check_int_at_least(n_images, "--n-images", 1)
    clf, clf_name = resolve_classifier(classifier, seed=seed, device=device)
    module = resolve_defense(defense, clf, classifier, eps=eps, eps_v=eps_v, reverse_steps=reverse_steps,
                             seed=seed, device=device, dataset=dataset, data_root=data_root)
    test = load_dataset(dataset, split="test", root=data_root)
    images, labels = balanced_subset(test, min(n_images, len(test)), seed=seed).tensors()
    report = run_audit(clf, module, images, labels, eps=eps, norm=norm, preset=preset, out=out, seed=seed,
                       batch_size=batch_size, device=device, progress=progress, classifier_name=clf_name,
                       defense_label=defense, cascade=cascade)
    tqdm.write(report.to_markdown())
    tqdm.write(f"report: {out / 'audit.md'}")
    return out / "audit.md"


def zoo_list(*, as_json: bool, as_markdown: bool = False) -> str:
    from advrepair import zoo
    from advrepair.zoo.summary import markdown_table, metric_text

    if as_markdown:
        return markdown_table()
    rows = [zoo.describe(e.name) for e in zoo.entries()]
    if as_json:
        return json.dumps(rows, indent=2)
    lines = []
    for r in rows:
        eps = "standard" if r["eps"] is None else f"eps {r['eps']:g}"
        parent = f" on {r['parent']}" if r["parent"] else ""
        state = "; ".join(metric_text(m) for m in r["metrics"]) if r["shipped"] else "not built"
        lines.append(f"{r['name']}  [{r['kind']}{parent}{', ' + eps if r['kind'] == 'classifier' else ''}]\n"
                     f"    {r['description']}\n    {state}")
    return "\n".join(lines)


def zoo_build(*, names: Sequence[str], all_entries: bool, out: Path | None, write_shipped: bool, autoattack: bool,
              data_root: str | None, device: str, progress: bool) -> bool:
    from advrepair import zoo
    from advrepair.apps.pipeline import DEFAULT_HOME
    from advrepair.zoo.build import build

    if all_entries == bool(names):
        raise InputError("name the entries to build, or pass --all (not both)")
    chosen = [e.name for e in zoo.entries()] if all_entries else [zoo.entry(n).name for n in names]
    target = zoo.weights_dir() if write_shipped else (out or DEFAULT_HOME / "zoo-build")
    results = build(chosen, Path(target), data_root=data_root, device=torch.device(device), progress=progress,
                    autoattack=autoattack)
    return all(r.matches for r in results)


def report(out: Path) -> Path:
    if not (Path(out) / "results.json").exists():
        raise InputError(f"no results.json in {out}")
    return write_report(out)


def _numbers(text: str, kind: type, flag: str) -> tuple[Any, ...]:
    try:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise InputError(f"{flag} must be comma-separated numbers, got {text!r}") from None


def experiment(which: str, options: dict[str, Any], *, device: str, progress: bool) -> Path:
    """``advrepair experiment NAME``: one paper's evaluation, written as a report folder; ``options``
    holds the command's flags by name (``out``, ``n_images``, ...)."""
    o = options
    common: dict[str, Any] = dict(out=o["out"], data_root=o["data_root"], seed=o["seed"], device=device,
                                  progress=progress, n_images=o["n_images"], eps=o["eps"])
    if o.get("models_dir") is not None:
        common["models_dir"] = o["models_dir"]
    if which == "mao2021":
        from advrepair.apps.experiments.mao2021 import Mao2021Config, run_mao2021_experiment

        chosen: dict[str, Any] = {k: v for k, v in common.items() if v is not None}
        for flag in ("sweep_images", "audit_images", "standard_audit_images"):
            if o.get(flag) is not None:
                chosen[flag] = o[flag]
        for flag in ("classifiers", "heads"):
            if o.get(flag):
                chosen[flag] = tuple(p.strip() for p in o[flag].split(",") if p.strip())
        chosen.update(dataset=o["dataset"], sweeps=not o["no_sweeps"], lawhon=not o["no_lawhon"],
                      explain=not o["no_explain"], publish=o["publish"])
        return run_mao2021_experiment(Mao2021Config.quick(**chosen) if o["quick"] else Mao2021Config(**chosen))
    if which == "xiao2020":
        from advrepair.apps.experiments.adversarial_transformation import XiaoConfig, run_xiao_experiment

        return run_xiao_experiment(XiaoConfig(
            **common, attack_steps=o["attack_steps"], delta=o["delta"], g_steps=o["g_steps"],
            bpda_steps=_numbers(o["bpda_steps"], int, "--bpda-steps"),
            eot_draws=_numbers(o["eot_draws"], int, "--eot-draws"), deltas=_numbers(o["deltas"], float, "--deltas"),
            sweep_random_start=not o["paper_fig5"], square_queries=o["square_queries"], zoo=not o["no_zoo"],
            spsa_steps=o["spsa_steps"], spsa_samples=o["spsa_samples"]))
    if which in ("nrp", "multitask"):
        from advrepair.apps.experiments.multitask_ssl import MultiTaskConfig, run_multitask_ablation
        from advrepair.apps.experiments.nrp import NRPConfig, run_nrp_experiment

        Config: Any = NRPConfig if which == "nrp" else MultiTaskConfig
        run: Any = run_nrp_experiment if which == "nrp" else run_multitask_ablation
        adaptive = {"adaptive": None} if o["adaptive_images"] == 0 else {}
        return run(Config(**common, adaptive_images=o["adaptive_images"], **adaptive))
    if which == "ride":
        from advrepair.apps.experiments.ride import RideConfig, run_ride_experiment

        return run_ride_experiment(RideConfig(
            **common, whitebox_images=o["whitebox_images"], val_images=o["val_images"],
            attack_steps=o["attack_steps"], sweep_checkpoints=o["sweep_checkpoints"],
            sweep_iterations=_numbers(o["sweep_iterations"], int, "--sweep-iterations"), ride_lr=o["ride_lr"],
            paper_budget_images=o["paper_budget_images"], paper_budget_mode_images=o["paper_budget_mode_images"]))
    raise InputError(f"unknown experiment {which!r}")
