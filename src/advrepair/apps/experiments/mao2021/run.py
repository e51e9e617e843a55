"""The mao2021 experiment's stages: each fills the results store (resumable) and returns what
the report needs. Attacks are crafted on the undefended classifier unless a row says
otherwise (the paper's threat model); the repair and the noise control see the same inputs."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from advrepair import zoo
from advrepair.adaptive.defense_aware import DefenseAwarePGD
from advrepair.apps.commands import resolve_classifier, resolve_defense
from advrepair.apps.experiments.mao2021.config import STEP_FACTOR, Mao2021Config, Row, default_heads, l2_rows, linf_rows
from advrepair.apps.experiments.setup import StageClock
from advrepair.apps.pipeline import ensure_classifier, ensure_contrastive_task, negative_bank
from advrepair.data import ImageDataset, balanced_subset, subset_label
from advrepair.defenses import RandomNoise, ReverseAttack
from advrepair.errors import InputError
from advrepair.evaluation import AttackSpec, ModelEntry, ResultsStore, evaluate_attack, evaluate_matrix, record_key
from advrepair.models import Classifier
from advrepair.adaptive.contract import describe_model

REPAIR, NOISE = "reverse-attack", "random-noise"


@dataclass
class Subject:
    """One classifier under test with its repair and the repair's noise control."""

    name: str
    classifier: Classifier
    card: dict[str, Any]
    repair: ReverseAttack
    noise: RandomNoise
    zoo_name: str | None

    def entry(self, defenses: Mapping[str, torch.nn.Module] | None = None) -> ModelEntry:
        chosen = {REPAIR: self.repair, NOISE: self.noise} if defenses is None else defenses
        return ModelEntry(self.name, self.classifier, card=self.card, defenses=dict(chosen))


