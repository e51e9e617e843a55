"""The xiao2020 experiment on Fashion-MNIST: Table 1, the training cost, Table 3 and Figs. 5-7.

xiao2020 ("One Man's Trash is Another Man's Treasure: Resisting Adversarial Examples by
Adversarial Examples", CVPR 2020) defends ``f_a(g(x))`` where ``g`` replaces the input by an
LL-PGD adversarial example of a fixed external model ``f_b`` (Eqs. 2-3; the building blocks are
:mod:`advrepair.defenses.adversarial_transformation` and
:mod:`advrepair.training.adversarial_transformation`). :func:`run_xiao_experiment` reproduces
the shape of the paper's evaluation in one resumable run:

- **Table 1 / Sec. 3.4**: the selection statistic ``||x - E[g(x)]||`` (L-inf as in the paper,
  and the mean absolute gap) for untrained, partly trained, trained and adversarially trained
  ``f_b``, with the Monte-Carlo standard error of the estimate.
- **Sec. 3.4 "Computational performance"**: seconds and forward/backward passes of training
  ``f_a`` on ``g(x)`` (Eq. 1) against PGD adversarial training of the same ``f_a``, measured
  in the same run (:func:`compare_training_cost`).
- **Sec. 4 / Table 3**: ``f_a o g`` under every attack of the paper, all on the same images and
  budget: clean; BPDA with the tanh and soft-sign surrogates of ``sgn`` and Eq. 5 for the
  projection (Fig. 5: swept over N, the LL-PGD steps the defender runs and the attacker
  unrolls); BPDA with the identity plus EOT, swept over the sample count (Fig. 7);
  white-box transfer from ``f_a`` alone (WT, Sec. 4.2); the reparameterization attack
  (an imitator ``h`` of ``g`` fitted by MSE, then PGD through ``f_a(h(x))``, Sec. 4.1);
  transfer from an independently trained model (Table 2); Square (score-based) and
  HopSkipJump (decision-based) on ``f_a o g``; and the per-image worst case over all of
  them (Table 3's ``A_rob``), next to an undefended and a PGD-adversarially-trained baseline.
- **Fig. 6**: clean, BPDA-I (+EOT) and WT accuracy against Delta, one ``f_a`` trained per Delta.

Every model is cached under ``cfg.models_dir`` (safetensors + a JSON card recording what it
was trained on and how, reused when the card matches), every accuracy is one record of a
:class:`advrepair.evaluation.store.ResultsStore` in ``cfg.out`` (attack, budget, steps, step
size and image count in the record; skipped on a rerun), and :func:`write_xiao_report` writes
``report.md`` and the figures from the store alone.

Deviations from the paper, on purpose (sizes are for a 15-minute CPU run):
- Dataset and networks: Fashion-MNIST instead of CIFAR-10; ``f_a`` is our SmallCNN (paper:
  ResNet-18) and ``f_b`` a small VGG-style net (``width=8``, three stages of one 3x3
  convolution; paper: Appendix A.1, which we do not have), about 8x fewer multiply-adds per
  image than ``f_a``, as the paper asks of ``f_b`` (on a CPU such small networks are
  overhead-bound, so the measured seconds gain less than the pass counts suggest). Training is
  1 epoch with Adam on a 20000-image subset (paper: 80 epochs of SGD).
- Budget: eps = 0.1 (L-inf, the usual Fashion-MNIST budget; paper 0.031 on CIFAR-10); PGD
  takes ``attack_steps`` (10) steps of ``2.5 eps / steps`` (paper: 50 steps of 0.002). Square
  and HopSkipJump get few queries (Square 100; HopSkipJump 4 iterations, at most 200 queries;
  paper: foolbox defaults), so their rows are weak black-box baselines, not strong attacks.
- Table 1: ``f_b`` columns are untrained, standard training on a small subset ("partly
  trained"), 1 epoch standard and 1 epoch PGD-3 adversarial (paper: 1-20 epochs and an
  adversarially trained model). We report the statistic for every column but train ``f_a``
  only on the ``fb_for_g`` column (the paper's choice, adversarially trained), so the
  table's first two rows (accuracy of a defense per ``f_b``) are not reproduced. The
  expectation uses ``stat_samples`` (64) draws, not 5000; the L-inf estimate is biased
  upward by the mean's noise (we print its standard error), and the mean-abs gap is added.
- Fig. 5: the paper disables ``g``'s random start for this figure; by default we keep the
  deployed defense's seeded random start (``sweep_random_start=True``), which the surrogate
  replays exactly, so that the N = ``g_steps`` point is a row of the deployed defense's
  worst case; ``sweep_random_start=False`` gives the paper's setting. ``f_a`` is the one
  trained with ``g_steps`` steps; only the deployed ``g`` changes with N (the paper does
  not say whether it retrains). The surrogate temperature is 1 (the paper's) by default.
- Fig. 7 / EOT: ``eot_draws`` of 1-8 samples (paper: up to 500). The attacker's EOT model
  uses unseeded draws of ``g`` (``seed=None``, seeded from torch's generator, which the run
  seeds); the scored defense is the deployed, seeded ``g``.
- Fig. 6 uses the sweep's largest EOT count for BPDA-I, and Delta in ``deltas`` (0.1, 0.2).
- Reparameterization: ``h`` is :class:`Reparameterization` (a 3x3 residual FCN; paper's FCN in
  its Appendix A.2) fitted for ``imitator_epochs`` on ``imitator_subset`` images; we report
  its MSE on training and held-out images, since the paper's claim is that it overfits.
- Transfer (Table 2): the independent model is a standard SmallCNN with seed ``seed + 1``
  trained with ``fa_recipe``; it is also the "no defense" baseline of the Table 3 table.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from advrepair.apps.pipeline import DEFAULT_HOME
from advrepair.adaptive.bpda import BPDA  # noqa: E402
from advrepair.adaptive.eot import EOT  # noqa: E402
from advrepair.attacks.base import Attack  # noqa: E402
from advrepair.attacks.hopskipjump import HopSkipJump  # noqa: E402
from advrepair.attacks.pgd import PGD  # noqa: E402
from advrepair.attacks.square import Square  # noqa: E402
from advrepair.attacks.transfer import Transfer  # noqa: E402
from advrepair.data import ImageDataset  # noqa: E402
from advrepair.data.subsets import balanced_subset  # noqa: E402
from advrepair.defenses.adversarial_transformation import SURROGATES, AdversarialTransformation  # noqa: E402
from advrepair.errors import InputError  # noqa: E402
from advrepair.evaluation.harness import CLEAN, AttackSpec, ModelEntry, _evaluate_cells, _params_of  # noqa: E402
from advrepair.evaluation.metrics import Accuracy  # noqa: E402
from advrepair.evaluation.store import ResultsStore, jsonable, record_key  # noqa: E402
from advrepair.evaluation.worst_case import worst_case  # noqa: E402
from advrepair.apps.experiments.setup import RunConfig  # noqa: E402
from advrepair.models.checkpoint import (ModelCard, checkpoint_paths, load_checkpoint, read_card,  # noqa: E402
                                         save_checkpoint)
from advrepair.models.registry import available_architectures, register_architecture  # noqa: E402
from advrepair.models.base import Classifier  # noqa: E402
from advrepair.models.small_cnn import SmallCNN  # noqa: E402
from advrepair.models.vgg import SmallVGG  # noqa: E402
from advrepair.training.adversarial_transformation import (Reparameterization, TrainingCost,  # noqa: E402
                                                           compare_training_cost, fit_imitator, imitation_error,
                                                           measure_training_cost, train_on_transformation)
from advrepair.training.loops import train_classifier  # noqa: E402
from advrepair.training.recipe import ClassifierRecipe  # noqa: E402
from advrepair.validation import check_images, check_int_at_least, check_positive  # noqa: E402
from advrepair.report.tables import accuracy_cell  # noqa: E402

PROTOCOL = "xiao2020"
DEPLOYED = "xiao2020"
IMITATOR_ARCH = "xiao-reparameterization"

if IMITATOR_ARCH not in available_architectures():
    # so that load_checkpoint can rebuild the imitator h from its card
    register_architecture(IMITATOR_ARCH, Reparameterization)


@dataclass(frozen=True)
class FbVariant:
    """One column of Table 1: an ``f_b`` and how it is trained (``recipe=None``: untrained)."""

    name: str
    recipe: ClassifierRecipe | None
    description: str = ""


def _default_fb_variants() -> tuple[FbVariant, ...]:
    return (FbVariant("untrained", None, "untrained (seeded initialization)"),
            FbVariant("partly-trained", ClassifierRecipe(epochs=1, train_subset=3000),
                      "standard, 1 epoch on 3000 images"),
            FbVariant("standard-1ep", ClassifierRecipe(epochs=1), "standard, 1 epoch"),
            FbVariant("pgd-1ep", ClassifierRecipe(epochs=1, adversarial=True, eps=0.1, alpha=0.04, steps=3),
                      "PGD-3 adversarial training (eps 0.1), 1 epoch"))


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
    fb_for_g: str = "pgd-1ep"
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
    hsj_steps: int = 4
    hsj_max_queries: int = 200
    hsj_init_evals: int = 20
    hsj_max_evals: int = 40

    def __post_init__(self) -> None:
        self.check_run_fields()
        for name in ("attack_steps", "g_steps", "stat_images", "stat_samples", "imitator_epochs",
                     "imitator_subset", "imitator_width", "square_queries", "hsj_max_queries", "hsj_init_evals",
                     "hsj_max_evals"):
            check_int_at_least(getattr(self, name), name, 1)
        check_int_at_least(self.imitator_depth, "imitator_depth", 2)
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
        if self.fa_recipe.adversarial:
            raise InputError("fa_recipe must be a standard recipe: f_a is trained on g(x) (Eq. 1)")
        if not self.fa_adversarial_recipe.adversarial:
            raise InputError("fa_adversarial_recipe must have adversarial=True (the PGD-AT baseline)")

    @property
    def alpha(self) -> float:
        """PGD step size of every PGD-type row."""
        return self.attack_alpha if self.attack_alpha is not None else 2.5 * self.eps / self.attack_steps

# -- Table 1 statistics ----------------------------------------------------------------------
def transformation_statistics(g: AdversarialTransformation, images: torch.Tensor, samples: int,
                              max_batch: int = 256) -> dict[str, torch.Tensor]:
    """Both selection statistics of xiao2020 Sec. 3.4 from one set of ``samples`` draws of ``g``.

    Returns per image (B,) tensors ``linf`` (``max_i |x_i - E[g(x)]_i|``, Table 1's row 3),
    ``mean_abs`` (the mean over pixels), and their standard errors ``linf_se`` (largest
    per-pixel standard error of the mean) and ``mean_abs_se`` (mean one), exactly as
    :func:`advrepair.defenses.adversarial_transformation.selection_statistic` computes each
    (same draws), at half the cost of calling it once per norm.

    Shapes: images (B, C, H, W) in [0, 1].

    Example:
        >>> stats = transformation_statistics(AdversarialTransformation(f_b, delta=0.2), x, samples=64)
        >>> float(stats["linf"].mean()), float(stats["mean_abs"].mean())
    """
    check_images(images)
    if not isinstance(g, AdversarialTransformation):
        raise InputError(f"g must be an AdversarialTransformation, got {type(g).__name__}")
    samples = check_int_at_least(samples, "samples", 1)
    max_batch = check_int_at_least(max_batch, "max_batch", 1)
    total = torch.zeros_like(images, dtype=torch.float64)
    total_sq = torch.zeros_like(images, dtype=torch.float64)
    per_pass = max(1, max_batch // images.shape[0])
    for lo in range(0, samples, per_pass):
        k = min(per_pass, samples - lo)
        draws = g.sample(images, k, first_draw=lo, max_batch=max_batch).double()
        total += draws.sum(0)
        total_sq += (draws ** 2).sum(0)
    mean = total / samples
    gap = (images.double() - mean).abs().flatten(1)
    var = (total_sq / samples - mean ** 2).clamp_min(0.0) * samples / max(samples - 1, 1)
    se = (var / samples).sqrt().flatten(1)
    dtype = images.dtype
    return {"linf": gap.max(1).values.to(dtype), "mean_abs": gap.mean(1).to(dtype),
            "linf_se": se.max(1).values.to(dtype), "mean_abs_se": se.mean(1).to(dtype)}


# -- cached models ----------------------------------------------------------------------------
def _norm(value: Any) -> Any:
    """JSON round trip (tuples -> lists, inf -> "inf") so cards compare with live configs."""
    return json.loads(json.dumps(jsonable(value), sort_keys=True, default=str))


def _log(msg: str) -> None:
    tqdm.write(msg)


def card_matches(stem: str | os.PathLike[str], *, kind: str, arch: str, config: dict[str, Any], dataset: str,
                 recipe: dict[str, Any], seed: int | None, parent: dict[str, Any] | None = None) -> bool:
    """Whether ``stem``'s checkpoint exists and its card records exactly this model and training.

    ``parent`` entries must equal the card's ``parent`` entries of the same names (e.g. the
    SHA-256 of the f_b a model was trained through). A card that cannot be read counts as a
    mismatch (the model is retrained and the card rewritten).
    """
    weights, card_path = checkpoint_paths(stem)
    if not (weights.exists() and card_path.exists()):
        return False
    try:
        card = read_card(stem)
    except Exception:  # noqa: BLE001 - any unreadable card means "train again"
        return False
    return (card.kind == kind and card.arch == arch and _norm(card.config) == _norm(config)
            and card.dataset == dataset and _norm(card.recipe) == _norm(recipe) and card.seed == seed
            and all(_norm(card.parent.get(k)) == _norm(v) for k, v in (parent or {}).items()))


def _build(cls: type[Classifier], seed: int, data: ImageDataset, config: dict[str, Any]) -> Classifier:
    torch.manual_seed(seed)
    c, h, _w = data.image_shape
    return cls(in_channels=c, num_classes=data.num_classes, input_size=h, **config)


def _clean_accuracy(model: nn.Module, data: ImageDataset, batch_size: int, device: torch.device,
                    transform: nn.Module | None = None) -> Accuracy:
    correct = 0
    for x, y in data.batches(batch_size):
        x, y = x.to(device), y.to(device)
        if transform is not None:
            x = transform(x)
        with torch.no_grad():
            correct += int((model(x).argmax(1) == y).sum())
    return Accuracy(correct, len(data))


def _metric(name: str, acc: Accuracy, data: ImageDataset, what: str) -> dict[str, Any]:
    return {"metric": name, "value": acc.value, "stderr": acc.stderr, "attack": None, "n_images": acc.n,
            "split": data.split, "scored": what}


@dataclass
class _Run:
    cfg: XiaoConfig
    store: ResultsStore
    train: ImageDataset
    data: ImageDataset  # the class-balanced evaluation images
    subset: str
    device: torch.device

    def save(self, model: nn.Module, stem: Path, card: ModelCard) -> ModelCard:
        save_checkpoint(model, stem, card)
        _log(f"saved {stem}.safetensors")
        return card


def _ensure_f_b(run: _Run, variant: FbVariant) -> tuple[nn.Module, ModelCard]:
    cfg = run.cfg
    stem = cfg.models_dir / f"fb-{variant.name}"
    model = _build(SmallVGG, cfg.seed, run.train, cfg.fb_config)
    recipe = variant.recipe.to_dict() if variant.recipe is not None else {"untrained": True}
    wanted: dict[str, Any] = dict(kind="classifier", arch=SmallVGG.arch, config=model.config,
                                  dataset=run.train.name, recipe=recipe, seed=cfg.seed)
    if card_matches(stem, **wanted, parent={"role": "f_b"}):
        loaded, card = load_checkpoint(stem, map_location=run.device, expected_kind="classifier")
        _log(f"reusing {stem}.safetensors (f_b {variant.name})")
        return loaded, card
    cost: TrainingCost | None = None
    if variant.recipe is not None:
        _log(f"training f_b {variant.name} ({variant.description}) -> {stem}.safetensors")
        recipe_ = variant.recipe
        cost = measure_training_cost(lambda: train_classifier(model, run.train, recipe_, seed=cfg.seed,
                                                              device=run.device, progress=cfg.progress),
                                     {"f_b": model})
    model.to(run.device).eval()
    acc = _clean_accuracy(model, run.data, cfg.batch_size, run.device)
    card = ModelCard(kind="classifier", arch=SmallVGG.arch, config=model.config, dataset=run.train.name,
                     recipe=recipe, seed=cfg.seed, metrics=[_metric("clean_accuracy", acc, run.data, "f_b")],
                     parent={"role": "f_b", "variant": variant.name, "description": variant.description,
                             "training_cost": None if cost is None else cost.to_dict(),
                             "history": None if cost is None else cost.result})
    return model, run.save(model, stem, card)


def _tag(delta: float) -> str:
    """A file-name-safe Delta (``0.2`` -> ``0p2``): checkpoint stems must not contain dots."""
    return f"{delta:g}".replace(".", "p")


def _transform(f_b: nn.Module, delta: float, steps: int, seed: int | None, random_start: bool = True
               ) -> AdversarialTransformation:
    return AdversarialTransformation(f_b, delta=delta, steps=steps, seed=seed, random_start=random_start)


def _fa_parent(g: AdversarialTransformation, fb_card: ModelCard) -> dict[str, Any]:
    return {"role": "f_a on g", "f_b_sha256": fb_card.weights_sha256, "transform": g.params()}


def _defended_metrics(run: _Run, f_a: nn.Module, g: nn.Module | None) -> list[dict[str, Any]]:
    out = [_metric("clean_accuracy", _clean_accuracy(f_a, run.data, run.cfg.batch_size, run.device), run.data,
                   "classifier alone")]
    if g is not None:
        out.append(_metric("clean_accuracy_defended", _clean_accuracy(f_a, run.data, run.cfg.batch_size,
                                                                      run.device, g), run.data, "f_a(g(x))"))
    return out


def _ensure_defended_pair(run: _Run, g: AdversarialTransformation, fb_card: ModelCard
                          ) -> tuple[tuple[nn.Module, ModelCard], tuple[nn.Module, ModelCard]]:
    """f_a trained on g and its PGD-AT twin, trained together so their costs share one run."""
    cfg = run.cfg
    stem_g = cfg.models_dir / f"fa-xiao-delta{_tag(g.delta)}"
    stem_at = cfg.models_dir / "fa-pgd-at"
    config = _build(SmallCNN, cfg.seed, run.train, cfg.fa_config).config
    common: dict[str, Any] = dict(kind="classifier", arch=SmallCNN.arch, config=config, dataset=run.train.name,
                                  seed=cfg.seed)
    parent_g = _fa_parent(g, fb_card)
    parent_at = {"role": "pgd-at baseline", "partner_transform": g.params()}
    if (card_matches(stem_g, **common, recipe=cfg.fa_recipe.to_dict(), parent=parent_g)
            and card_matches(stem_at, **common, recipe=cfg.fa_adversarial_recipe.to_dict(), parent=parent_at)):
        _log(f"reusing {stem_g}.safetensors and {stem_at}.safetensors (trained and timed together)")
        return (load_checkpoint(stem_g, map_location=run.device, expected_kind="classifier"),
                load_checkpoint(stem_at, map_location=run.device, expected_kind="classifier"))
    _log(f"training f_a on g(x) (Delta {g.delta:g}, N {g.steps}) and, for the cost comparison, the same f_a by "
         f"PGD-{cfg.fa_adversarial_recipe.steps} adversarial training")
    costs = compare_training_cost(lambda: _build(SmallCNN, cfg.seed, run.train, cfg.fa_config), g, run.train,
                                  cfg.fa_recipe, cfg.fa_adversarial_recipe, seed=cfg.seed, device=run.device,
                                  progress=cfg.progress)
    out = []
    for method, stem, recipe, parent, defense in (
            ("transformation", stem_g, cfg.fa_recipe, parent_g, g),
            ("pgd-at", stem_at, cfg.fa_adversarial_recipe, parent_at, None)):
        model, history = costs[method].result
        model.eval()
        card = ModelCard(kind="classifier", arch=SmallCNN.arch, config=model.config, dataset=run.train.name,
                         recipe=recipe.to_dict(), seed=cfg.seed, metrics=_defended_metrics(run, model, defense),
                         parent={**parent, "training_cost": costs[method].to_dict(), "history": history,
                                 "timed_with": "pgd-at" if method == "transformation" else "transformation"})
        out.append((model, run.save(model, stem, card)))
    return out[0], out[1]


def _ensure_fa_for_delta(run: _Run, g: AdversarialTransformation, fb_card: ModelCard) -> tuple[nn.Module, ModelCard]:
    """An f_a trained on g of another Delta (Fig. 6), with the main f_a's recipe and seed."""
    cfg = run.cfg
    stem = cfg.models_dir / f"fa-xiao-delta{_tag(g.delta)}"
    model = _build(SmallCNN, cfg.seed, run.train, cfg.fa_config)
    parent = _fa_parent(g, fb_card)
    wanted: dict[str, Any] = dict(kind="classifier", arch=SmallCNN.arch, config=model.config, dataset=run.train.name,
                  recipe=cfg.fa_recipe.to_dict(), seed=cfg.seed)
    if card_matches(stem, **wanted, parent=parent):
        _log(f"reusing {stem}.safetensors")
        return load_checkpoint(stem, map_location=run.device, expected_kind="classifier")
    _log(f"training f_a on g(x) with Delta {g.delta:g} (Fig. 6) -> {stem}.safetensors")
    cost = measure_training_cost(lambda: train_on_transformation(model, g, run.train, cfg.fa_recipe, seed=cfg.seed,
                                                                 device=run.device, progress=cfg.progress),
                                 {"f_a": model, "f_b": g.f_b})
    model.eval()
    card = ModelCard(kind="classifier", arch=SmallCNN.arch, config=model.config, dataset=run.train.name,
                     recipe=cfg.fa_recipe.to_dict(), seed=cfg.seed, metrics=_defended_metrics(run, model, g),
                     parent={**parent, "training_cost": cost.to_dict(), "history": cost.result})
    return model, run.save(model, stem, card)


