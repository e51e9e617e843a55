"""The NRP experiment's configuration, names and the attacks of its tables."""
from __future__ import annotations

import hashlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from advrepair.attacks.ssp import DISTANCES
from advrepair.errors import InputError
from advrepair.evaluation.adaptive import AdaptiveConfig
from advrepair import zoo
from advrepair.apps.experiments.setup import RunConfig  # noqa: E402
from advrepair.apps.pipeline import QUICK_STANDARD
from advrepair.training import ClassifierRecipe
from advrepair.training.purifier import PurifierRecipe
from advrepair.validation import check_int_at_least, check_positive

import matplotlib

matplotlib.use("Agg")

#: model folders under ``models_dir``



TARGET = "fmnist-cnn-standard"
SOURCE_VGG = "small-vgg"
SOURCE_CNN = "small-cnn-seed1"
ENSEMBLE = "ensemble"
PURIFIER_DIR = "nrp-purifier"
PURIFIER_STEM = "purifier"

#: defense labels in table order, with their row titles
DEFENSE_TITLES: dict[str, str] = {
    "none": "No defense", "jpeg": "JPEG (q=75)", "tv": "TV minimization", "median": "Median 3x3",
    "bit-depth": "Bit depth 4", "resize-pad": "Random resize-pad", "nrp": "NRP", "nrp-dynamic": "NRP dynamic",
}
#: transfer attacks by key: (table title, registry name); parameters come from :func:`attack_params`
ATTACK_KINDS: dict[str, tuple[str, str]] = {
    "fgsm": ("FGSM", "fgsm"), "fgsm-ti": ("FGSM-TI", "tifgsm"), "pgd": ("PGD", "pgd"),
    "mifgsm": ("MI-FGSM", "mifgsm"), "mifgsm-ti": ("MI-FGSM-TI", "tifgsm"), "dim": ("DIM", "difgsm"),
    "dim-ti": ("DIM-TI", "tifgsm"), "ssp": ("SSP", "ssp"), "ifgsm": ("I-FGSM", "bim"), "rfgsm": ("R-FGSM", "rfgsm"),
}
#: the zoo's models of the experiment (``NRPConfig.zoo``): target, then the sources by label
ZOO_MODELS: dict[str, str] = {TARGET: "fmnist-cnn-standard", SOURCE_VGG: "fmnist-vgg16-standard",
                              SOURCE_CNN: "fmnist-cnn-standard-seed1"}
#: the zoo's purifier (``NRPConfig.zoo``), trained with the settings below on the whole training split
ZOO_PURIFIER = "fmnist-nrp-purifier"
SOURCE_TITLES = {SOURCE_VGG: "SmallVGG", SOURCE_CNN: "SmallCNN (seed 1)", ENSEMBLE: "Ensemble (VGG + CNN-seed1)"}


def _log(msg: str) -> None:
    tqdm.write(msg)