@dataclass
class Run:
    cfg: Mao2021Config
    device: torch.device
    train: ImageDataset
    table_data: ImageDataset
    sweep_data: ImageDataset
    store: ResultsStore
    subjects: list[Subject]
    results: dict[str, Any] = field(default_factory=dict)

    def label(self, data: ImageDataset) -> str:
        return subset_label(len(data), self.cfg.seed)

    def matrix(self, data: ImageDataset, entry: ModelEntry, specs: list[AttackSpec]) -> list[dict[str, Any]]:
        return evaluate_matrix(data, [entry], specs, self.store, batch_size=self.cfg.batch_size, device=self.device,
                               subset=self.label(data), progress=self.cfg.progress)

    def row(self, data: ImageDataset, entry: ModelEntry, attack: Any, row: str,
            with_base: bool = True) -> dict[str | None, dict[str, Any]]:
        return evaluate_attack(data, entry, attack, self.store, row=row, row_field="mao2021_row",
                               with_base=with_base, subset=self.label(data), batch_size=self.cfg.batch_size,
                               device=self.device, progress=self.cfg.progress)

    def cached(self, parts: dict[str, Any], compute: Callable[[], tuple[dict[str, Any], dict[str, np.ndarray]]]
               ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A measurement that is not an attack row (timings, features), stored once under ``parts``."""
        key = record_key(**parts)
        if not self.store.has(key):
            record, arrays = compute()
            self.store.add({**parts, **record, "key": key}, arrays)
        record = self.store.require(key)
        return record, self.store.arrays(record)


def build_subjects(cfg: Mao2021Config, device: torch.device, train: ImageDataset) -> list[Subject]:
    heads = cfg.heads if cfg.heads is not None else default_heads(cfg.classifiers, set(zoo.ENTRIES))
    subjects = []
    for clf_spec, head_spec in zip(cfg.classifiers, heads):
        clf, name = resolve_classifier(clf_spec, seed=cfg.seed, device=str(device))
        if not callable(getattr(clf, "features", None)):
            raise InputError(f"{clf_spec}: the reverse attack reads the classifier's penultimate features, so the "
                             f"experiment needs a classifier with a features(x) method (a zoo model, a model folder, "
                             f"or an adapter wrapped with feature_layer=...), got {type(clf).__name__}")
        repair = resolve_defense(head_spec, clf, clf_spec, eps=cfg.eps, eps_v=cfg.eps_v, reverse_steps=cfg.reverse_steps,
                                 seed=cfg.seed, device=str(device), dataset=cfg.dataset, data_root=cfg.data_root)
        if not isinstance(repair, ReverseAttack):
            raise InputError(f"head {head_spec!r} is not a contrastive head (a zoo head or a model directory with "
                             f"ssl-contrastive.safetensors)")
        card = {"weights_sha256": describe_model(clf)}
        if clf_spec in zoo.ENTRIES:
            card = dict(zoo.card(clf_spec).__dict__)
        subjects.append(Subject(name, cast(Classifier, clf), card, repair, RandomNoise(cfg.eps_v, seed=cfg.seed),
                                clf_spec if clf_spec in zoo.ENTRIES else None))
    return subjects


def table_rows(cfg: Mao2021Config) -> tuple[Row, ...]:
    rows = linf_rows(cfg.eps, cfg.budget_scale)
    if cfg.budget_scale == 1.0:
        return rows
    short = (("version", "custom"), ("attacks", (("apgd-ce", {"steps": cfg.scaled(100)}),
                                                 ("apgd-t", {"steps": cfg.scaled(100), "n_target_classes": 2}),
                                                 ("square", {"n_queries": cfg.scaled(5000)}))))
    return (*rows[:-1], Row("AutoAttack (APGD-CE, APGD-T, Square; shortened)", "autoattack", cfg.eps, options=short))


def stage_table1(run: Run, s: Subject) -> None:
    rows = table_rows(run.cfg)
    entry = s.entry()
    records = run.matrix(run.table_data, entry, [r.spec(run.cfg.seed) for r in rows])
    run.results.setdefault("table1", {})[s.name] = _by_row(list(rows), records, entry)


def stage_table5(run: Run, s: Subject) -> None:
    cfg = run.cfg
    eps_v = cfg.eps_v_factor * cfg.l2_eps
    repair = s.repair.variant(norm="L2", eps_v=eps_v, step_size=STEP_FACTOR * eps_v / s.repair.steps)
    entry = s.entry({REPAIR: repair, NOISE: RandomNoise(eps_v, norm="L2", seed=cfg.seed)})
    rows = l2_rows(cfg.l2_eps, cfg.budget_scale)
    records = run.matrix(run.table_data, entry, [r.spec(cfg.seed) for r in rows])
    run.results.setdefault("table5", {})[s.name] = _by_row(list(rows), records, entry)


def _pgd20(cfg: Mao2021Config, eps: float) -> Row:
    return Row(f"PGD-{cfg.scaled(20)}", "pgd", eps, cfg.scaled(20))


def stage_eps_curve(run: Run, s: Subject) -> None:
    """Fig. 6: PGD-20 at each attack budget, with and without the (fixed) repair."""
    steps = run.cfg.scaled(20)
    rows = [Row(f"PGD-{steps} eps {e:g}", "pgd", e, steps) for e in run.cfg.eps_sweep]  # one title per row
    entry = s.entry()
    by_title = _by_row(rows, run.matrix(run.sweep_data, entry, [r.spec(run.cfg.seed) for r in rows]), entry)
    run.results.setdefault("fig6", {})[s.name] = {e: by_title[r.title] for e, r in zip(run.cfg.eps_sweep, rows)}


def stage_eps_v_tradeoff(run: Run, s: Subject) -> None:
    """Fig. 7: clean vs robust accuracy as eps_v grows, for the repair and for noise of that budget."""
    cfg = run.cfg
    defenses: dict[str, torch.nn.Module] = {}
    for v in cfg.eps_v_sweep:
        defenses[f"{REPAIR} {v:g}"] = s.repair.variant(eps_v=v, step_size=STEP_FACTOR * v / s.repair.steps)
        defenses[f"{NOISE} {v:g}"] = RandomNoise(v, seed=cfg.seed)
    rows = [Row("clean", "clean", cfg.eps), _pgd20(cfg, cfg.eps)]
    entry = s.entry(defenses)
    run.results.setdefault("fig7", {})[s.name] = _by_row(rows, run.matrix(run.sweep_data, entry,
                                                                          [r.spec(cfg.seed) for r in rows]), entry)


def stage_timing(run: Run, s: Subject) -> None:
    """Fig. 5's time axis: seconds per image of the repair stopped after k steps (the same
    step size as the full K, so k steps are the first k of the full run's iterates)."""
    cfg = run.cfg
    images = run.sweep_data.tensors()[0][:cfg.timing_images].to(run.device)

    def measure() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        seconds = {}
        for k in cfg.timed_steps:
            repair = s.repair.variant(steps=k, step_size=s.repair.step_size)
            repair(images[:2])  # warm-up: first calls allocate
            start = time.perf_counter()
            with torch.no_grad():
                repair(images)
            seconds[str(k)] = (time.perf_counter() - start) / len(images)
        return {"seconds_per_image": seconds, "threads": torch.get_num_threads()}, {}

    record, _ = run.cached({"stage": "mao2021-timing", "model": s.name, "model_weights": s.card.get("weights_sha256"),
                            "defense": s.repair.params(), "steps": list(cfg.timed_steps), "images": len(images),
                            "device": str(run.device)}, measure)
    run.results.setdefault("timing", {})[s.name] = record


def stage_features(run: Run, s: Subject) -> None:
    """Fig. 8: penultimate features of clean, PGD-20 and repaired images, and every iterate."""
    cfg = run.cfg
    data = balanced_subset(run.sweep_data, cfg.pca_images, seed=cfg.seed)
    x, y = (t.to(run.device) for t in data.tensors())
    row = _pgd20(cfg, cfg.eps)

    def measure() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        attack = row.build(s.classifier, cfg.seed)
        assert attack is not None
        feats: dict[str, list[torch.Tensor]] = {"clean": [], "attacked": [], "iterates": []}
        preds: dict[str, list[torch.Tensor]] = {"clean": [], "attacked": [], "repaired": []}
        for start in range(0, len(x), cfg.batch_size):
            xb, yb = x[start:start + cfg.batch_size], y[start:start + cfg.batch_size]
            adv = attack(xb, yb)
            iterates = s.repair.trajectory(adv)  # (K + 1, B, C, H, W)
            with torch.no_grad():
                feats["clean"].append(s.classifier.features(xb).cpu())
                feats["attacked"].append(s.classifier.features(adv).cpu())
                feats["iterates"].append(torch.stack([s.classifier.features(z) for z in iterates]).cpu())
                for name, images in (("clean", xb), ("attacked", adv), ("repaired", iterates[-1])):
                    preds[name].append(s.classifier(images).argmax(1).cpu())
        arrays = {f"features_{k}": torch.cat(v, dim=1 if k == "iterates" else 0).numpy() for k, v in feats.items()}
        arrays.update({f"pred_{k}": torch.cat(v).numpy() for k, v in preds.items()})
        arrays["labels"] = y.cpu().numpy()
        return {"attack": attack.params()}, arrays

    record, arrays = run.cached({"stage": "mao2021-features", "model": s.name, "dataset": data.name,
                                 "subset": run.label(data), "model_weights": s.card.get("weights_sha256"),
                                 "defense": s.repair.params(), "attack_row": row.title}, measure)
    run.results.setdefault("fig8", {})[s.name] = (record, arrays)


def stage_defense_aware(run: Run, s: Subject) -> None:
    """Fig. 4: the defense-aware attack (Eq. 8) crafted on the classifier, then repaired; and
    the long version (the supplement's 500 steps) on fewer images."""
    cfg = run.cfg
    entry = s.entry({REPAIR: s.repair})
    out: dict[str, Any] = {}
    plans = [("fig4", run.sweep_data, cfg.scaled(cfg.aware_steps), cfg.lambdas)]
    if cfg.long_aware_images and s.name == _last_name(cfg):  # the supplement's check, on the robust CNN
        long_data = balanced_subset(run.sweep_data, cfg.long_aware_images, seed=cfg.seed)
        plans.append(("fig4_long", long_data, cfg.scaled(cfg.long_aware_steps), cfg.long_aware_lambdas))
    for name, data, steps, lambdas in plans:
        out[name] = {}
        for lam in lambdas:
            attack = DefenseAwarePGD(s.classifier, s.repair, lambda_s=lam, eps=cfg.eps,
                                     alpha=STEP_FACTOR * cfg.eps / steps, steps=steps, seed=cfg.seed)
            out[name][lam] = run.row(data, entry, attack, f"defense-aware lambda {lam:g}, {steps} steps")
    run.results.setdefault("aware", {})[s.name] = out


def _zoo_task(name: str, device: torch.device) -> Any:
    task, _ = zoo.load(name, device)
    return task


def lawhon_heads(s: Subject) -> dict[str, str]:
    """The zoo heads lawhon's repair uses for this subject, by task; empty if any is missing."""
    if s.zoo_name is None:
        return {}
    names = {"rotation": f"{s.zoo_name}-rotation", "inpainting": f"{s.zoo_name}-inpainting",
             "inpainting-random": f"{s.zoo_name}-inpainting-random"}
    return {k: v for k, v in names.items() if v in zoo.ENTRIES and zoo.is_shipped(v)}


def stage_lawhon(run: Run, s: Subject) -> None:
    """lawhon: the multi-task repair (text and code weights), random-patch vs center masks,
    and an attacker aware of the contrastive task only vs of every task."""
    cfg = run.cfg
    heads = lawhon_heads(s)
    if "rotation" not in heads or "inpainting" not in heads:
        run.results.setdefault("lawhon_missing", []).append(s.name)
        return
    contrastive = s.repair.task_list[0]
    rotation, inpainting = _zoo_task(heads["rotation"], run.device), _zoo_task(heads["inpainting"], run.device)

    def multi(tasks: list[tuple[Any, float]]) -> ReverseAttack:
        return ReverseAttack(s.classifier, tasks, eps_v=cfg.eps_v, steps=cfg.reverse_steps, seed=cfg.seed)

    repairs = {"C+R+I (1, 1, 1)": multi([(contrastive, 1.0), (rotation, 1.0), (inpainting, 1.0)]),
               "C+R+I (1, 50, 10)": multi([(contrastive, 1.0), (rotation, 50.0), (inpainting, 10.0)])}
    if "inpainting-random" in heads:
        random_masks = _zoo_task(heads["inpainting-random"], run.device)
        repairs["C+R+I random masks (1, 1, 1)"] = multi([(contrastive, 1.0), (rotation, 1.0), (random_masks, 1.0)])
    rows = [Row("clean", "clean", cfg.eps), _pgd20(cfg, cfg.eps)]
    entry = s.entry(repairs)
    static = _by_row(rows, run.matrix(run.table_data, entry, [r.spec(cfg.seed) for r in rows]), entry)
    target = repairs["C+R+I (1, 1, 1)"]
    aware: dict[str, Any] = {}
    steps = cfg.scaled(20)
    for lam in cfg.lawhon_lambdas:
        for who, knows in (("contrastive only", s.repair), ("every task", target)):
            attack = DefenseAwarePGD(s.classifier, knows, lambda_s=lam, eps=cfg.eps,
                                     alpha=STEP_FACTOR * cfg.eps / steps, steps=steps, seed=cfg.seed)
            aware[f"{who}, lambda {lam:g}"] = run.row(
                run.sweep_data, s.entry({"C+R+I (1, 1, 1)": target}), attack,
                f"lawhon aware of {who}, lambda {lam:g}, {steps} steps")
    run.results.setdefault("lawhon", {})[s.name] = {"static": static, "aware": aware, "heads": heads}


def stage_audit(run: Run, s: Subject) -> None:
    """Question (b): the audit of the repair and of the noise control, at ``audit_preset``."""
    if run.cfg.audit_images:
        run.results.setdefault("audit", {})[s.name] = _audits(run, s, run.cfg.audit_preset, run.cfg.audit_images)


def stage_audit_standard(run: Run, s: Subject) -> None:
    """Question (b) at the standard preset, cascaded, on ``standard_audit_images`` images."""
    if run.cfg.standard_audit_images:
        run.results.setdefault("audit_standard", {})[s.name] = _audits(
            run, s, "standard", run.cfg.standard_audit_images, cascade=True)


def _audits(run: Run, s: Subject, preset: str, n: int, cascade: bool = False) -> dict[str, Any]:
    from advrepair.auditing import audit

    cfg = run.cfg
    images, labels = balanced_subset(run.table_data, n, seed=cfg.seed).tensors()
    reports = {}
    for label, defense in ((REPAIR, s.repair), (NOISE, s.noise)):
        folder = cfg.out / f"audit-{preset}{'-cascade' if cascade else ''}-{s.name}-{label}"
        reports[label] = audit(s.classifier, defense, images, labels, eps=cfg.eps, preset=preset,
                               out=folder, seed=cfg.seed, batch_size=min(100, cfg.batch_size), device=str(run.device),
                               progress=cfg.progress, classifier_name=s.name, defense_label=label, cascade=cascade)
    return reports


def stage_explain(run: Run, s: Subject) -> None:
    """Which of eps_v, head training and base model explains the old result (the demo's
    1-2 epoch models: the repair cost the robust CNN 11 points under PGD-20)? A grid of
    base (zoo / short recipe) x head (zoo / 1 epoch) x eps_v on the sweep images."""
    cfg = run.cfg
    if s.zoo_name is None or zoo.entry(s.zoo_name).eps is None or run.train.name != "fashion-mnist":
        return
    from advrepair.apps.pipeline import QUICK_ADVERSARIAL, QUICK_SSL

    recipe = cfg.explain_recipe or QUICK_ADVERSARIAL
    ssl_recipe = cfg.explain_ssl or QUICK_SSL
    test = run.sweep_data
    negatives = negative_bank(run.train, size=256, seed=cfg.seed)
    folder = cfg.models_dir / "mao2021-explain"
    short_clf, short_card = ensure_classifier(folder / "short-base", run.train, test, arch="small-cnn", recipe=recipe,
                                              seed=cfg.seed, eval_eps=cfg.eps, device=run.device, progress=cfg.progress)
    zoo_card = zoo.card(s.zoo_name)
    zoo_model_dir = folder / "zoo-base"
    _link_zoo_classifier(s, zoo_model_dir)
    short_head_on_zoo = ensure_contrastive_task(zoo_model_dir, s.classifier, zoo_card, run.train, test,
                                                recipe=ssl_recipe, seed=cfg.seed, negatives=negatives,
                                                eval_eps=cfg.eps, device=run.device, progress=cfg.progress)
    short_head = ensure_contrastive_task(folder / "short-base", short_clf, short_card, run.train, test,
                                         recipe=ssl_recipe, seed=cfg.seed, negatives=negatives, eval_eps=cfg.eps,
                                         device=run.device, progress=cfg.progress)
    combos = {"zoo base, zoo head": (s.classifier, s.card, s.repair.task_list[0]),
              "zoo base, 1-epoch head": (s.classifier, s.card, short_head_on_zoo),
              "short base, 1-epoch head": (short_clf, {"weights_sha256": short_card.weights_sha256}, short_head)}
    rows = [Row("clean", "clean", cfg.eps), _pgd20(cfg, cfg.eps)]
    grid: dict[str, Any] = {}
    for combo, (clf, card, task) in combos.items():
        defenses: dict[str, torch.nn.Module] = {
            f"eps_v {v:g}": ReverseAttack(clf, task, eps_v=v, steps=cfg.reverse_steps, seed=cfg.seed)
            for v in cfg.explain_eps_v}
        entry = ModelEntry(f"{s.name} [{combo}]", clf, card=card, defenses=defenses)
        grid[combo] = _by_row(rows, run.matrix(test, entry, [r.spec(cfg.seed) for r in rows]), entry)
    run.results.setdefault("explain", {})[s.name] = {"grid": grid, "short_card": short_card.__dict__}


def _link_zoo_classifier(s: Subject, model_dir: Path) -> None:
    """A model folder holding the zoo classifier, so the pipeline can train a head on it."""
    from advrepair.models import save_checkpoint
    from advrepair.models.checkpoint import checkpoint_paths
    from advrepair.apps.pipeline import CLASSIFIER_FILE

    if not checkpoint_paths(model_dir / CLASSIFIER_FILE)[0].exists():
        assert s.zoo_name is not None
        save_checkpoint(s.classifier, model_dir / CLASSIFIER_FILE, zoo.card(s.zoo_name))


def _by_row(rows: list[Row], records: list[dict[str, Any]], entry: ModelEntry) -> dict[str, dict[str | None, dict[str, Any]]]:
    """``evaluate_matrix``'s records, per row title and defense label (None: no defense). By
    position, not by the stored label: equal defenses under two labels share one record."""
    labels: list[str | None] = [None, *entry.defenses]
    width = len(labels)
    return {r.title: dict(zip(labels, records[width * i:width * (i + 1)])) for i, r in enumerate(rows)}


STAGES: tuple[tuple[str, Callable[[Run, Subject], None], float], ...] = (
    # name, function, cost in repairs per table image (for the ETA); in the order that answers
    # the questions first, so an interrupted run has the answer
    ("Table 1 (L-inf attacks, repair and noise control)", stage_table1, 10.0),
    ("explanation grid", stage_explain, 4.0),
    ("Fig. 7 (eps_v trade-off)", stage_eps_v_tradeoff, 5.0),
    ("audit", stage_audit, 8.0),
    ("Fig. 5 (time vs K)", stage_timing, 0.1),
    ("Fig. 8 (feature trajectories)", stage_features, 0.3),
    ("Fig. 6 (robustness vs attack eps)", stage_eps_curve, 3.0),
    ("Table 5 (L2 attacks)", stage_table5, 5.0),
    ("Fig. 4 (defense-aware attack)", stage_defense_aware, 5.0),
    ("lawhon (multi-task repair)", stage_lawhon, 9.0),
    ("audit, standard preset (cascade)", stage_audit_standard, 40.0),
)


def _wanted(cfg: Mao2021Config, fn: Callable[[Run, Subject], None], s: Subject) -> bool:
    if fn in (stage_table1, stage_table5):
        return True
    # the audits have their own switches (0 images skips one), whatever the sweeps
    if fn is stage_audit:  # question (b) is about the robust classifier: the last one
        return cfg.audit_images > 0 and s.name == _last_name(cfg)
    if fn is stage_audit_standard:
        return cfg.standard_audit_images > 0 and s.name == _last_name(cfg)
    if not cfg.sweeps:
        return False
    if fn is stage_lawhon:
        return cfg.lawhon
    if fn is stage_explain:
        return cfg.explain and s.zoo_name is not None and zoo.entry(s.zoo_name).eps is not None
    return True


def _last_name(cfg: Mao2021Config) -> str:
    return Path(cfg.classifiers[-1]).name if Path(cfg.classifiers[-1]).is_dir() else cfg.classifiers[-1]


#: seconds between two rewrites of the report while stages run
REPORT_INTERVAL = 60.0


def run_stages(run: Run, on_stage_done: Callable[[], Any]) -> None:
    units = [(f"{name} | {s.name}", fn, s, cost * len(run.table_data)) for name, fn, cost in STAGES
             for s in run.subjects if _wanted(run.cfg, fn, s)]
    probe = run.table_data.tensors()[0][:8].to(run.device)
    start = time.perf_counter()
    with torch.no_grad():
        run.subjects[0].repair(probe)
    clock = StageClock([(name, cost) for name, _, _, cost in units], (time.perf_counter() - start) / len(probe),
                       run.cfg.progress)
    for index, (_, fn, s, _) in enumerate(units):
        clock.stage(index)
        fn(run, s)
        clock.finished(index)
        on_stage_done()
    tqdm.write(f"mao2021: {len(units)} stages done")


def run_mao2021_experiment(cfg: Mao2021Config) -> Path:
    """Every stage on every classifier; writes ``cfg.out/report.md`` after the first stage, then
    after a stage once ``REPORT_INTERVAL`` seconds have passed since the last rewrite (so an
    interrupted run leaves a recent report of what is done; every record is stored as it is
    made), and at the end; returns its path. A rerun with the same config skips every stored
    record and only rewrites the report."""
    from advrepair.apps.experiments.mao2021.report import write_mao2021_report

    start = time.perf_counter()
    device, train, test = cfg.start()
    table_data = balanced_subset(test, min(cfg.n_images, len(test)), seed=cfg.seed)
    sweep_data = balanced_subset(table_data, min(cfg.sweep_images, len(table_data)), seed=cfg.seed)
    store = ResultsStore(cfg.out, resume=True)
    run = Run(cfg, device, train, table_data, sweep_data, store, build_subjects(cfg, device, train))
    tqdm.write(f"mao2021: {len(run.subjects)} classifiers; tables on {len(table_data)} test images, sweeps on "
               f"{len(sweep_data)}; records in {cfg.out}")

    invocation = {"stage": "mao2021-invocation", "started": time.time(), "config": cfg.to_dict()}

    def report(finished: bool = False) -> Path:
        with store.lock:
            # this invocation's wall time so far, so the report can sum the cost over resumed runs
            store.add({**invocation, "key": record_key(**invocation), "seconds_wall": time.perf_counter() - start})
            return write_mao2021_report(cfg, store, run.results, time.perf_counter() - start, finished)

    last_written = [float("-inf")]

    def after_stage() -> None:
        # redrawing every figure takes ~1 s: after each of a quick run's 19 stages it was a third
        # of the run
        if time.perf_counter() - last_written[0] >= REPORT_INTERVAL:
            report()
            last_written[0] = time.perf_counter()

    run_stages(run, after_stage)
    path = report(finished=True)
    tqdm.write(f"report: {path} ({time.perf_counter() - start:.0f} s)")
    return path