def _ensure_independent(run: _Run) -> tuple[nn.Module, ModelCard]:
    """A standard SmallCNN with another seed: the transfer source and the no-defense baseline."""
    cfg = run.cfg
    seed = cfg.seed + 1
    stem = cfg.models_dir / f"fa-standard-seed{seed}"
    model = _build(SmallCNN, seed, run.train, cfg.fa_config)
    wanted: dict[str, Any] = dict(kind="classifier", arch=SmallCNN.arch, config=model.config, dataset=run.train.name,
                  recipe=cfg.fa_recipe.to_dict(), seed=seed)
    if card_matches(stem, **wanted, parent={"role": "independent"}):
        _log(f"reusing {stem}.safetensors")
        return load_checkpoint(stem, map_location=run.device, expected_kind="classifier")
    _log(f"training an independent standard SmallCNN (seed {seed}) -> {stem}.safetensors")
    cost = measure_training_cost(lambda: train_classifier(model, run.train, cfg.fa_recipe, seed=seed,
                                                          device=run.device, progress=cfg.progress), {"f": model})
    model.eval()
    card = ModelCard(kind="classifier", arch=SmallCNN.arch, config=model.config, dataset=run.train.name,
                     recipe=cfg.fa_recipe.to_dict(), seed=seed, metrics=_defended_metrics(run, model, None),
                     parent={"role": "independent", "training_cost": cost.to_dict(), "history": cost.result})
    return model, run.save(model, stem, card)


