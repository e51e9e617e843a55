"""The xiao2020 experiment's configuration: f_b variants, budgets, recipes."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from advrepair import zoo  # noqa: E402
from advrepair.apps.pipeline import DEFAULT_HOME
from advrepair.defenses.adversarial_transformation import SURROGATES  # noqa: E402
from advrepair.errors import InputError  # noqa: E402
from advrepair.apps.experiments.setup import RunConfig  # noqa: E402
from advrepair.models.registry import available_architectures, register_architecture  # noqa: E402
from advrepair.training.adversarial_transformation import (Reparameterization)
from advrepair.training.recipe import ClassifierRecipe  # noqa: E402
from advrepair.validation import check_int_at_least, check_positive  # noqa: E402



PROTOCOL = "xiao2020"
DEPLOYED = "xiao2020"
IMITATOR_ARCH = "xiao-reparameterization"

if IMITATOR_ARCH not in available_architectures():
    # so that load_checkpoint can rebuild the imitator h from its card
    register_architecture(IMITATOR_ARCH, Reparameterization)


@dataclass(frozen=True)
class FbVariant:
    """One column of Table 1: an ``f_b`` and how it is trained (``recipe=None``: untrained).

    ``zoo_name``: the shipped zoo entry of this ``f_b``, loaded instead of training when the
    config's ``zoo`` is on (its recipe is the entry's)."""

    name: str
    recipe: ClassifierRecipe | None
    description: str = ""
    zoo_name: str | None = None

    @classmethod
    def from_zoo(cls, name: str, zoo_name: str) -> "FbVariant":
        e = zoo.entry(zoo_name)
        assert e.recipe is None or isinstance(e.recipe, ClassifierRecipe)
        return cls(name, e.recipe, e.description.split(": ", 1)[-1], zoo_name)


def _default_fb_variants() -> tuple[FbVariant, ...]:
    return tuple(FbVariant.from_zoo(name, f"fmnist-vgg8-{name}") for name in ("untrained", "standard-1ep",
                                                                                "standard", "pgd"))

#: the zoo's models of the deployed defense and its baselines (``XiaoConfig.zoo``)
ZOO_F_A = "fmnist-cnn-xiao"
ZOO_INDEPENDENT = "fmnist-cnn-standard-seed1"
ZOO_NO_DEFENSE = "fmnist-cnn-standard"
ZOO_PGD_AT = "fmnist-cnn-pgd"


@dataclass
class XiaoConfig(RunConfig):
    """Everything :func:`run_xiao_experiment` needs; the defaults fit ~15 minutes on 2 CPU cores.

    Paths: ``out`` receives results.json, arrays/, report.md and the PNGs; ``models_dir`` the
    cached checkpoints. ``data_root`` is the Fashion-MNIST folder (``None``: the default).

    Threat model: ``n_images`` class-balanced test images, L-inf ``eps``; PGD-type rows take
    ``attack_steps`` steps of ``attack_alpha`` (default ``2.5 eps / attack_steps``).

    Defense: ``g`` with radius ``delta``, ``g_steps`` LL-PGD steps of ``delta / 6`` on the
    ``fb_for_g`` column of ``fb_variants``; ``f_a`` is a SmallCNN (``fa_config``) trained on
    ``g(x)`` with ``fa_recipe``; its PGD-AT twin uses ``fa_adversarial_recipe``.

    Sweeps: ``bpda_steps`` (Fig. 5, N), ``surrogates`` at ``surrogate_temperature``,
    ``eot_draws`` (Fig. 7), ``deltas`` (Fig. 6, one ``f_a`` per Delta).

    Models: with ``zoo`` (the default) the deployed f_a (``fmnist-cnn-xiao``, trained on g of
    the zoo's adversarially trained f_b), the f_b columns of Table 1, the transfer source and
    the two baselines come from the zoo; ``fa_recipe`` then trains only the ablation models
    (one f_a per f_b for Table 1, per Delta for Fig. 6, and at ``small_n`` steps for the
    transfer of App. A.3), all with the same recipe so that they compare with each other.
    Without ``zoo`` every model is trained here (the tests' tiny runs).

    Extra rows (issue 17): ``eg_samples`` draws estimate E[g(x)], the start of PGD from the
    expected transformation; ``spsa_*`` set the finite-difference (SPSA) row (Adam step
    ``2.5 eps / spsa_steps``, PGD's rule);
    ``fd_images`` / ``fd_steps`` the finite-difference derivatives of Fig. 3.

    Example:
        >>> cfg = XiaoConfig(out=Path("/tmp/runs/xiao2020"), models_dir=Path("/tmp/runs/xiao2020-models"))
        >>> report = run_xiao_experiment(cfg)     # -> /tmp/runs/xiao2020/report.md
    """

    out: Path = Path("reports/xiao2020")
    models_dir: Path = DEFAULT_HOME / "xiao2020-models"
    batch_size: int = 100
    # -- threat model (and eps = 0.1 from RunConfig)
    n_images: int = 200
    attack_steps: int = 10
    attack_alpha: float | None = None
    # -- g and f_b
    delta: float = 0.2
    g_steps: int = 13
    fb_config: dict[str, Any] = field(default_factory=lambda: dict(width=8, stages=3, convs_per_stage=1,
                                                                   feature_dim=64))
    fb_variants: tuple[FbVariant, ...] = field(default_factory=_default_fb_variants)
    fb_for_g: str = "pgd"
    zoo: bool = True
    stat_images: int = 32
    stat_samples: int = 64
    # -- f_a and its baselines
    fa_config: dict[str, Any] = field(default_factory=lambda: dict(width=32, feature_dim=128))
    fa_recipe: ClassifierRecipe = field(default_factory=lambda: ClassifierRecipe(epochs=1, train_subset=20000))
    fa_adversarial_recipe: ClassifierRecipe = field(default_factory=lambda: ClassifierRecipe(
        epochs=1, train_subset=20000, adversarial=True, eps=0.1, alpha=0.025, steps=7))
    # -- the reparameterization attack's imitator h
    imitator_epochs: int = 2
    imitator_subset: int = 5000
    imitator_width: int = 16
    imitator_depth: int = 4
    imitator_lr: float = 1e-3
    # -- sweeps
    bpda_steps: tuple[int, ...] = (1, 4, 13)
    surrogates: tuple[str, ...] = ("tanh", "softsign")
    surrogate_temperature: float = 1.0
    sweep_random_start: bool = True
    eot_draws: tuple[int, ...] = (1, 2, 8)
    deltas: tuple[float, ...] = (0.1, 0.2)
    # -- black-box attacks
    square_queries: int = 100
    #: GenAttack (Alzantot et al. 2019, the paper's Table 2): queries per image and population
    genattack_queries: int = 500
    genattack_population: int = 6
    hsj_steps: int = 4
    hsj_max_queries: int = 200
    hsj_init_evals: int = 20
    hsj_max_evals: int = 40
    # -- issue 17's rows
    eg_samples: int = 16
    small_n: int = 2
    spsa_steps: int = 10
    spsa_samples: int = 64
    spsa_delta: float = 0.01
    fd_images: int = 4
    fd_steps: tuple[float, ...] = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)

    def __post_init__(self) -> None:
        self.check_run_fields()
        for name in ("eg_samples", "small_n", "spsa_steps", "spsa_samples", "fd_images"):
            check_int_at_least(getattr(self, name), name, 1)
        check_positive(self.spsa_delta, "spsa_delta")
        self.fd_steps = tuple(self.fd_steps)
        if not self.fd_steps or any(check_positive(h, "every entry of fd_steps") > 1 for h in self.fd_steps):
            raise InputError(f"fd_steps must list step sizes in (0, 1], got {self.fd_steps}")
        if not isinstance(self.zoo, bool):
            raise InputError(f"zoo must be True or False, got {self.zoo!r}")
        for name in ("attack_steps", "g_steps", "stat_images", "stat_samples", "imitator_epochs",
                     "imitator_subset", "imitator_width", "square_queries", "hsj_max_queries", "hsj_init_evals",
                     "hsj_max_evals"):
            check_int_at_least(getattr(self, name), name, 1)
        check_int_at_least(self.imitator_depth, "imitator_depth", 2)
        check_int_at_least(self.genattack_population, "genattack_population", 2)
        check_int_at_least(self.genattack_queries, "genattack_queries", self.genattack_population)
        check_int_at_least(self.hsj_steps, "hsj_steps", 0)
        check_positive(self.surrogate_temperature, "surrogate_temperature")
        check_positive(self.imitator_lr, "imitator_lr")
        if self.attack_alpha is not None:
            check_positive(self.attack_alpha, "attack_alpha")
        for name in ("delta",):
            value = check_positive(getattr(self, name), name)
            if value > 1:
                raise InputError(f"{name} must be in (0, 1] for images in [0, 1], got {value}")
        for name in ("bpda_steps", "eot_draws"):
            values = tuple(getattr(self, name))
            if not values:
                raise InputError(f"{name} must list at least one value")
            for v in values:
                check_int_at_least(v, f"every entry of {name}", 1)
            setattr(self, name, values)
        self.deltas = tuple(self.deltas)
        if not self.deltas:
            raise InputError("deltas must list at least one Delta")
        for d in self.deltas:
            if check_positive(d, "every entry of deltas") > 1:
                raise InputError(f"every entry of deltas must be in (0, 1], got {d}")
        self.surrogates = tuple(self.surrogates)
        bad = [s for s in self.surrogates if s not in SURROGATES]
        if not self.surrogates or bad:
            raise InputError(f"surrogates must be a non-empty subset of {SURROGATES}, got {self.surrogates}")
        names = [v.name for v in self.fb_variants]
        if len(set(names)) != len(names):
            raise InputError(f"fb_variants have repeated names: {names}")
        bad_names = [v for v in names if not re.fullmatch(r"[A-Za-z0-9_-]+", v)]
        if bad_names:
            raise InputError(f"fb_variants names become file names: use letters, digits, '-' and '_' only, "
                             f"got {bad_names}")
        if self.fb_for_g not in names:
            raise InputError(f"fb_for_g={self.fb_for_g!r} is not one of the fb_variants {names}")
        if self.zoo:
            missing = [v.name for v in self.fb_variants if v.zoo_name is None]
            if missing:
                raise InputError(f"with zoo=True every f_b variant names its zoo entry; these do not: {missing}")
            settings = zoo.entry(ZOO_F_A).transform
            if (self.delta, self.g_steps) != (settings["delta"], settings["steps"]):
                raise InputError(f"the zoo's f_a was trained on g with Delta {settings['delta']:g} and N "
                                 f"{settings['steps']}; pass those (or zoo=False to train every model here)")
            if next(v for v in self.fb_variants if v.name == self.fb_for_g).zoo_name != zoo.entry(ZOO_F_A).parent:
                raise InputError(f"the zoo's f_a was trained through {zoo.entry(ZOO_F_A).parent}: fb_for_g must "
                                 "name that variant")
        if self.fa_recipe.adversarial:
            raise InputError("fa_recipe must be a standard recipe: f_a is trained on g(x) (Eq. 1)")
        if not self.fa_adversarial_recipe.adversarial:
            raise InputError("fa_adversarial_recipe must have adversarial=True (the PGD-AT baseline)")

    @property
    def alpha(self) -> float:
        """PGD step size of every PGD-type row."""
        return self.attack_alpha if self.attack_alpha is not None else 2.5 * self.eps / self.attack_steps

# -- Table 1 statistics ----------------------------------------------------------------------
