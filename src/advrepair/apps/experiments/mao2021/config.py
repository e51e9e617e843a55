"""The mao2021 experiment's configuration: its models, rows, sweeps and budgets."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from advrepair.apps.experiments.setup import RunConfig
from advrepair.attacks import Attack
from advrepair.evaluation.harness import AttackSpec
from advrepair.errors import InputError
from advrepair.training import ClassifierRecipe, SSLRecipe
from advrepair.validation import check_int_at_least, check_positive

#: the paper's step rule for every iterative row: step = 2.5 eps / steps (Madry et al.)
STEP_FACTOR = 2.5


@dataclass(frozen=True)
class Row:
    """One attack row of a table: a registry attack with its budget, crafted on the classifier.

    ``steps=None`` for one-step attacks and AutoAttack (its own schedule)."""

    title: str
    attack: str
    eps: float
    steps: int | None = None
    norm: str = "Linf"
    options: tuple[tuple[str, Any], ...] = ()

    def params(self, seed: int) -> dict[str, Any]:
        """The registry attack's constructor arguments (the paper's step rule for iterative rows)."""
        params: dict[str, Any] = {**dict(self.options), "eps": self.eps, "seed": seed}
        if self.steps is not None:
            params["steps"] = self.steps
        if self.attack in ("pgd", "bim", "cw-pgd"):
            params["alpha"] = STEP_FACTOR * self.eps / (self.steps or 1)
        if self.attack in ("pgd", "cw-pgd", "autoattack", "cw"):
            params["norm"] = self.norm
        return params

    def spec(self, seed: int) -> AttackSpec:
        return AttackSpec("clean") if self.attack == "clean" else AttackSpec(self.attack, self.params(seed))

    def build(self, model: Any, seed: int) -> Attack | None:
        return self.spec(seed).build(model)

    def budget(self) -> str:
        if self.attack == "clean":
            return "-"
        steps = "" if self.steps is None else f", {self.steps} steps"
        return f"{self.norm} eps {self.eps:g}{steps}"


def linf_rows(eps: float, scale: float = 1.0) -> tuple[Row, ...]:
    """Table 1's rows (mao2021 Table 1 plus FGSM and PGD-20 of its CIFAR-10 text). ``scale``
    shortens every schedule for ``--quick`` (the titles then say the steps really run)."""
    def s(n: int) -> int:
        return max(1, round(n * scale))
    aa_version = "standard" if scale == 1.0 else "rand"
    return (Row("clean", "clean", eps), Row("FGSM", "fgsm", eps),
            Row(f"PGD-{s(20)}", "pgd", eps, s(20)), Row(f"PGD-{s(50)}", "pgd", eps, s(50)),
            Row(f"PGD-{s(200)}", "pgd", eps, s(200)), Row(f"BIM-{s(200)}", "bim", eps, s(200)),
            Row(f"C&W-{s(200)} (margin loss, L-inf)", "cw-pgd", eps, s(200)),
            Row(f"AutoAttack ({aa_version})", "autoattack", eps, None, options=(("version", aa_version),)))


def l2_rows(eps: float, scale: float = 1.0) -> tuple[Row, ...]:
    """Table 5's rows: PGD-200 and C&W-200 under an L2 budget (C&W clipped to the ball)."""
    def s(n: int) -> int:
        return max(1, round(n * scale))
    return (Row("clean", "clean", eps, norm="L2"), Row(f"PGD-{s(20)} (L2)", "pgd", eps, s(20), norm="L2"),
            Row(f"PGD-{s(200)} (L2)", "pgd", eps, s(200), norm="L2"),
            Row(f"C&W-{s(200)} (L2, clipped to eps)", "cw", eps, s(200), norm="L2",
                options=(("c", 1.0), ("lr", 0.01))))