def _ensure_imitator(run: _Run, g: AdversarialTransformation, fb_card: ModelCard) -> tuple[nn.Module, ModelCard]:
    """h imitating g by MSE (Sec. 4.1 reparameterization), with its train and held-out errors."""
    cfg = run.cfg
    stem = cfg.models_dir / f"imitator-delta{_tag(g.delta)}"
    c = run.train.image_shape[0]
    config: dict[str, Any] = dict(channels=c, delta=g.delta, width=cfg.imitator_width, depth=cfg.imitator_depth)
    fit = dict(epochs=cfg.imitator_epochs, batch_size=64, lr=cfg.imitator_lr, train_subset=cfg.imitator_subset,
               loss="mse to one draw of g per epoch")
    parent = {"f_b_sha256": fb_card.weights_sha256, "transform": g.params()}
    if card_matches(stem, kind="xiao-imitator", arch=IMITATOR_ARCH, config=config, dataset=run.train.name,
                    recipe=fit, seed=cfg.seed, parent=parent):
        _log(f"reusing {stem}.safetensors")
        return load_checkpoint(stem, map_location=run.device, expected_kind="xiao-imitator")
    _log(f"fitting the imitator h of g (reparameterization attack) -> {stem}.safetensors")
    torch.manual_seed(cfg.seed)
    untrained = Reparameterization(**config)
    t0 = time.perf_counter()
    net = fit_imitator(g, run.train, net=untrained, epochs=cfg.imitator_epochs, batch_size=64, lr=cfg.imitator_lr,
                       train_subset=cfg.imitator_subset, seed=cfg.seed, device=run.device, progress=cfg.progress)
    seconds = time.perf_counter() - t0
    n_probe = min(len(run.data), 200)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_idx = torch.randperm(len(run.train), generator=gen)[:n_probe]
    train_x = run.train.tensors(train_idx)[0].to(run.device)
    test_x = run.data.tensors(range(n_probe))[0].to(run.device)
    metrics = [{"metric": "imitation_mse_train_images", "value": imitation_error(net, g, train_x, draw="probe"),
                "n_images": n_probe, "split": run.train.split, "attack": None},
               {"metric": "imitation_mse_heldout_images", "value": imitation_error(net, g, test_x, draw="probe"),
                "n_images": n_probe, "split": run.data.split, "attack": None},
               {"metric": "g_draw_to_draw_mse", "value": float(((g.transform(test_x, "probe") -
                                                                g.transform(test_x, "probe-2")) ** 2).mean()),
                "n_images": n_probe, "split": run.data.split, "attack": None}]
    card = ModelCard(kind="xiao-imitator", arch=IMITATOR_ARCH, config=config, dataset=run.train.name, recipe=fit,
                     seed=cfg.seed, metrics=metrics,
                     parent={**parent, "history": getattr(net, "history", None), "seconds": seconds})
    return net, run.save(net, stem, card)