@dataclass
class NRPConfig(RunConfig):
    """Everything the NRP experiment needs; defaults are the issue's run (see the module docstring).

    Args:
        out: report folder (results.json, arrays/, report.md, tables, PNGs).
        models_dir: where the model folders live or are trained (default the demo's, so
            its ``fmnist-cnn-standard`` is the target without retraining).
        data_root: Fashion-MNIST folder (``None``: the usual search).
        n_images: balanced test images for Tables 1 and 5 (500: s.e. <= 2.24 points).
        seed: subset, purifier, defenses' and attacks' seeds; the target is trained with it.
        eps: L-inf budget of every attack (and of SSP while training P).
        attack_steps: iterations of PGD, MI-FGSM, DIM, DIM-TI and SSP.
        ti_kernel: side of DIM-TI's Gaussian smoothing kernel (odd).
        table1_attacks / table5_attacks: attack keys of :data:`ATTACK_KINDS`.
        ensemble: add the logit-averaging ensemble of both sources as a third Table 1 source.
        zoo: the target, both sources and the purifier from the zoo (the default;
            :data:`ZOO_MODELS`, :data:`ZOO_PURIFIER`), so ``target_recipe``, ``source_recipe``,
            ``source_seed``, ``vgg_config`` and ``cnn_config`` apply only with ``zoo=False`` (the
            tests' tiny runs), and ``purifier_recipe`` only to the purifiers the ablations train
            (Fig. 5's, the attacker's own in Table 3). Settings the zoo's purifier was not trained
            with (layer, SSP budget, distance, configs) are refused.
        target_recipe: the target's recipe (default: the demo's standard CNN).
        source_recipe: both sources' recipe; source_seed: the second SmallCNN's seed.
        vgg_config / cnn_config: architecture options of the sources (``small-vgg`` / ``small-cnn``).
        feature_source, feature_layer: P's feature extractor F (a source label) and its layer.
        ssp_layers: layer SSP attacks per source in Table 5.
        ssp_distance: d of SSP (training and Table 5).
        purifier_config / critic_config: ``Purifier`` / ``Critic`` options (channels and sizes are set here).
        purifier_recipe: Algorithm 2's loop of the purifiers trained here; its ``layer``, ``seed``,
            ``ssp_eps``, ``ssp_steps`` and ``distance`` are overwritten from the fields above.
        defenses: defense labels of :data:`DEFENSE_TITLES` to evaluate ("none" is always there).
        jpeg_quality, tv_weight, median_size, bits: baseline defenses' settings.
        adaptive: the adaptive protocol's budgets, or ``None`` to skip it; run on
            ``adaptive_images`` balanced images of the subset for each of ``adaptive_defenses``.
        batch_size: images per attack/defense batch. threads: ``torch.set_num_threads`` if set.
        progress: tqdm bars and log lines.

    Raises:
        InputError: a field out of range or an unknown attack, defense, source or layer name.

    Example:
        >>> cfg = NRPConfig(out=Path("/tmp/runs/nrp"), n_images=200, ensemble=False)
    """

    out: Path = Path("reports/nrp")
    attack_steps: int = 10
    ti_kernel: int = 5
    table1_attacks: tuple[str, ...] = ("fgsm", "mifgsm", "dim", "dim-ti")
    table5_attacks: tuple[str, ...] = ("fgsm", "rfgsm", "ifgsm", "pgd", "mifgsm", "dim", "ssp")
    ensemble: bool = True
    target_recipe: ClassifierRecipe = QUICK_STANDARD
    source_recipe: ClassifierRecipe = field(default_factory=lambda: ClassifierRecipe(epochs=1))
    source_seed: int = 1
    vgg_config: dict[str, Any] = field(default_factory=lambda: {"width": 16})
    cnn_config: dict[str, Any] = field(default_factory=dict)
    feature_source: str = SOURCE_VGG
    feature_layer: str = "body.8"
    ssp_layers: dict[str, str] = field(default_factory=lambda: {SOURCE_VGG: "body.8", SOURCE_CNN: "body.4"})
    ssp_distance: str = "mae"
    purifier_config: dict[str, Any] = field(default_factory=lambda: {"width": 16})
    critic_config: dict[str, Any] = field(default_factory=dict)
    purifier_recipe: PurifierRecipe = field(default_factory=lambda: PurifierRecipe(
        epochs=1, batch_size=32, lr=1e-3, critic_lr=1e-3, train_subset=6000))
    defenses: tuple[str, ...] = tuple(DEFENSE_TITLES)
    jpeg_quality: int = 75
    tv_weight: float = 0.1
    median_size: int = 3
    bits: int = 4
    adaptive: AdaptiveConfig | None = field(default_factory=lambda: AdaptiveConfig(
        eps=0.1, steps=10, alpha=0.025, eot_draws=2, unroll_steps=5, lambdas=(), square_queries=100))
    adaptive_images: int = 100
    adaptive_defenses: tuple[str, ...] = ("nrp", "nrp-dynamic")
    zoo: bool = True
    #: issue 17's parts of the paper: Figs. 3-5 and Table 3 (see ``nrp.ablations``)
    paper_ablations: bool = True
    fig3_steps: tuple[int, ...] = (1, 2, 5, 10, 20)
    fig4_layers: tuple[str, ...] = ("body.1", "body.3", "body.6", "body.8", "body.11", "body.13")

    def __post_init__(self) -> None:
        self.check_run_fields()
        self.attack_steps = check_int_at_least(self.attack_steps, "attack_steps", 1)
        self.ti_kernel = check_int_at_least(self.ti_kernel, "ti_kernel", 1)
        if self.ti_kernel % 2 == 0:
            raise InputError(f"ti_kernel must be odd (the kernel needs a center pixel), got {self.ti_kernel}")
        for name in ("table1_attacks", "table5_attacks"):
            keys = tuple(getattr(self, name))
            if isinstance(getattr(self, name), str) or not keys:
                raise InputError(f"{name} must be a non-empty sequence of attack keys from {sorted(ATTACK_KINDS)}")
            unknown = [k for k in keys if k not in ATTACK_KINDS]
            if unknown or len(set(keys)) != len(keys):
                raise InputError(f"{name}: unknown or repeated attacks {unknown or keys}; "
                                 f"known: {sorted(ATTACK_KINDS)}")
            setattr(self, name, keys)
        if "ssp" in self.table1_attacks and self.ensemble:
            raise InputError("SSP needs one network's layer; it cannot be crafted on the logit ensemble "
                             "(drop 'ssp' from table1_attacks or set ensemble=False)")
        self.source_seed = check_int_at_least(self.source_seed, "source_seed", 0)
        if self.source_seed == self.seed:
            raise InputError(f"source_seed must differ from seed ({self.seed}): the second source is the "
                             "target's architecture and recipe with another seed")
        if self.feature_source not in (SOURCE_VGG, SOURCE_CNN):
            raise InputError(f"feature_source must be {SOURCE_VGG!r} or {SOURCE_CNN!r} (never the target), "
                             f"got {self.feature_source!r}")
        if not isinstance(self.feature_layer, str) or not self.feature_layer:
            raise InputError(f"feature_layer must name a layer of {self.feature_source}, got {self.feature_layer!r}")
        missing = [s for s in (SOURCE_VGG, SOURCE_CNN) if s not in self.ssp_layers]
        if "ssp" in self.table5_attacks and missing:
            raise InputError(f"ssp_layers lacks the sources {missing}")
        if self.ssp_distance not in DISTANCES:
            raise InputError(f"ssp_distance must be one of {sorted(DISTANCES)}, got {self.ssp_distance!r}")
        if not isinstance(self.purifier_recipe, PurifierRecipe):
            raise InputError(f"purifier_recipe must be a PurifierRecipe, got {type(self.purifier_recipe).__name__}")
        self.purifier_recipe = dataclasses.replace(
            self.purifier_recipe, layer=self.feature_layer, seed=self.seed, ssp_eps=self.eps,
            ssp_alpha=self.eps / 4, ssp_steps=self.attack_steps, distance=self.ssp_distance)
        if self.zoo:
            self._check_zoo_purifier()
        defenses = tuple(self.defenses)
        unknown = [d for d in defenses if d not in DEFENSE_TITLES]
        if unknown:
            raise InputError(f"unknown defenses {unknown}; known: {list(DEFENSE_TITLES)}")
        self.defenses = ("none",) + tuple(d for d in DEFENSE_TITLES if d in defenses and d != "none")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise InputError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        self.tv_weight = check_positive(self.tv_weight, "tv_weight")
        self.median_size = check_int_at_least(self.median_size, "median_size", 1)
        self.bits = check_int_at_least(self.bits, "bits", 1)
        self.adaptive_images = check_int_at_least(self.adaptive_images, "adaptive_images", 1)
        bad = [d for d in self.adaptive_defenses if d not in self.defenses or d == "none"]
        if self.adaptive is not None and bad:
            raise InputError(f"adaptive_defenses {bad} are not among the evaluated defenses {self.defenses[1:]}")

    def _check_zoo_purifier(self) -> None:
        e = zoo.entry(ZOO_PURIFIER)
        assert isinstance(e.recipe, PurifierRecipe)
        ours = self.purifier_recipe
        pairs = {"feature network": (ZOO_MODELS.get(self.feature_source), e.parent),
                 "feature_layer": (self.feature_layer, e.recipe.layer), "eps": (ours.ssp_eps, e.recipe.ssp_eps),
                 "SSP step": (ours.ssp_alpha, e.recipe.ssp_alpha), "attack_steps": (ours.ssp_steps, e.recipe.ssp_steps),
                 "ssp_distance": (ours.distance, e.recipe.distance),
                 "purifier_config": (dict(self.purifier_config), e.config), "critic_config": (dict(self.critic_config), {})}
        differ = [f"{k} {mine!r} (the zoo's: {theirs!r})" for k, (mine, theirs) in pairs.items() if mine != theirs]
        if differ and any(d.startswith("nrp") for d in self.defenses):
            raise InputError(f"the zoo's purifier {ZOO_PURIFIER} was trained with other settings: {'; '.join(differ)}. "
                             "Keep them, or set zoo=False (--no-zoo) to train every model with yours")

    def sources(self) -> tuple[str, ...]:
        """Table 1's transfer sources, in order."""
        return (SOURCE_VGG, SOURCE_CNN) + ((ENSEMBLE,) if self.ensemble else ())


