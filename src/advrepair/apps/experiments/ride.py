"""The RIDE experiment on Fashion-MNIST: Fig. 5a (accuracy vs iterations), Table 1 (gray-box),
Table 2 (white-box BPDA-identity) and the distance trajectories of Figs. 2e / 6.

Lin, Pfister & Zhang, "White-Box Adversarial Defense via Self-Supervised Data Estimation" (RIDE)
fits one small network per input (:class:`advrepair.defenses.ride.RIDE`, Algorithm 2 /
Eqs. 7-9). :func:`run_ride_experiment` reproduces the *shape* of the paper's evaluation in one
resumable run on a standard classifier:

- **Fig. 5a**: accuracy of ``f(RIDE(x_adv))`` against the number of Adam steps on a small,
  class-balanced *validation* set (test images disjoint from the evaluation images), for FGSM
  and PGD images crafted on the classifier. One fit with ``T = sweep_checkpoints`` checkpoints
  per K in ``sweep_iterations`` gives the accuracy after ``t * K`` steps for every t (RIDE with
  ``t`` checkpoints returns exactly the ``t``-th checkpoint estimate of a longer run: the
  random draws come in the same order). The best validation accuracy (mean over the attacks;
  ties: fewer steps) fixes the deployed ``(K, T)`` -- "the chosen stop".
- **Table 1** (gray-box): clean, FGSM and PGD-``attack_steps`` (L-inf ``eps``) crafted on the
  undefended classifier; defenses none, median 3x3, total variation (Chambolle, weight 0.1)
  and RIDE at the chosen stop, on ``n_images`` class-balanced test images.
- **Table 2** (white-box): PGD through ``BPDA(defense)`` (identity backward, the paper's BPDA
  attacker) on ``whitebox_images`` of them, next to the static (gray-box) PGD on the same images.
- **Figs. 2e / 6**: the mean L2 distance of the estimate to the clean and to the adversarial
  image against the step, from the sweep's fits.

Every accuracy is a record of :class:`advrepair.evaluation.store.ResultsStore` in ``cfg.out``
(skipped on a rerun; the gray-box and white-box cells go through
:func:`advrepair.evaluation.harness.evaluate_matrix`, which also resumes inside a cell), the
classifier comes from :func:`advrepair.apps.pipeline.ensure_classifier` (the demo's standard CNN
recipe, reused from ``models_dir/classifier_name`` when its card matches), and
:func:`write_ride_report` writes ``report.md`` and the PNGs from the store alone.

Deviations from the paper, on purpose:
- Dataset and classifier: Fashion-MNIST and our SmallCNN (the demo's standard recipe); the
  paper uses MNIST / CIFAR-10 / ImageNet (Table 1 is ImageNet with ResNet-50).
- Cost: the paper runs T = 5 checkpoints of K = 2000 steps (10,000 Adam steps per image). On a
  2-core CPU that is 5-30 s per image, so the defaults here are K = 100, T = 5 (500 steps) and
  the stop is chosen on the validation sweep; ``ride_lr`` may be raised above the paper's
  1e-4 to make up for fewer steps (recorded in every RIDE record's parameters).
- Baselines: one median kernel (3x3) and one TV setting (Chambolle, weight 0.1); the paper
  reports the best over kernel sizes 3-11 and weights for both TV solvers (its Tables 4-6),
  i.e. tuned on the test set, which we do not do.
- Attacks: eps = 0.1 (the usual Fashion-MNIST budget), PGD with ``attack_steps`` (10) steps
  of ``2.5 eps / steps`` and a seeded random start; FGSM single step. The BPDA attacker is
  PGD-``attack_steps`` with the identity backward (the paper: BPDA around PGD, 10 iterations
  in its Fig. 7 analysis), on fewer images because each attack step refits RIDE.
- The stop is chosen on validation images from the test split disjoint from the evaluation
  images; the paper reads its stop off Fig. 5a without saying on which images.

Example:
    >>> cfg = RideConfig(out=Path("/tmp/runs/ride"), n_images=100, whitebox_images=20)
    >>> report = run_ride_experiment(cfg)       # -> /tmp/runs/ride/report.md
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from advrepair.data import ImageDataset  # noqa: E402
from advrepair.data.subsets import balanced_subset  # noqa: E402
from advrepair.defenses.median import MedianFilter  # noqa: E402
from advrepair.defenses.ride import MODES, RIDE  # noqa: E402
from advrepair.defenses.total_variation import TotalVariation  # noqa: E402
from advrepair.errors import InputError  # noqa: E402
from advrepair.evaluation.harness import CLEAN, AttackSpec, ModelEntry, evaluate_matrix, weights_id  # noqa: E402
from advrepair.evaluation.metrics import accuracy_of  # noqa: E402
from advrepair.evaluation.store import ResultsStore, record_key  # noqa: E402
from advrepair.apps.experiments.setup import RunConfig  # noqa: E402
from advrepair.apps.pipeline import QUICK_STANDARD, ensure_classifier  # noqa: E402
from advrepair.training.recipe import ClassifierRecipe  # noqa: E402
from advrepair.validation import check_int_at_least, check_positive  # noqa: E402
from advrepair.report.tables import accuracy_cell  # noqa: E402

PROTOCOL = "ride"
#: most points kept per trajectory curve in results.json (the arrays keep every step)
TRAJECTORY_POINTS = 200
DEFENSE_ORDER = ("median-3x3", "tv", "ride")


@dataclass
class RideConfig(RunConfig):
    """Everything :func:`run_ride_experiment` needs.

    Paths: ``out`` receives results.json, arrays/, report.md and the PNGs; the classifier lives
    in ``models_dir / classifier_name`` (default: the demo's standard CNN, reused if present).

    Threat model: L-inf ``eps``; PGD takes ``attack_steps`` steps of ``attack_alpha`` (default
    ``2.5 eps / attack_steps``). Images: ``n_images`` (Table 1), ``whitebox_images`` of them
    (Table 2), ``val_images`` disjoint ones for the sweep (Fig. 5a).

    RIDE: ``ride_mode`` with the paper's sigma/alpha/network, learning rate ``ride_lr``; the sweep
    fits ``sweep_checkpoints`` checkpoints for each K in ``sweep_iterations``.

    Example:
        >>> cfg = RideConfig(out=Path("/tmp/runs/ride"), sweep_iterations=(50, 100), threads=1)
        >>> run_ride_experiment(cfg)
    """

    out: Path = Path("reports/ride")
    classifier_name: str = "fmnist-cnn-standard"
    classifier_recipe: ClassifierRecipe = QUICK_STANDARD
    batch_size: int = 50
    # -- threat model (and eps = 0.1 from RunConfig) and image counts
    attack_steps: int = 10
    attack_alpha: float | None = None
    n_images: int = 100
    whitebox_images: int = 20
    val_images: int = 50
    # -- RIDE
    ride_mode: str = "ride"
    ride_lr: float = 1e-4
    ride_sigma: float = 0.5
    ride_alpha: float = 0.9
    sweep_iterations: tuple[int, ...] = (100,)
    sweep_checkpoints: int = 5
    # -- baselines
    median_kernel: int = 3
    tv_weight: float = 0.1

    def __post_init__(self) -> None:
        self.check_run_fields()
        for name in ("attack_steps", "whitebox_images", "val_images", "sweep_checkpoints"):
            check_int_at_least(getattr(self, name), name, 1)
        if self.whitebox_images > self.n_images:
            raise InputError(f"whitebox_images ({self.whitebox_images}) cannot exceed n_images ({self.n_images}): "
                             "the white-box images are a subset of the gray-box ones")
        for name in ("eps", "ride_lr", "ride_sigma", "tv_weight"):
            check_positive(getattr(self, name), name)
        if self.eps > 1:
            raise InputError(f"eps must be in (0, 1] for images in [0, 1], got {self.eps}")
        if not 0 <= self.ride_alpha <= 1:
            raise InputError(f"ride_alpha must be in [0, 1], got {self.ride_alpha}")
        if self.attack_alpha is not None:
            check_positive(self.attack_alpha, "attack_alpha")
        if self.ride_mode not in MODES:
            raise InputError(f"ride_mode must be one of {MODES}, got {self.ride_mode!r}")
        self.sweep_iterations = tuple(self.sweep_iterations)
        if not self.sweep_iterations:
            raise InputError("sweep_iterations must list at least one K")
        for k in self.sweep_iterations:
            check_int_at_least(k, "every entry of sweep_iterations", 1)
        MedianFilter(self.median_kernel)  # validates the kernel size

    @property
    def alpha(self) -> float:
        """PGD step size."""
        return self.attack_alpha if self.attack_alpha is not None else 2.5 * self.eps / self.attack_steps

    def ride(self, iterations: int, checkpoints: int) -> RIDE:
        """The RIDE defense of this config with ``iterations`` (K) and ``checkpoints`` (T)."""
        return RIDE(mode=self.ride_mode, iterations=iterations, checkpoints=checkpoints, sigma=self.ride_sigma,
                    alpha=self.ride_alpha, lr=self.ride_lr, seed=self.seed, progress=self.progress)

    def attacks(self) -> list[AttackSpec]:
        """The gray-box attacks: FGSM and PGD crafted on the classifier."""
        return [AttackSpec("fgsm", {"eps": self.eps}),
                AttackSpec("pgd", {"eps": self.eps, "alpha": self.alpha, "steps": self.attack_steps})]

def _log(msg: str) -> None:
    tqdm.write(msg)


def split_validation(ds: ImageDataset, n_eval: int, n_val: int, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Disjoint, class-balanced evaluation and validation subsets of ``ds``.

    A balanced subset of ``n_eval + n_val`` images is split per class (the first images of each
    class, in dataset order, go to validation), so both parts stay balanced.

    Returns:
        (evaluation, validation) datasets with ``n_eval`` and ``n_val`` images.

    Example:
        >>> evaluation, validation = split_validation(test, 100, 50, seed=0)
    """
    n_eval = check_int_at_least(n_eval, "n_eval", 1)
    n_val = check_int_at_least(n_val, "n_val", 1)
    both = balanced_subset(ds, n_eval + n_val, seed=seed)
    base, extra = divmod(n_val, ds.num_classes)
    val_idx: list[int] = []
    for cls in range(ds.num_classes):
        members = torch.nonzero(both.labels == cls, as_tuple=False).reshape(-1).tolist()
        val_idx += members[:base + (1 if cls < extra else 0)]
    if len(val_idx) != n_val:
        raise InputError(f"could not draw {n_val} balanced validation images besides {n_eval} evaluation images")
    chosen = set(val_idx)
    eval_idx = [i for i in range(len(both)) if i not in chosen]
    return both.subset(eval_idx), both.subset(sorted(val_idx))


def _all(ds: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*ds.batches(max(1, len(ds))))
    return torch.cat(xs), torch.cat(ys)


def _craft(spec: AttackSpec, clf: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    attack = spec.build(clf)
    if attack is None:
        return x
    return torch.cat([attack(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _subsample(values: torch.Tensor) -> tuple[list[int], list[float]]:
    """(L,) per-step values -> at most TRAJECTORY_POINTS (step, value) pairs, last step kept."""
    stride = max(1, -(-values.shape[0] // TRAJECTORY_POINTS))
    steps = list(range(0, values.shape[0], stride))
    if steps[-1] != values.shape[0] - 1:
        steps.append(values.shape[0] - 1)
    return steps, [float(values[s]) for s in steps]


def _sweep(cfg: RideConfig, store: ResultsStore, clf: nn.Module, card: dict[str, Any], val: ImageDataset,
           subset: str, device: torch.device) -> list[dict[str, Any]]:
    """Fig. 5a: one record per (attack, K) with the accuracy after every checkpoint."""
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    records: list[dict[str, Any]] = []
    for spec in cfg.attacks():
        desc = spec.describe(clf)
        adv = None
        for k in cfg.sweep_iterations:
            ride = cfg.ride(k, cfg.sweep_checkpoints)
            key = record_key(kind="ride-sweep", dataset=val.name, subset=subset, n_images=len(val),
                             model_weights=weights_id(card), attack=desc, defense=ride.params())
            if store.has(key):
                records.append(store.require(key))
                continue
            if x is None:
                x, y = _all(val)
                x, y = x.to(device), y.to(device)
            if adv is None:
                assert x is not None and y is not None
                adv = _craft(spec, clf, x, y, cfg.batch_size)
            _log(f"sweep: RIDE K={k} x T={cfg.sweep_checkpoints} on {len(val)} {desc['name']} images")
            t0 = time.perf_counter()
            result = ride.fit(adv, clean=x, trajectory=True)
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                correct = torch.stack([clf(adv).argmax(1) == y]
                                      + [clf(est).argmax(1) == y for est in result.checkpoints]).cpu()
            traj = result.trajectory
            assert traj is not None and traj.to_clean is not None
            t_steps, to_clean = _subsample(traj.to_clean.mean(1))
            _, to_adv = _subsample(traj.to_adv.mean(1))
            record = {"kind": "ride-sweep", "key": key, "protocol": PROTOCOL, "dataset": val.name, "subset": subset,
                      "n_images": len(val), "model": cfg.classifier_name, "model_weights": weights_id(card),
                      "attack": desc, "defense": {"label": "ride", **ride.params()}, "iterations": k,
                      "steps": [k * t for t in range(cfg.sweep_checkpoints + 1)],
                      "accuracy": correct.float().mean(1).tolist(),
                      "stderr": [accuracy_of(c).stderr for c in correct],
                      "trajectory_steps": t_steps, "to_clean": to_clean, "to_adv": to_adv,
                      "clean_to_adv": float((adv - x).flatten(1).norm(dim=1).mean()),
                      "seconds": seconds, "seconds_per_image_step": seconds / (len(val) * ride.total_steps)}
            store.add(record, {"correct_checkpoints": correct.numpy(), "to_clean": traj.to_clean.numpy(),
                               "to_adv": traj.to_adv.numpy()})
            records.append(store.require(key))
    return records


def choose_stop(sweep: list[dict[str, Any]]) -> tuple[int, int, float]:
    """The (K, T) with the best validation accuracy, averaged over the sweep's attacks.

    Ties go to fewer total steps, then smaller K. Step 0 (no defense) is not a candidate.

    Returns:
        (iterations K, checkpoints T, mean validation accuracy).

    Example:
        >>> choose_stop([{"iterations": 10, "accuracy": [0.1, 0.5, 0.6], "attack": {"name": "pgd"}}])
        (10, 2, 0.6)
    """
    if not sweep:
        raise InputError("the sweep has no records to choose a stop from")
    per: dict[tuple[int, int], list[float]] = {}
    for rec in sweep:
        k = int(rec["iterations"])
        for t, acc in enumerate(rec["accuracy"][1:], start=1):
            per.setdefault((k, t), []).append(float(acc))
    scored = [(sum(v) / len(v), -(k * t), -k, k, t) for (k, t), v in per.items()]
    best = max(scored)
    return best[3], best[4], best[0]


def run_ride_experiment(cfg: RideConfig) -> Path:
    """Train or reuse the classifier, fill ``cfg.out``'s results store, write the report.

    Returns:
        the path of ``report.md``.

    Example:
        >>> run_ride_experiment(RideConfig(out=Path("/tmp/runs/ride"), threads=1))
    """
    start = time.perf_counter()
    device, train, test = cfg.start()
    clf, card_obj = ensure_classifier(cfg.models_dir / cfg.classifier_name, train, test, arch="small-cnn",
                                      recipe=cfg.classifier_recipe, seed=cfg.seed, eval_eps=cfg.eps, device=device,
                                      progress=cfg.progress)
    clf = clf.to(device).eval()
    card = dict(card_obj.__dict__)
    store = ResultsStore(cfg.out, resume=True)
    n_before = len(store.records)
    evaluation, val = split_validation(test, cfg.n_images, cfg.val_images, cfg.seed)
    whitebox = balanced_subset(evaluation, cfg.whitebox_images, seed=cfg.seed)
    val_desc = f"ride validation: balanced {len(val)} disjoint from the evaluation images (seed {cfg.seed})"
    eval_desc = f"ride evaluation: balanced {len(evaluation)} (seed {cfg.seed})"
    wb_desc = f"ride white-box: balanced {len(whitebox)} of the evaluation images (seed {cfg.seed})"

    sweep = _sweep(cfg, store, clf, card, val, val_desc, device)
    k_star, t_star, val_acc = choose_stop(sweep)
    _log(f"chosen stop: K={k_star} x T={t_star} ({k_star * t_star} steps), validation accuracy {val_acc:.3f}")
    ride = cfg.ride(k_star, t_star)
    defenses: dict[str, nn.Module] = {"median-3x3": MedianFilter(cfg.median_kernel),
                                      "tv": TotalVariation(weight=cfg.tv_weight, solver="chambolle"), "ride": ride}
    entry = ModelEntry(cfg.classifier_name, clf, card=card, defenses=defenses)
    gray = evaluate_matrix(evaluation, [entry], [AttackSpec(CLEAN), *cfg.attacks()], store,
                           batch_size=cfg.batch_size, device=device, subset=eval_desc, progress=cfg.progress)
    pgd = cfg.attacks()[1]
    white = evaluate_matrix(whitebox, [entry], [AttackSpec(CLEAN), pgd, AttackSpec(pgd.name, pgd.params, through="bpda")],
                            store, batch_size=cfg.batch_size, device=device, subset=wb_desc, progress=cfg.progress)

    summary_key = record_key(kind="ride-summary", sweep=[r["key"] for r in sweep], gray=[r["key"] for r in gray],
                             white=[r["key"] for r in white], stop=[k_star, t_star])
    if not store.has(summary_key):
        store.add({"kind": "ride-summary", "key": summary_key, "protocol": PROTOCOL, "model": cfg.classifier_name,
                   "model_weights": weights_id(card), "classifier_recipe": card.get("recipe"),
                   "classifier_metrics": card.get("metrics"), "config": cfg.to_dict(),
                   "stop": {"iterations": k_star, "checkpoints": t_star, "steps": k_star * t_star,
                            "validation_accuracy": val_acc},
                   "sweep": [r["key"] for r in sweep], "gray": [r["key"] for r in gray],
                   "white": [r["key"] for r in white], "subsets": {"validation": val_desc, "gray": eval_desc,
                                                                   "white": wb_desc},
                   "run_seconds": time.perf_counter() - start})
    added = len(store.records) - n_before
    report = write_ride_report(cfg.out, wall_seconds=time.perf_counter() - start, records_added=added)
    _log(f"RIDE report: {report} ({time.perf_counter() - start:.0f} s, {added} new records)")
    return report


# -- report -----------------------------------------------------------------------------------
def _pct(rec: dict[str, Any] | None) -> str:
    return accuracy_cell(rec, missing="-")


def _label(rec: dict[str, Any]) -> str:
    d = rec.get("defense")
    return "none" if d is None else str(d.get("label"))


def _attack_name(attack: dict[str, Any]) -> str:
    name = attack["name"]
    if name == "pgd":
        name = f"PGD-{attack.get('steps')}"
    elif name != CLEAN:
        name = name.upper()
    else:
        name = "Clean"
    return name + (" (BPDA-I)" if attack.get("through") == "bpda" else "")


def _table(records: list[dict[str, Any]], title_col: str) -> tuple[str, list[str]]:
    cols: list[str] = []
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        col = _attack_name(r["attack"])
        if col not in cols:
            cols.append(col)
        cells[(_label(r), col)] = r
    rows = ["none", *[d for d in DEFENSE_ORDER if any(lab == d for lab, _ in cells)]]
    lines = [f"| {title_col} | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(_pct(cells.get((row, c))) for c in cols) + " |")
    return "\n".join(lines), cols


def _sweep_figure(sweep: list[dict[str, Any]], stop: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for rec in sweep:
        ax.errorbar(rec["steps"], [100 * a for a in rec["accuracy"]], yerr=[100 * s for s in rec["stderr"]],
                    marker="o", capsize=2, label=f"{_attack_name(rec['attack'])}, K={rec['iterations']}")
    ax.axvline(stop["steps"], color="gray", ls="--", label=f"chosen stop ({stop['steps']} steps)")
    ax.set_xlabel("RIDE Adam steps (t * K)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Accuracy of f(RIDE(x_adv)) vs iterations (cf. Fig. 5a)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _trajectory_figure(sweep: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    k_max = max(r["iterations"] for r in sweep)
    for rec in (r for r in sweep if r["iterations"] == k_max):
        name = _attack_name(rec["attack"])
        line, = ax.plot(rec["trajectory_steps"], rec["to_clean"], label=f"{name}: to clean")
        ax.plot(rec["trajectory_steps"], rec["to_adv"], ls="--", color=line.get_color(), label=f"{name}: to adversarial")
        ax.axhline(rec["clean_to_adv"], ls=":", color=line.get_color(), lw=0.8)
    ax.set_xlabel("RIDE Adam steps")
    ax.set_ylabel("mean L2 distance of the estimate")
    ax.set_title(f"Estimate trajectory, K={k_max} (cf. Figs. 2e / 6); dotted: L2(x_adv, x)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_ride_report(out_dir: str | os.PathLike[str], wall_seconds: float | None = None,
                      records_added: int | None = None) -> Path:
    """``report.md``, ``ride_iterations.png`` and ``ride_trajectory.png`` from ``out_dir``'s store.

    Uses the newest ``ride-summary`` record; raises InputError when there is none.

    Example:
        >>> write_ride_report("/tmp/runs/ride")
    """
    out = Path(out_dir)
    store = ResultsStore(out, resume=True)
    summaries = [r for r in store.records if r.get("kind") == "ride-summary"]
    if not summaries:
        raise InputError(f"{out / 'results.json'} has no ride-summary record: run run_ride_experiment first")
    s = summaries[-1]

    def recs(keys: list[str]) -> list[dict[str, Any]]:
        return [r for r in (store.get(k) for k in keys) if r is not None]

    sweep, gray, white = recs(s["sweep"]), recs(s["gray"]), recs(s["white"])
    cfg, stop = s["config"], s["stop"]
    fig_iter = _sweep_figure(sweep, stop, out / "ride_iterations.png")
    fig_traj = _trajectory_figure(sweep, out / "ride_trajectory.png")
    ride_recs = [r for r in gray if _label(r) == "ride" and r["attack"]["name"] != CLEAN]
    per_image = [r["defense_seconds"] / max(1, r["n_images"]) for r in ride_recs]
    gray_table, _ = _table(gray, "Defense")
    white_table, _ = _table(white, "Defense")
    all_steps = sorted({st for r in sweep for st in r["steps"]})
    lines = [
        "# RIDE on Fashion-MNIST (Lin, Pfister & Zhang)", "",
        f"Classifier `{s['model']}` (SmallCNN, recipe {s.get('classifier_recipe')}); attacks L-inf eps = "
        f"{cfg['eps']}, PGD-{cfg['attack_steps']} step {cfg['attack_alpha'] or 2.5 * cfg['eps'] / cfg['attack_steps']:.4g} "
        f"with a seeded random start. RIDE mode `{cfg['ride_mode']}`, sigma {cfg['ride_sigma']}, alpha "
        f"{cfg['ride_alpha']}, Adam lr {cfg['ride_lr']}, seed {cfg['seed']}. Accuracies in % ± binomial "
        "standard error.", "",
        "## Iterations (cf. Fig. 5a)", "",
        f"{s['subsets']['validation']}. Accuracy after t * K Adam steps (step 0: no defense).", "",
        "| Attack | K | " + " | ".join(f"{st} steps" for st in all_steps) + " |",
        "|---|---|" + "---|" * len(all_steps),
    ]
    for r in sweep:
        by_step = dict(zip(r["steps"], r["accuracy"]))
        lines.append(f"| {_attack_name(r['attack'])} | {r['iterations']} | "
                     + " | ".join(f"{100 * by_step[st]:.1f}" if st in by_step else "-" for st in all_steps) + " |")
    lines += ["", f"**Chosen stop**: K = {stop['iterations']} x T = {stop['checkpoints']} = {stop['steps']} steps "
              f"(best mean validation accuracy, {100 * stop['validation_accuracy']:.1f}%).", "",
              f"![accuracy vs iterations]({fig_iter.name})", "",
              "## Gray-box (cf. Table 1)", "",
              f"{s['subsets']['gray']}. Attacks crafted on the undefended classifier; median "
              f"{cfg['median_kernel']}x{cfg['median_kernel']}, TV (Chambolle, weight {cfg['tv_weight']}), RIDE at the "
              "chosen stop.", "", gray_table, ""]
    if per_image:
        lines += [f"RIDE cost: {sum(per_image) / len(per_image):.2f} s per image ({stop['steps']} steps).", ""]
    lines += ["## White-box BPDA (cf. Table 2)", "",
              f"{s['subsets']['white']}. PGD-{cfg['attack_steps']} crafted on the classifier (static) and through "
              "BPDA(defense) with the identity backward (BPDA-I): every attack step refits RIDE.", "",
              white_table, "",
              "## Estimate trajectories (cf. Figs. 2e / 6)", "",
              "Mean L2 distance of the estimate to the clean and to the adversarial image along the fit "
              "(validation images).", "", "| Attack | K | to clean: start / min (step) / end | to adversarial: end | "
              "L2(x_adv, x) |", "|---|---|---|---|---|"]
    for r in sweep:
        tc = r["to_clean"]
        i_min = min(range(len(tc)), key=tc.__getitem__)
        lines.append(f"| {_attack_name(r['attack'])} | {r['iterations']} | {tc[0]:.3f} / {tc[i_min]:.3f} "
                     f"({r['trajectory_steps'][i_min]}) / {tc[-1]:.3f} | {r['to_adv'][-1]:.3f} | "
                     f"{r['clean_to_adv']:.3f} |")
    lines += ["", f"![trajectory]({fig_traj.name})", ""]
    if wall_seconds is not None:
        lines.append(f"This run: {wall_seconds:.0f} s, {records_added} new records.")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


__all__ = ["RideConfig", "choose_stop", "run_ride_experiment", "split_validation", "write_ride_report"]