# -- evaluation rows --------------------------------------------------------------------------
@dataclass
class _Model:
    name: str
    clf: nn.Module
    card: ModelCard

    def entry_card(self) -> dict[str, Any]:
        return self.card.__dict__


def _row(run: _Run, name: str, model: _Model, attack: Attack | None, crafted_on: str,
         defenses: Mapping[str, nn.Module], with_base: bool, attack_extra: dict[str, Any] | None = None,
         ) -> dict[str | None, dict[str, Any]]:
    """One attack row: craft once, score the classifier alone (``with_base``) and after each
    defense; one record per cell, skipped when already in the store. Returns {label: record}."""
    desc = {"name": CLEAN} if attack is None else attack.params()
    attack_desc = {**desc, "xiao_row": name, "crafted_on": crafted_on, **(attack_extra or {})}
    base = dict(dataset=run.data.name, subset=run.subset, n_images=len(run.data), model=model.name,
                model_weights=model.card.weights_sha256, attack=attack_desc)
    cells: dict[str | None, str] = {}
    if with_base:
        cells[None] = record_key(**base, defense=None)
    for label, defense in defenses.items():
        cells[label] = record_key(**base, defense=_params_of(defense))
    if all(run.store.has(k) for k in cells.values()):
        return {label: run.store.require(k) for label, k in cells.items()}
    if run.cfg.progress:
        _log(f"xiao2020 | {model.name} | {name}: crafted on {crafted_on}")
    entry = ModelEntry(model.name, model.clf, card=model.entry_card(), defenses=dict(defenses))
    records = _evaluate_cells(run.data, entry, model.clf, AttackSpec(CLEAN), attack_desc, base, cells, run.store,
                              run.cfg.batch_size, run.device, run.cfg.progress, attack=attack,
                              extra={"protocol": PROTOCOL, "xiao_row": name})
    return {label: rec for label, rec in zip(cells, records)}


def _pgd(cfg: XiaoConfig, model: nn.Module) -> PGD:
    return PGD(model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.attack_steps, seed=cfg.seed)


def _eot_row(run: _Run, model: _Model, g: AdversarialTransformation, label: str, draws: int
             ) -> dict[str | None, dict[str, Any]]:
    cfg = run.cfg
    unseeded = _transform(g.f_b, g.delta, g.steps, None, g.random_start)
    attack_model = EOT(nn.Sequential(BPDA(unseeded), model.clf), draws=draws)
    torch.manual_seed(cfg.seed)  # the unseeded draws come from torch's generator: make the run reproducible
    return _row(run, f"bpda-eot-{draws}", model, _pgd(cfg, attack_model),
                f"EOT over {draws} unseeded draws of BPDA(g, identity) + f_a", {label: g}, False,
                {"gradient_of_g": "identity (BPDA-I)", "eot_draws": draws})


