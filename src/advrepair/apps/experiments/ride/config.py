"""The RIDE experiment's configuration and its validation split."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from advrepair.data import ImageDataset  # noqa: E402
from advrepair.data.subsets import balanced_subset  # noqa: E402
from advrepair.defenses.median import MedianFilter  # noqa: E402
from advrepair.defenses.ride import MODES, RIDE  # noqa: E402
from advrepair.defenses.total_variation import SOLVERS, TotalVariation  # noqa: E402
from advrepair.errors import InputError  # noqa: E402
from advrepair.evaluation.harness import AttackSpec  # noqa: E402
from advrepair.apps.experiments.setup import RunConfig  # noqa: E402
from advrepair.apps.pipeline import QUICK_STANDARD  # noqa: E402
from advrepair.training.recipe import ClassifierRecipe  # noqa: E402
from advrepair.validation import check_int_at_least, check_positive  # noqa: E402



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
    fits ``sweep_checkpoints`` checkpoints for each K in ``sweep_iterations``. With
    ``paper_budget_images`` > 0, that many gray-box images are also defended by RIDE at the
    paper's own budget (``paper_budget``: K, T and learning rate; 2000 x 5 steps at 1e-4), paired
    with the chosen stop on the same images; with ``paper_budget_mode_images`` > 0, that many
    validation images get Fig. 5a's comparison of the modes at that budget.

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
    paper_budget_images: int = 0
    paper_budget_mode_images: int = 0
    paper_budget: tuple[int, int, float] = (2000, 5, 1e-4)
    # -- baselines
    median_kernel: int = 3
    tv_weight: float = 0.1
    # -- the paper's ablations: baselines swept (Tables 4-6), RIDE's n, alpha and sigma (Figs. 5b-d)
    median_kernels: tuple[int, ...] = (3, 5, 7, 9, 11)
    tv_weights: tuple[float, ...] = (0.03, 0.1, 0.3)
    sweep_batch: tuple[int, ...] = (1, 4, 8)
    sweep_alpha: tuple[float, ...] = (0.5, 0.9, 0.99)
    sweep_sigma: tuple[float, ...] = (0.25, 0.5, 1.0)
    # -- Fig. 5a (DIP, I-DIP, DAE and RIDE on the same images), Figs. 2d-e (class scores and
    # distances over one image's fit) and Fig. 7 (BPDA's images: distances and accuracies)
    compare_modes: tuple[str, ...] = ("dip", "idip", "dae", "ride")
    trace_modes: tuple[str, ...] = ("dip", "dae")
    trace_checkpoints: int = 20
    bpda_analysis_images: int = 32

    def __post_init__(self) -> None:
        self.check_run_fields()
        for name in ("attack_steps", "whitebox_images", "val_images", "sweep_checkpoints", "trace_checkpoints",
                     "bpda_analysis_images"):
            check_int_at_least(getattr(self, name), name, 1)
        check_int_at_least(self.paper_budget_images, "paper_budget_images", 0)
        check_int_at_least(self.paper_budget_mode_images, "paper_budget_mode_images", 0)
        if self.paper_budget_mode_images > self.val_images:
            raise InputError(f"paper_budget_mode_images ({self.paper_budget_mode_images}) cannot exceed val_images "
                             f"({self.val_images}): they are a subset of the validation images")
        if self.paper_budget_images > self.n_images:
            raise InputError(f"paper_budget_images ({self.paper_budget_images}) cannot exceed n_images "
                             f"({self.n_images}): they are a subset of the gray-box images")
        self.paper_budget = tuple(self.paper_budget)  # type: ignore[assignment]  # JSON gives a list
        if len(self.paper_budget) != 3:
            raise InputError(f"paper_budget must be (K, T, learning rate), got {self.paper_budget}")
        check_int_at_least(self.paper_budget[0], "paper_budget's K", 1)
        check_int_at_least(self.paper_budget[1], "paper_budget's T", 1)
        check_positive(self.paper_budget[2], "paper_budget's learning rate")
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
        for name in ("compare_modes", "trace_modes"):
            modes = tuple(getattr(self, name))
            if not modes or any(m not in MODES for m in modes):
                raise InputError(f"{name} must list modes of {MODES}, got {modes}")
            setattr(self, name, modes)
        for name in ("median_kernels", "tv_weights", "sweep_batch", "sweep_alpha", "sweep_sigma"):
            setattr(self, name, tuple(getattr(self, name)))
        for k in self.median_kernels:
            MedianFilter(k)
        for w in self.tv_weights:
            check_positive(w, "every entry of tv_weights")
        for n in self.sweep_batch:
            check_int_at_least(n, "every entry of sweep_batch", 1)
        for a in self.sweep_alpha:
            if not 0 <= a <= 1:
                raise InputError(f"every entry of sweep_alpha must be in [0, 1], got {a}")
        for sigma in self.sweep_sigma:
            check_positive(sigma, "every entry of sweep_sigma")

    @property
    def alpha(self) -> float:
        """PGD step size."""
        return self.attack_alpha if self.attack_alpha is not None else 2.5 * self.eps / self.attack_steps

    def ride(self, iterations: int, checkpoints: int, **overrides: Any) -> RIDE:
        """The RIDE defense of this config with ``iterations`` (K) and ``checkpoints`` (T);
        ``overrides`` change ``batch``, ``alpha`` or ``sigma`` (the Fig. 5b-d sweeps), ``mode``
        (Fig. 5a) or ``lr`` (the paper's budget)."""
        options: dict[str, Any] = {"mode": self.ride_mode, "sigma": self.ride_sigma, "alpha": self.ride_alpha,
                                   "batch": 1, "lr": self.ride_lr, **overrides}
        return RIDE(iterations=iterations, checkpoints=checkpoints, seed=self.seed, progress=self.progress, **options)

    def paper_ride(self) -> RIDE:
        """RIDE at ``paper_budget`` (K, T, learning rate)."""
        iterations, checkpoints, lr = self.paper_budget
        return self.ride(int(iterations), int(checkpoints), lr=float(lr))

    def param_sweeps(self) -> list[tuple[str, tuple[float, ...]]]:
        """(RIDE argument, values) of Figs. 5b-d: n (noisy copies per step), alpha, sigma."""
        return [("batch", tuple(float(n) for n in self.sweep_batch)), ("alpha", self.sweep_alpha),
                ("sigma", self.sweep_sigma)]

    def baselines(self) -> dict[str, Any]:
        """Tables 4-6: median filters of every kernel, TV at every weight with both solvers."""
        out: dict[str, Any] = {f"median-{k}x{k}": MedianFilter(k) for k in self.median_kernels}
        for solver in SOLVERS:
            out.update({f"tv-{solver}-{w:g}": TotalVariation(weight=w, solver=solver) for w in self.tv_weights})
        return out

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