@dataclass
class Mao2021Config(RunConfig):
    """Everything ``advrepair experiment mao2021`` runs; the defaults are the full experiment.

    Models: ``classifiers`` are zoo names, model directories or ``module:factory``; ``heads``
    the contrastive head of each (a zoo head, or a directory with ``ssl-contrastive``);
    ``None`` pairs every zoo classifier with ``<name>-contrastive`` and a directory with itself.

    Budgets: Table 1 and 5 use ``n_images`` class-balanced test images (1,000: s.e. <= 1.6
    points); the sweeps (Figs. 5-8, the lambda sweep, lawhon's attackers, the explanation
    grid) a balanced ``sweep_images`` of those; the audit ``audit_images`` of those.
    """

    out: Path = Path("reports/mao2021")
    n_images: int = 1000
    sweep_images: int = 500
    classifiers: tuple[str, ...] = ("fmnist-cnn-standard", "fmnist-cnn-pgd")
    heads: tuple[str, ...] | None = None
    #: the repair: eps_v = eps_v_factor * eps (paper: 2), K steps (paper: 40)
    eps_v_factor: float = 2.0
    reverse_steps: int = 40
    #: Table 5: the L2 budget (see the report for why it is comparable) and the L2 repair at 2x it
    l2_eps: float = 1.5
    #: Fig. 6: attack budgets; Fig. 7: repair budgets; Fig. 5: the K whose time is measured
    eps_sweep: tuple[float, ...] = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2)
    eps_v_sweep: tuple[float, ...] = (0.025, 0.05, 0.1, 0.2, 0.3)
    timed_steps: tuple[int, ...] = (1, 2, 5, 10, 20, 40)
    timing_images: int = 64
    #: Fig. 8: images whose penultimate features are projected (a balanced part of the sweep images)
    pca_images: int = 300
    #: Fig. 4: the defense-aware attack (Eq. 8) at these lambda_s, with ``aware_steps`` steps;
    #: and the long version (the supplement's 500 steps) on ``long_aware_images`` images
    lambdas: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0)
    aware_steps: int = 50
    long_aware_steps: int = 500
    long_aware_lambdas: tuple[float, ...] = (0.0, 1.0, 10.0)
    long_aware_images: int = 100
    #: lawhon: the multi-task repairs on these classifiers (rotation and inpainting heads from the zoo)
    lawhon: bool = True
    lawhon_lambdas: tuple[float, ...] = (1.0, 4.0)
    #: the audit of the repair (and of the noise control) on the robust classifier
    audit_images: int = 200
    audit_preset: str = "quick"
    #: question (b) at the standard preset, with the cascade (the same worst case; the cost of
    #: an image stops when it breaks): on this many of the audit's images (0: not run)
    standard_audit_images: int = 0
    #: the explanation grid: {zoo, 2-epoch} base x {zoo, 1-epoch} head x eps_v, on the last classifier
    explain: bool = True
    explain_eps_v: tuple[float, ...] = (0.05, 0.2)
    #: the short recipes of the grid (``None``: the demo's old 2-epoch classifier, 1-epoch head)
    explain_recipe: ClassifierRecipe | None = None
    explain_ssl: SSLRecipe | None = None
    #: shortens every attack schedule (``--quick``); 1.0 is the paper's budgets
    budget_scale: float = 1.0
    #: the figure sweeps, lawhon and the explanation grid (False: Tables 1 and 5 and the audits only)
    sweeps: bool = True
    batch_size: int = 250
    #: also write the report as this Markdown file, its figures in a folder of the same stem
    #: (``docs/results/mao2021-fmnist.md``: the records stay in ``out``)
    publish: Path | None = None

    def __post_init__(self) -> None:
        self.check_run_fields()
        self.publish = None if self.publish is None else Path(self.publish)
        self.sweep_images = min(check_int_at_least(self.sweep_images, "sweep_images", 1), self.n_images)
        self.pca_images = min(check_int_at_least(self.pca_images, "pca_images", 2), self.sweep_images)
        self.long_aware_images = min(check_int_at_least(self.long_aware_images, "long_aware_images", 0),
                                     self.sweep_images)
        self.audit_images = min(check_int_at_least(self.audit_images, "audit_images", 0), self.n_images)
        self.standard_audit_images = min(check_int_at_least(self.standard_audit_images, "standard_audit_images", 0),
                                         self.n_images)
        self.timing_images = check_int_at_least(self.timing_images, "timing_images", 1)
        self.reverse_steps = check_int_at_least(self.reverse_steps, "reverse_steps", 1)
        self.aware_steps = check_int_at_least(self.aware_steps, "aware_steps", 1)
        self.long_aware_steps = check_int_at_least(self.long_aware_steps, "long_aware_steps", 1)
        check_positive(self.eps_v_factor, "eps_v_factor")
        check_positive(self.l2_eps, "l2_eps")
        check_positive(self.budget_scale, "budget_scale")
        if not isinstance(self.classifiers, (tuple, list)) or not self.classifiers:
            raise InputError("classifiers must name at least one classifier")
        self.classifiers = tuple(self.classifiers)
        if self.heads is not None:
            self.heads = tuple(self.heads)
            if len(self.heads) != len(self.classifiers):
                raise InputError(f"heads must name one contrastive head per classifier: {len(self.classifiers)} "
                                 f"classifiers, {len(self.heads)} heads")
        for name, values in (("eps_sweep", self.eps_sweep), ("eps_v_sweep", self.eps_v_sweep),
                             ("explain_eps_v", self.explain_eps_v)):
            if not values:
                raise InputError(f"{name} must hold at least one budget")
            for v in values:
                check_positive(v, name)
        for v in (*self.lambdas, *self.long_aware_lambdas, *self.lawhon_lambdas):
            check_positive(v, "lambda_s", allow_zero=True)
        for k in self.timed_steps:
            check_int_at_least(k, "timed_steps", 1)
        if self.audit_preset not in ("quick", "standard", "thorough"):
            raise InputError(f"audit_preset must be quick, standard or thorough, got {self.audit_preset!r}")

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["publish"] = None if self.publish is None else str(self.publish)
        return d

    def command_line(self) -> str:
        """The ``advrepair experiment mao2021`` invocation that runs this configuration: every flag
        whose value differs from its default (the machine's data root and device left out)."""
        quick = self.budget_scale != 1.0
        default = Mao2021Config.quick() if quick else Mao2021Config()
        flags = (["--quick"] if quick else []) + [f"--out {self.out}"]
        if self.publish is not None:
            flags.append(f"--publish {self.publish}")
        for name in ("dataset", "classifiers", "heads", "n_images", "sweep_images", "audit_images",
                     "standard_audit_images", "eps", "seed"):
            value = getattr(self, name)
            if value is None or value == getattr(default, name):
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, float):
                value = f"{value:g}"
            flags.append(f"--{name.replace('_', '-')} {value}")
        flags += [f"--no-{name}" for name in ("sweeps", "lawhon", "explain") if not getattr(self, name)]
        return "advrepair experiment mao2021 " + " ".join(flags)

    @property
    def eps_v(self) -> float:
        return self.eps_v_factor * self.eps

    def scaled(self, steps: int) -> int:
        return max(1, round(steps * self.budget_scale))

    @classmethod
    def quick(cls, **overrides: Any) -> "Mao2021Config":
        """The same code on a few images with short schedules: for tests and a first look."""
        small: dict[str, Any] = dict(
            n_images=20, sweep_images=10, pca_images=10, timing_images=4, long_aware_images=4, audit_images=4,
            reverse_steps=4, timed_steps=(1, 2, 4), eps_sweep=(0.05, 0.1), eps_v_sweep=(0.05, 0.2),
            lambdas=(0.0, 1.0), aware_steps=3, long_aware_steps=6, long_aware_lambdas=(0.0, 1.0),
            lawhon_lambdas=(1.0,), explain_eps_v=(0.2,), budget_scale=0.05, batch_size=10,
            explain_recipe=ClassifierRecipe(epochs=1, adversarial=True, eps=0.1, alpha=0.04, steps=1, train_subset=200),
            explain_ssl=SSLRecipe(epochs=1, train_subset=200))
        return cls(**{**small, **overrides})

    def with_out(self, out: Path) -> "Mao2021Config":
        return replace(self, out=out)


def default_heads(classifiers: tuple[str, ...], zoo_names: set[str]) -> tuple[str, ...]:
    """A zoo classifier's head is ``<name>-contrastive``; a model directory holds its own."""
    return tuple(f"{c}-contrastive" if c in zoo_names else c for c in classifiers)


__all__ = ["Mao2021Config", "Row", "STEP_FACTOR", "default_heads", "l2_rows", "linf_rows"]