def _surrogate_row(run: _Run, model: _Model, g: AdversarialTransformation, label: str, kind: str
                   ) -> dict[str | None, dict[str, Any]]:
    cfg = run.cfg
    surrogate = g.bpda_surrogate(kind, cfg.surrogate_temperature)
    attack_model = nn.Sequential(BPDA(g, surrogate), model.clf)
    return _row(run, f"bpda-{kind}", model, _pgd(cfg, attack_model),
                f"BPDA(g, {kind} surrogate of sgn + Eq. 5 projection, {g.steps} steps unrolled) + f_a",
                {label: g}, False, {"gradient_of_g": surrogate.params(), "unrolled_steps": g.steps})


def _accuracy_dict(acc: Accuracy, over: list[str]) -> dict[str, Any]:
    return {"accuracy": acc.value, "stderr": acc.stderr, "n_correct": acc.correct, "n_images": acc.n, "over": over}


def run_xiao_experiment(cfg: XiaoConfig) -> Path:
    """Train or reuse every model, fill ``cfg.out``'s results store, write the report; returns report.md.

    Resumable: cached models (cards matching the config) are reused and records already in
    ``cfg.out/results.json`` are skipped, so a rerun recomputes nothing and adds no record.

    Example:
        >>> run_xiao_experiment(XiaoConfig(out=Path("/tmp/runs/xiao2020"), n_images=200))
    """
    if not isinstance(cfg, XiaoConfig):
        raise InputError(f"run_xiao_experiment takes a XiaoConfig, got {type(cfg).__name__}")
    start = time.perf_counter()
    device, train, test = cfg.start()
    data = balanced_subset(test, cfg.n_images, seed=cfg.seed)
    run = _Run(cfg, ResultsStore(cfg.out, resume=True), train, data,
               f"balanced {len(data)} (seed {cfg.seed})", device)
    cfg.models_dir.mkdir(parents=True, exist_ok=True)
    n_before = len(run.store.records)

    # -- Table 1: f_b columns and the selection statistic
    fbs = {v.name: _ensure_f_b(run, v) for v in cfg.fb_variants}
    stat_data = balanced_subset(test, min(cfg.stat_images, len(data)), seed=cfg.seed + 7)
    stat_images = stat_data.tensors()[0].to(device)
    table1_keys = []
    for v in cfg.fb_variants:
        f_b, card = fbs[v.name]
        g_v = _transform(f_b, cfg.delta, cfg.g_steps, cfg.seed)
        key = record_key(kind="xiao-table1", variant=v.name, f_b_sha256=card.weights_sha256, transform=g_v.params(),
                         samples=cfg.stat_samples, images=f"balanced {len(stat_data)} (seed {cfg.seed + 7})",
                         dataset=test.name)
        table1_keys.append(key)
        if run.store.has(key):
            continue
        _log(f"Table 1: selection statistic of f_b {v.name} ({cfg.stat_samples} draws x {len(stat_data)} images)")
        t0 = time.perf_counter()
        stats = transformation_statistics(g_v, stat_images, cfg.stat_samples)
        clean = next((m for m in card.metrics if m["metric"] == "clean_accuracy"), {})
        run.store.add({"kind": "xiao-table1", "key": key, "protocol": PROTOCOL, "variant": v.name,
                       "description": v.description, "recipe": card.recipe, "f_b_sha256": card.weights_sha256,
                       "f_b_clean_accuracy": clean.get("value"), "f_b_clean_n_images": clean.get("n_images"),
                       "linf": float(stats["linf"].mean()), "linf_se": float(stats["linf_se"].mean()),
                       "mean_abs": float(stats["mean_abs"].mean()), "mean_abs_se": float(stats["mean_abs_se"].mean()),
                       "linf_per_image_max": float(stats["linf"].max()), "samples": cfg.stat_samples,
                       "n_images": len(stat_data), "delta": cfg.delta, "g_steps": cfg.g_steps,
                       "training_seconds": (card.parent.get("training_cost") or {}).get("seconds"),
                       "seconds": time.perf_counter() - t0, "used_for_g": v.name == cfg.fb_for_g},
                      {"linf": stats["linf"].cpu().numpy(), "mean_abs": stats["mean_abs"].cpu().numpy()})

    # -- the defended model, its PGD-AT twin (training cost), the independent model, the imitator
    f_b, fb_card = fbs[cfg.fb_for_g]
    for p in f_b.parameters():
        p.requires_grad_(False)
    g = _transform(f_b, cfg.delta, cfg.g_steps, cfg.seed)
    (fa, fa_card), (fa_at, at_card) = _ensure_defended_pair(run, g, fb_card)
    indep, indep_card = _ensure_independent(run)
    h, h_card = _ensure_imitator(run, g, fb_card)
    cost_key = record_key(kind="xiao-training-cost", fa=fa_card.weights_sha256, pgd_at=at_card.weights_sha256)
    if not run.store.has(cost_key):
        fb_cost = fb_card.parent.get("training_cost") or {}
        run.store.add({"kind": "xiao-training-cost", "key": cost_key, "protocol": PROTOCOL,
                       "transformation": fa_card.parent["training_cost"], "pgd-at": at_card.parent["training_cost"],
                       "f_b_pretraining": fb_cost, "recipe_transformation": fa_card.recipe,
                       "recipe_pgd_at": at_card.recipe, "transform": g.params(),
                       "f_a_clean_defended": next(m["value"] for m in fa_card.metrics
                                                  if m["metric"] == "clean_accuracy_defended"),
                       "pgd_at_clean": next(m["value"] for m in at_card.metrics if m["metric"] == "clean_accuracy")})

    main = _Model(f"fa-xiao-delta{cfg.delta:g}", fa, fa_card)
    defended = nn.Sequential(g, fa).eval()
    rows: dict[str, dict[str | None, dict[str, Any]]] = {}
    d = {DEPLOYED: g}
    # -- Table 3 rows on the deployed defense
    rows["clean"] = _row(run, "clean", main, None, "-", d, True)
    rows["white-box-transfer"] = _row(run, "white-box-transfer", main, _pgd(cfg, fa),
                                      "f_a alone (WT, Sec. 4.2)", d, True)
    for kind in cfg.surrogates:
        rows[f"bpda-{kind}"] = _surrogate_row(run, main, g, DEPLOYED, kind)
    for r in cfg.eot_draws:
        rows[f"bpda-eot-{r}"] = _eot_row(run, main, g, DEPLOYED, r)
    h_params = {"arch": IMITATOR_ARCH, "weights_sha256": h_card.weights_sha256, **h_card.config}
    rows["reparameterization"] = _row(run, "reparameterization", main,
                                      _pgd(cfg, nn.Sequential(BPDA(g, h), fa)),
                                      "BPDA(g, imitator h) + f_a (Sec. 4.1)", d, False, {"imitator": h_params})
    source_name = f"independent SmallCNN (seed {cfg.seed + 1})"
    rows["transfer-independent"] = _row(
        run, "transfer-independent", main,
        Transfer(defended, source=indep, attack="pgd", eps=cfg.eps, alpha=cfg.alpha, steps=cfg.attack_steps,
                 seed=cfg.seed, source_name=source_name),
        f"PGD on {source_name}", d, True, {"source_weights": indep_card.weights_sha256})
    rows["square"] = _row(run, "square", main, Square(defended, eps=cfg.eps, n_queries=cfg.square_queries,
                                                      seed=cfg.seed), "f_a(g(x)), scores only", d, False)
    rows["hopskipjump"] = _row(run, "hopskipjump", main,
                               HopSkipJump(defended, eps=cfg.eps, norm="Linf", steps=cfg.hsj_steps,
                                           max_queries=cfg.hsj_max_queries, init_num_evals=cfg.hsj_init_evals,
                                           max_num_evals=cfg.hsj_max_evals, init_size=20, seed=cfg.seed),
                               "f_a(g(x)), decisions only", d, False)

    # -- baselines (Table 3's other methods)
    baselines = {}
    for role, model in (("no-defense", _Model(f"fa-standard-seed{cfg.seed + 1}", indep, indep_card)),
                        ("pgd-at", _Model("fa-pgd-at", fa_at, at_card))):
        clean = _row(run, "clean", model, None, "-", {}, True)[None]
        pgd = _row(run, "white-box-pgd", model, _pgd(cfg, model.clf), "the classifier itself", {}, True)[None]
        baselines[role] = {"model": model.name, "clean": clean["key"], "pgd": pgd["key"]}

    # -- Fig. 5: surrogate BPDA against N
    fig5 = []
    for n in cfg.bpda_steps:
        if n == cfg.g_steps and cfg.sweep_random_start:
            g_n, label = g, DEPLOYED
        else:
            g_n, label = _transform(f_b, cfg.delta, n, cfg.seed, cfg.sweep_random_start), f"{DEPLOYED}-N{n}"
        point = {"steps": n, "label": label, "clean": _row(run, "clean", main, None, "-", {label: g_n},
                                                           False)[label]["key"]}
        for kind in cfg.surrogates:
            point[f"bpda-{kind}"] = _surrogate_row(run, main, g_n, label, kind)[label]["key"]
        fig5.append(point)

    # -- Figs. 6 and 7: Delta sweep, each with its own f_a; EOT sample sweep per Delta
    fig6, fig7 = [], []
    for delta in cfg.deltas:
        if math.isclose(delta, cfg.delta):
            model_d, g_d, label = main, g, DEPLOYED
        else:
            g_d = _transform(f_b, delta, cfg.g_steps, cfg.seed)
            fa_d, card_d = _ensure_fa_for_delta(run, g_d, fb_card)
            model_d, label = _Model(f"fa-xiao-delta{delta:g}", fa_d, card_d), f"{DEPLOYED}-delta{delta:g}"
        clean_row = _row(run, "clean", model_d, None, "-", {label: g_d}, True)
        wt = _row(run, "white-box-transfer", model_d, _pgd(cfg, model_d.clf), "f_a alone (WT, Sec. 4.2)",
                  {label: g_d}, True)
        eot = {r: _eot_row(run, model_d, g_d, label, r)[label]["key"] for r in cfg.eot_draws}
        fig7 += [{"delta": delta, "draws": r, "key": k} for r, k in eot.items()]
        fig6.append({"delta": delta, "model": model_d.name, "clean": clean_row[label]["key"],
                     "white-box-transfer": wt[label]["key"], "bpda-eot": eot[max(cfg.eot_draws)],
                     "eot_draws": max(cfg.eot_draws),
                     "training_seconds": (model_d.card.parent.get("training_cost") or {}).get("seconds")})

    # -- summary: per-image worst cases
    attacked = {name: cells[DEPLOYED] for name, cells in rows.items() if name != "clean"}
    bpda_names = [n for n in attacked if n.startswith("bpda") or n == "reparameterization"]
    summary_key = record_key(kind="xiao-summary", rows={n: c[DEPLOYED]["key"] for n, c in rows.items()},
                             baselines=baselines, fig5=fig5, fig6=fig6, fig7=fig7, table1=table1_keys,
                             cost=cost_key, imitator=h_card.weights_sha256)
    if not run.store.has(summary_key):
        worst = worst_case(run.store, list(attacked.values()))
        worst_bpda = worst_case(run.store, [attacked[n] for n in bpda_names])
        strongest = min(attacked, key=lambda n: attacked[n]["accuracy"])
        run.store.add({
            "kind": "xiao-summary", "key": summary_key, "protocol": PROTOCOL, "dataset": data.name,
            "subset": run.subset, "n_images": len(data), "config": cfg.to_dict(),
            "deployed": {"model": main.name, "label": DEPLOYED, "defense": g.params(),
                         # a list, not a mapping: results.json sorts keys and the report keeps this order
                         "rows": [{"name": n, "defended": c[DEPLOYED]["key"],
                                   "base": c[None]["key"] if None in c else None} for n, c in rows.items()]},
            "baselines": baselines, "table1": table1_keys, "training_cost": cost_key,
            "imitator": {"config": h_card.config, "metrics": h_card.metrics, "weights_sha256": h_card.weights_sha256},
            "fig5": fig5, "fig6": fig6, "fig7": fig7,
            "worst_case": _accuracy_dict(worst, sorted(attacked)),
            "bpda_worst_case": _accuracy_dict(worst_bpda, sorted(bpda_names)),
            "most_effective": strongest,
            # wall time of the run that computed the last missing piece (a resumed run counts from its start)
            "run_seconds": time.perf_counter() - start, "run_records_added": len(run.store.records) + 1 - n_before})
    wall = time.perf_counter() - start
    added = len(run.store.records) - n_before
    report = write_xiao_report(cfg.out, wall_seconds=wall, records_added=added)
    _log(f"xiao2020 report: {report} ({wall:.0f} s, {added} new records)")
    return report