def attack_params(key: str, eps: float, steps: int, ti_kernel: int = 5, ssp_layer: str | None = None,
                  ssp_distance: str = "mae") -> tuple[str, dict[str, Any]]:
    """The registry name and parameters of one transfer attack (see the module docstring).

    Example:
        >>> attack_params("dim", 0.1, 10)
        ('difgsm', {'eps': 0.1, 'alpha': 0.01, 'steps': 10, 'decay': 1.0, 'resize_rate': 0.9, 'diversity_prob': 0.5})
    """
    if key not in ATTACK_KINDS:
        raise InputError(f"unknown attack {key!r}; known: {sorted(ATTACK_KINDS)}")
    name = ATTACK_KINDS[key][1]
    iterative = {"eps": eps, "alpha": eps / steps, "steps": steps}
    diversity = {"resize_rate": 0.9, "diversity_prob": 0.5}
    kernel = {"kernel_name": "gaussian", "len_kernel": ti_kernel, "nsig": 3.0}
    by_kind: dict[str, dict[str, Any]] = {
        "fgsm": {"eps": eps},
        "fgsm-ti": {"eps": eps, "alpha": eps, "steps": 1, "decay": 0.0, "diversity_prob": 0.0, **kernel},
        "pgd": {"eps": eps, "alpha": eps / 4, "steps": steps},
        "mifgsm": {**iterative, "decay": 1.0},
        "mifgsm-ti": {**iterative, "decay": 1.0, "diversity_prob": 0.0, **kernel},
        "dim": {**iterative, "decay": 1.0, **diversity},
        "dim-ti": {**iterative, "decay": 1.0, **diversity, **kernel},
        "ssp": {"eps": eps, "alpha": eps / 4, "steps": steps, "layer": ssp_layer, "distance": ssp_distance},
        "ifgsm": iterative,
        "rfgsm": {"eps": eps, "alpha": eps / 2},
    }
    params = by_kind[key]
    if key == "ssp" and ssp_layer is None:
        raise InputError("SSP needs the source network's layer (ssp_layer)")
    return name, params




def _source_name_sha(*shas: str) -> str:
    return hashlib.sha256("+".join(shas).encode()).hexdigest()
