"""The zoo's entries: what each shipped model is and the recipe that makes it.

An entry names its architecture, recipe, seed, data and parent (a head names the classifier
it was trained on), so ``advrepair zoo build NAME`` can retrain it from nothing but this
file and our training code, and compare the result with the shipped card.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from advrepair.errors import InputError
from advrepair.training.purifier import PurifierRecipe
from advrepair.training.recipe import ClassifierRecipe, SSLRecipe


class ZooKind(str, enum.Enum):
    CLASSIFIER = "classifier"
    SSL_HEAD = "ssl head"
    NEGATIVE_BANK = "negative bank"
    PURIFIER = "purifier"


@dataclass(frozen=True)
class ZooEntry:
    """One named model of the zoo.

    Attributes:
        name: the zoo name, also the stem of its files in ``zoo/weights``.
        kind: classifier, self-supervised head, purifier or the contrastive task's negative bank.
        dataset: the data it was trained on (always the dataset's full training split,
            less ``heldout`` images for heads that stop early).
        parent: the zoo name this entry is built on (a head's classifier, a purifier's feature
            network), or None.
        arch / config: the architecture and its constructor arguments (classifiers, purifiers).
        recipe: the training recipe; None for a classifier that is only initialized (xiao2020's
            untrained f_b).
        task: the self-supervised task's name and options (heads).
        eps: the adversarial-training budget (L-inf), None for standard training.
        seed: seeds everything random in the training.
        description: one line for ``zoo list``.
        transform: for a classifier trained on ``g(x)`` (xiao2020's f_a): the settings of the
            adversarial transformation ``g`` built on the parent (its f_b); empty otherwise.
        autoattack: whether the card measures AutoAttack (standard); PGD-20 always.
    """

    name: str
    kind: ZooKind
    dataset: str
    description: str
    parent: str | None = None
    arch: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    recipe: ClassifierRecipe | SSLRecipe | PurifierRecipe | None = None
    task: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    #: training images kept out for early stopping (the last ones of the training split)
    heldout: int = 0
    #: L-inf budget of the robust accuracy measured for the card
    eval_eps: float = 0.1
    transform: dict[str, Any] = field(default_factory=dict)
    autoattack: bool = True

    @property
    def eps(self) -> float | None:
        recipe = self.recipe
        if isinstance(recipe, ClassifierRecipe) and recipe.adversarial:
            return recipe.eps
        return None


FMNIST = "fashion-mnist"
NEGATIVES = "fmnist-negatives-256"

# Measured on this CPU (NOTES.md): 15 epochs of standard training ~10 min, 20 epochs of PGD-7
# adversarial training ~35 min, a contrastive head ~1 min an epoch.
_ENTRIES: tuple[ZooEntry, ...] = (
    ZooEntry(NEGATIVES, ZooKind.NEGATIVE_BANK, FMNIST,
             "256 class-balanced clean training images: the reverse attack's fixed negatives (mao2021)",
             config={"size": 256}),
    ZooEntry("fmnist-cnn-standard", ZooKind.CLASSIFIER, FMNIST,
             "SmallCNN (width 32), standard training, flips and 2-px shifts",
             arch="small-cnn", config={"width": 32, "feature_dim": 128},
             recipe=ClassifierRecipe(epochs=15, lr=1e-3, schedule="cosine", augment=True)),
    ZooEntry("fmnist-cnn-pgd", ZooKind.CLASSIFIER, FMNIST,
             "SmallCNN (width 32), PGD-7 adversarial training at eps 0.1 (Madry et al.), flips and shifts",
             arch="small-cnn", config={"width": 32, "feature_dim": 128},
             recipe=ClassifierRecipe(epochs=20, lr=1e-3, schedule="cosine", augment=True, adversarial=True,
                                     eps=0.1, alpha=0.025, steps=7)),
    # the robust CNN that reaches the zoo's targets (>= 87% clean, >= 75% AutoAttack): twice the
    # width of fmnist-cnn-pgd, which underfits (adversarial training loss still 0.66 after 20 epochs)
    ZooEntry("fmnist-cnn64-pgd", ZooKind.CLASSIFIER, FMNIST,
             "SmallCNN (width 64, 256 features), PGD-5 adversarial training at eps 0.1 (Madry et al.), "
             "no augmentation, channels-last",
             arch="small-cnn", config={"width": 64, "feature_dim": 256},
             recipe=ClassifierRecipe(epochs=20, lr=1e-3, schedule="cosine", adversarial=True, eps=0.1,
                                     alpha=0.03, steps=5, channels_last=True)),
    ZooEntry("fmnist-cnn-standard-contrastive", ZooKind.SSL_HEAD, FMNIST,
             "mao2021 contrastive head on fmnist-cnn-standard's features, early-stopped",
             parent="fmnist-cnn-standard", task={"name": "contrastive", "tau": 0.2, "n_views": 4},
             recipe=SSLRecipe(epochs=30, lr=1e-3, patience=2), heldout=5000),
    ZooEntry("fmnist-cnn-pgd-contrastive", ZooKind.SSL_HEAD, FMNIST,
             "mao2021 contrastive head on fmnist-cnn-pgd's features, early-stopped",
             parent="fmnist-cnn-pgd", task={"name": "contrastive", "tau": 0.2, "n_views": 4},
             recipe=SSLRecipe(epochs=30, lr=1e-3, patience=2), heldout=5000),
    ZooEntry("fmnist-cnn64-pgd-contrastive", ZooKind.SSL_HEAD, FMNIST,
             "mao2021 contrastive head on fmnist-cnn64-pgd's features, early-stopped",
             parent="fmnist-cnn64-pgd", task={"name": "contrastive", "tau": 0.2, "n_views": 4},
             recipe=SSLRecipe(epochs=30, lr=1e-3, patience=2), heldout=5000),
)


# xiao2020 (defense by adversarial transformation). f_b: a small VGG, about 8x cheaper than the
# SmallCNN, in the four states of the paper's Table 1 (untrained, 1 epoch, trained, adversarially
# trained); f_a: the zoo's SmallCNN recipe on g(x) of the adversarially trained f_b (Eq. 1).
_VGG8 = {"width": 8, "stages": 3, "convs_per_stage": 1, "feature_dim": 64}
#: g of the deployed defense: Delta 0.2, N = 13 least-likely sign steps of Delta / 6 (the paper's)
XIAO_TRANSFORM = {"name": "adversarial-transformation", "delta": 0.2, "steps": 13, "seed": 0}


def _vgg_f_b(suffix: str, what: str, recipe: ClassifierRecipe | None) -> ZooEntry:
    return ZooEntry(f"fmnist-vgg8-{suffix}", ZooKind.CLASSIFIER, FMNIST,
                    f"xiao2020 f_b: SmallVGG (width 8), {what}", arch="small-vgg", config=dict(_VGG8),
                    recipe=recipe, autoattack=False)


_ENTRIES += (
    _vgg_f_b("untrained", "untrained (seeded initialization)", None),
    _vgg_f_b("standard-1ep", "standard training, 1 epoch", ClassifierRecipe(epochs=1, augment=True)),
    _vgg_f_b("standard", "standard training, 10 epochs", ClassifierRecipe(epochs=10, augment=True)),
    _vgg_f_b("pgd", "PGD-7 adversarial training at eps 0.1, 10 epochs (g's f_b)",
             ClassifierRecipe(epochs=10, augment=True, adversarial=True, eps=0.1, alpha=0.025, steps=7)),
    ZooEntry("fmnist-cnn-xiao", ZooKind.CLASSIFIER, FMNIST,
             "xiao2020 f_a: SmallCNN (width 32) trained on g(x), g = 13 LL-PGD steps (Delta 0.2) on fmnist-vgg8-pgd",
             parent="fmnist-vgg8-pgd", arch="small-cnn", config={"width": 32, "feature_dim": 128},
             recipe=ClassifierRecipe(epochs=10, lr=1e-3, schedule="cosine", augment=True),
             transform=dict(XIAO_TRANSFORM), autoattack=False),
    # NRP (naseer2020): the transfer source whose features the purifier is trained against
    ZooEntry("fmnist-vgg16-standard", ZooKind.CLASSIFIER, FMNIST,
             "SmallVGG (width 16, two convolutions per stage), standard training, 10 epochs: NRP's source and "
             "feature network", arch="small-vgg", config={"width": 16},
             recipe=ClassifierRecipe(epochs=10, lr=1e-3, schedule="cosine", augment=True)),
    # NRP's purifier, trained by Algorithm 2 against SSP on the VGG's layer body.8 (the settings of
    # the NRP experiment's defaults) on the whole training split, at the paper's learning rate 1e-4:
    # at 1e-3 (the experiment's quick recipe) a whole epoch over-fits P to SSP's perturbations and
    # it wrecks clean images (the VGG's clean accuracy through P fell to 35%; NOTES, session 9)
    ZooEntry("fmnist-nrp-purifier", ZooKind.PURIFIER, FMNIST,
             "naseer2020 NRP purifier (width 16), 1 epoch of Algorithm 2 (lr 1e-4) against SSP (eps 0.1, 10 steps) "
             "on fmnist-vgg16-standard's layer body.8",
             parent="fmnist-vgg16-standard", arch="nrp-purifier", config={"width": 16},
             recipe=PurifierRecipe(epochs=1, batch_size=32, lr=1e-4, critic_lr=1e-4, ssp_eps=0.1, ssp_alpha=0.025,
                                   ssp_steps=10, layer="body.8", distance="mae", seed=0), autoattack=False),
    # an independent standard CNN: the source of transfer attacks (xiao2020 Table 2, NRP)
    ZooEntry("fmnist-cnn-standard-seed1", ZooKind.CLASSIFIER, FMNIST,
             "SmallCNN (width 32), standard training as fmnist-cnn-standard with seed 1: a transfer source",
             arch="small-cnn", config={"width": 32, "feature_dim": 128},
             recipe=ClassifierRecipe(epochs=15, lr=1e-3, schedule="cosine", augment=True), seed=1),
)


def _image_head(parent: str, task: str, mask: str | None = None) -> ZooEntry:
    """lawhon's rotation net or context encoder: a separate network on the image, so the
    same seed gives the same weights under either parent; the parent only decides the
    card's metrics (the loss under PGD on that classifier) and which repair it serves."""
    what = {"rotation": "rotation net (Gidaris et al.)",
            "inpainting": f"context encoder (Pathak et al.), {mask} masks"}[task]
    suffix = task if mask in (None, "center") else f"{task}-{mask}"
    options: dict[str, Any] = {"name": task} if mask is None else {"name": task, "mask": mask}
    return ZooEntry(f"{parent}-{suffix}", ZooKind.SSL_HEAD, FMNIST,
                    f"lawhon {what} for the multi-task repair of {parent}, early-stopped",
                    parent=parent, task=options, recipe=SSLRecipe(epochs=15, lr=1e-3, patience=2), heldout=5000)


_ENTRIES += tuple(_image_head(parent, task, mask)
                  for parent in ("fmnist-cnn-pgd", "fmnist-cnn-standard")
                  for task, mask in (("rotation", None), ("inpainting", "center"), ("inpainting", "random"))
                  if not (parent == "fmnist-cnn-standard" and mask == "random"))

ENTRIES: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}


def entry(name: str) -> ZooEntry:
    """The entry called ``name``; InputError listing the known names otherwise."""
    if not isinstance(name, str) or name not in ENTRIES:
        raise InputError(f"no zoo entry {name!r}; known: {sorted(ENTRIES)} (see `advrepair zoo list`)")
    return ENTRIES[name]


def build_order(names: list[str]) -> list[str]:
    """``names`` with every parent first, each once."""
    order: list[str] = []

    def visit(name: str) -> None:
        e = entry(name)
        for dep in ([e.parent] if e.parent else []) + ([NEGATIVES] if e.task.get("name") == "contrastive" else []):
            visit(dep)
        if name not in order:
            order.append(name)

    for n in names:
        visit(n)
    return order