# -- report -----------------------------------------------------------------------------------
ROW_TITLES = {
    "clean": "Clean (no attack)",
    "white-box-transfer": "White-box transfer: PGD on f_a alone (WT)",
    "bpda-tanh": "BPDA, tanh surrogate of sgn + Eq. 5",
    "bpda-softsign": "BPDA, soft-sign surrogate of sgn + Eq. 5",
    "reparameterization": "Reparameterization: PGD through f_a(h(x))",
    "transfer-independent": "Transfer from an independent model",
    "square": "Square (scores only)",
    "hopskipjump": "HopSkipJump (decisions only)",
    "white-box-pgd": "PGD on the classifier itself",
}


def _title(name: str) -> str:
    if name.startswith("bpda-eot-"):
        return f"BPDA-I + EOT, {name.rsplit('-', 1)[1]} samples"
    return ROW_TITLES.get(name, name)


def _pct(rec: dict[str, Any] | None) -> str:
    return accuracy_cell(rec, missing="-")


def _budget(attack: dict[str, Any]) -> tuple[str, str, str]:
    """(eps, steps or queries, step size) of an attack record, for the tables."""
    if attack.get("name") == CLEAN:
        return "-", "-", "-"
    inner: dict[str, Any] = attack["attack"] if isinstance(attack.get("attack"), dict) else attack
    steps = inner.get("steps")
    if attack.get("name") == "square":
        steps_s = f"{attack.get('n_queries')} queries"
    elif attack.get("name") == "hopskipjump":
        steps_s = f"{steps} iterations, <= {attack.get('max_queries')} queries"
    else:
        steps_s = str(steps)
    alpha = inner.get("alpha")
    return f"{attack.get('eps'):g} ({attack.get('norm', 'Linf')})", steps_s, "-" if alpha is None else f"{alpha:.4g}"


def _figure(path: Path, curves: list[tuple[str, list[float], list[float], list[float]]], xlabel: str, title: str,
            logx: bool = False) -> Path:
    fig, ax = plt.subplots(figsize=(5.2, 3.7))
    for label, xs, ys, errs in curves:
        ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in errs], marker="o", capsize=3, label=label)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_xiao_report(out_dir: str | os.PathLike[str], wall_seconds: float | None = None,
                      records_added: int | None = None) -> Path:
    """``report.md`` and three PNGs (accuracy vs N, vs EOT samples, vs Delta) from ``out_dir``'s
    results.json alone (never runs an attack). Uses the newest ``xiao-summary`` record.

    Raises:
        InputError: the store holds no xiao2020 summary (run :func:`run_xiao_experiment` first).
    """
    out = Path(out_dir)
    store = ResultsStore(out, resume=True)
    summaries = [r for r in store.records if r.get("kind") == "xiao-summary"]
    if not summaries:
        raise InputError(f"{out / 'results.json'} holds no xiao2020 summary; run the experiment first")
    s = summaries[-1]
    cfg = s["config"]

    def rec(key: str | None) -> dict[str, Any] | None:
        return None if key is None else store.get(key)

    n = s["n_images"]
    parts = ["# xiao2020 on Fashion-MNIST: defense by adversarial transformation\n",
             f"{s['dataset']}, {s['subset']} test images; threat model L-inf eps = {cfg['eps']:g}; g: Delta = "
             f"{s['deployed']['defense']['delta']:g}, N = {s['deployed']['defense']['steps']} LL-PGD steps of "
             f"{s['deployed']['defense']['step_size']:.4g}, seeded random start; f_b = small VGG "
             f"({cfg['fb_for_g']}); f_a = SmallCNN trained on g(x). Accuracy in % ± binomial standard error.\n"]
    if s.get("run_seconds") is not None:
        parts.append(f"The run that completed these results took {s['run_seconds']:.0f} s wall time "
                     f"({s.get('run_records_added')} records added).")
    if wall_seconds is not None:
        parts.append(f"This run: {wall_seconds:.0f} s wall time"
                     + (f", {records_added} new records" if records_added is not None else "") + ".\n")

    # Table 1
    parts += ["\n## Table 1: the statistic that chooses f_b (Sec. 3.4)\n",
              "| f_b | training | f_b clean acc. (%) | L-inf ‖x − E[g(x)]‖ ± s.e. | mean-abs ‖x − E[g(x)]‖ ± s.e. "
              "| samples | images | used for g |", "|---|---|---|---|---|---|---|---|"]
    for key in s["table1"]:
        t = rec(key)
        if t is None:
            continue
        acc = t.get("f_b_clean_accuracy")
        parts.append(f"| {t['variant']} | {t['description']} | {'-' if acc is None else f'{100 * acc:.1f}'} "
                     f"(n={t.get('f_b_clean_n_images')}) | {t['linf']:.4f} ± {t['linf_se']:.4f} | "
                     f"{t['mean_abs']:.4f} ± {t['mean_abs_se']:.4f} | {t['samples']} | {t['n_images']} | "
                     f"{'yes' if t['used_for_g'] else ''} |")
    parts.append("\nAverages over images of the per-image distance; s.e. = the Monte-Carlo standard error of one "
                 "pixel's mean (largest pixel for L-inf, mean pixel for mean-abs): an L-inf estimate within ~3 s.e. of "
                 "another is not distinguishable. Paper (CIFAR-10, 5000 samples): 0.005 untrained, 0.033-0.136 "
                 "trained 1-20 epochs, 0.272 adversarially trained.\n")

    # training cost
    c = rec(s["training_cost"])
    if c is not None:
        tr, at = c["transformation"], c["pgd-at"]
        parts += ["\n## Training cost: f_a on g(x) vs PGD adversarial training of the same f_a (same run)\n",
                  "| Method | recipe | seconds | s per 1000 images | f_a forward (images) | f_a backward | f_b forward "
                  "| f_b backward | passes per image (f_a fwd+bwd / f_b fwd+bwd) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for title, cost, recipe in (("f_a on g(x) (Eq. 1)", tr, c["recipe_transformation"]),
                                    ("PGD adversarial training", at, c["recipe_pgd_at"])):
            p = cost["passes"]
            fb = p.get("f_b", {"forward": 0, "backward": 0})
            seen = (recipe.get("epochs") or 0) * (recipe.get("train_subset") or 0)
            per_k = f"{1000 * cost['seconds'] / seen:.2f}" if seen else "-"
            per_img = (f"{(p['f_a']['forward'] + p['f_a']['backward']) / seen:.0f} / "
                       f"{(fb['forward'] + fb['backward']) / seen:.0f}") if seen else "-"
            parts.append(f"| {title} | {_recipe_text(recipe)} | {cost['seconds']:.1f} | {per_k} | "
                         f"{p['f_a']['forward']} | {p['f_a']['backward']} | {fb['forward']} | {fb['backward']} "
                         f"| {per_img} |")
        fbp = c.get("f_b_pretraining") or {}
        parts.append(f"\nRatio of seconds (g / PGD-AT): **{tr['seconds'] / max(at['seconds'], 1e-9):.2f}**. "
                     f"One-off pre-training of f_b: {fbp.get('seconds', 0):.1f} s (not in the ratio, as in the paper). "
                     f"Clean accuracy: f_a(g(x)) {100 * c['f_a_clean_defended']:.1f}%, PGD-AT f_a "
                     f"{100 * c['pgd_at_clean']:.1f}% (n={n}). Seconds are wall-clock, so they depend on what else "
                     "ran on the machine during each training; the pass counts do not. A pass through f_b costs "
                     "what the f_b architecture costs (here a far smaller network than f_a).\n")

    # attacks on the deployed defense
    dep = s["deployed"]
    parts += ["\n## f_a∘g under every attack (Sec. 4, the rows of Table 3's worst case)\n",
              "| Row | Attack | Crafted on | eps | steps / queries | step size | images | f_a alone (%) | f_a∘g (%) "
              "| s/img |", "|---|---|---|---|---|---|---|---|---|---|"]
    dep_rows = {row["name"]: row for row in dep["rows"]}
    for name, keys in dep_rows.items():
        r, b = rec(keys["defended"]), rec(keys["base"])
        if r is None:
            continue
        eps, steps, alpha = _budget(r["attack"])
        parts.append(f"| {_title(name)} | {r['attack']['name']} | {r['attack'].get('crafted_on', '-')} | {eps} | "
                     f"{steps} | {alpha} | {r['n_images']} | {_pct(b)} | {_pct(r)} | "
                     f"{r['seconds'] / max(r['n_images'], 1):.3f} |")
    wc, wb = s["worst_case"], s["bpda_worst_case"]
    parts.append(f"| **Per-image worst case, BPDA-type rows** | {len(wb['over'])} rows | - | {cfg['eps']:g} | - | - | "
                 f"{wb['n_images']} | - | **{100 * wb['accuracy']:.1f} ± {100 * wb['stderr']:.1f}** | |")
    parts.append(f"| **Per-image worst case, all rows** | {len(wc['over'])} rows | - | {cfg['eps']:g} | - | - | "
                 f"{wc['n_images']} | - | **{100 * wc['accuracy']:.1f} ± {100 * wc['stderr']:.1f}** | |")
    parts.append(f"\nThe 'f_a∘g' column scores the deployed (seeded) defense once per image. 'f_a alone' is the "
                 f"classifier without g on the same adversarial images (where it applies). Most effective single "
                 f"row: {_title(s['most_effective'])}. Worst case over: {', '.join(wc['over'])}.\n")

    # Table 3 shaped
    clean_dep = rec(dep_rows["clean"]["defended"])
    parts += ["\n## Table 3 shape: standard vs worst-case robust accuracy\n",
              "| Method | A_std (%) | A_rob (%) | Attack | images |", "|---|---|---|---|---|"]
    for role, title in (("no-defense", "No defense (standard SmallCNN, independent seed)"),
                        ("pgd-at", "PGD adversarial training (same f_a and data)")):
        bl = s["baselines"][role]
        cl, pg = rec(bl["clean"]), rec(bl["pgd"])
        if cl and pg:
            parts.append(f"| {title} | {_pct(cl)} | {_pct(pg)} | PGD-{pg['attack']['steps']} white-box | "
                         f"{pg['n_images']} |")
    strongest_bpda = min(wb["over"], key=lambda k: (rec(dep_rows[k]["defended"]) or {"accuracy": 1.0})["accuracy"])
    parts.append(f"| Ours under BPDA-type attacks | {_pct(clean_dep)} | {100 * wb['accuracy']:.1f} ± "
                 f"{100 * wb['stderr']:.1f} | worst case (strongest: {_title(strongest_bpda)}) | {wb['n_images']} |")
    parts.append(f"| Ours under all attacks | {_pct(clean_dep)} | {100 * wc['accuracy']:.1f} ± "
                 f"{100 * wc['stderr']:.1f} | worst case (strongest: {_title(s['most_effective'])}) "
                 f"| {wc['n_images']} |")

    figures = []
    # Fig. 5
    parts += ["\n## Fig. 5 shape: surrogate BPDA against N (steps of g the defender runs and the attacker unrolls)\n",
              "| N | defense | clean (%) | " + " | ".join(f"BPDA {k} (%)" for k in cfg["surrogates"]) + " | images |",
              "|---|---|---|" + "---|" * len(cfg["surrogates"]) + "---|"]
    curves: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for p in s["fig5"]:
        cells = [rec(p["clean"])] + [rec(p[f"bpda-{k}"]) for k in cfg["surrogates"]]
        parts.append(f"| {p['steps']} | {p['label']} | " + " | ".join(_pct(x) for x in cells) + f" | {n} |")
        for title, r in zip(["clean"] + [f"BPDA {k}" for k in cfg["surrogates"]], cells):
            if r is not None:
                xs, ys, es = curves.setdefault(title, ([], [], []))
                xs.append(p["steps"])
                ys.append(r["accuracy"])
                es.append(r["stderr"])
    attack0 = rec(s["fig5"][0][f"bpda-{cfg['surrogates'][0]}"]) if s["fig5"] else None
    if curves:
        figures.append(_figure(out / "fig5_accuracy_vs_steps.png", [(k, *v) for k, v in curves.items()],
                               "N (LL-PGD steps of g, all unrolled by the attacker)",
                               f"BPDA with smooth sgn + Eq. 5; PGD-{cfg['attack_steps']} eps={cfg['eps']:g}, n={n}"))
    if attack0 is not None:
        parts.append(f"\nPGD-{attack0['attack']['steps']} (step {attack0['attack']['alpha']:.4g}) through "
                     f"BPDA(g, surrogate) at temperature {cfg['surrogate_temperature']:g}; random start of g "
                     f"{'on (seeded, replayed by the surrogate)' if cfg['sweep_random_start'] else 'off (paper)'}.\n")

    # Fig. 7
    deltas = sorted({p["delta"] for p in s["fig7"]})
    draws = sorted({p["draws"] for p in s["fig7"]})
    parts += ["\n## Fig. 7 shape: BPDA-I + EOT against the number of samples\n",
              "| EOT samples | " + " | ".join(f"Delta = {dd:g} (%)" for dd in deltas) + " | images |",
              "|---|" + "---|" * len(deltas) + "---|"]
    by = {(p["delta"], p["draws"]): rec(p["key"]) for p in s["fig7"]}
    for r in draws:
        parts.append(f"| {r} | " + " | ".join(_pct(by.get((dd, r))) for dd in deltas) + f" | {n} |")
    curves7 = []
    for dd in deltas:
        pts = [(r, x) for r in draws if (x := by.get((dd, r))) is not None]
        curves7.append((f"Delta = {dd:g}", [r for r, _ in pts], [x["accuracy"] for _, x in pts],
                        [x["stderr"] for _, x in pts]))
    if curves7:
        figures.append(_figure(out / "fig7_accuracy_vs_eot_samples.png", curves7, "EOT samples of g per gradient",
                               f"PGD-{cfg['attack_steps']} eps={cfg['eps']:g} through EOT(BPDA-I), n={n}",
                               logx=True))

    # Fig. 6
    parts += ["\n## Fig. 6 shape: accuracy against Delta (one f_a trained per Delta)\n",
              "| Delta | f_a | clean (%) | BPDA-I + EOT (%) | WT (%) | f_a training (s) | images |",
              "|---|---|---|---|---|---|---|"]
    c6: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for p in s["fig6"]:
        cells6 = {"clean": rec(p["clean"]), f"BPDA-I + EOT-{p['eot_draws']}": rec(p["bpda-eot"]),
                  "WT": rec(p["white-box-transfer"])}
        secs = p.get("training_seconds")
        parts.append(f"| {p['delta']:g} | {p['model']} | " + " | ".join(_pct(x) for x in cells6.values())
                     + f" | {'-' if secs is None else f'{secs:.0f}'} | {n} |")
        for title, r in cells6.items():
            if r is not None:
                xs, ys, es = c6.setdefault(title, ([], [], []))
                xs.append(p["delta"])
                ys.append(r["accuracy"])
                es.append(r["stderr"])
    if c6:
        figures.append(_figure(out / "fig6_accuracy_vs_delta.png", [(k, *v) for k, v in c6.items()],
                               "Delta (radius of g)", f"eps={cfg['eps']:g}, n={n}"))

    # reparameterization
    im = {m["metric"]: m for m in s["imitator"]["metrics"]}
    if im:
        parts += ["\n## Reparameterization: how well h imitates g\n",
                  "| MSE(h(x), g(x)) on | value | images |", "|---|---|---|"]
        for k, title in (("imitation_mse_train_images", "training images"),
                         ("imitation_mse_heldout_images", "held-out test images"),
                         ("g_draw_to_draw_mse", "(reference) two draws of g against each other")):
            if k in im:
                parts.append(f"| {title} | {im[k]['value']:.5f} | {im[k]['n_images']} |")
    parts.append("\n## Figures\n")
    parts += [f"![{f.stem}]({f.name})\n" for f in figures]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def _recipe_text(recipe: dict[str, Any]) -> str:
    text = f"{recipe.get('epochs')} epoch(s), {recipe.get('train_subset') or 'all'} images"
    if recipe.get("adversarial"):
        text += f", PGD-{recipe.get('steps')} eps {recipe.get('eps')} step {recipe.get('alpha')}"
    return text


__all__ = ["FbVariant", "XiaoConfig", "card_matches", "run_xiao_experiment", "transformation_statistics",
           "write_xiao_report"]
