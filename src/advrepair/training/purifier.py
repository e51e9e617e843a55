"""Self-supervised adversarial training of the NRP purifier (naseer2020, Algorithm 2, Eq. 5-8).

Per mini-batch of clean images ``x`` (labels are never used):

1. random crops of ``x`` (pad-and-crop, or the paper's smaller random crop);
2. ``x' = SSP(x)``: Algorithm 1 on the frozen feature extractor F at ``layer`` (our
   :class:`advrepair.attacks.ssp.SSP`), maximizing ``Delta(x, x') = d(F(x), F(x'))``;
3. purifier step, minimizing Eq. 8
   ``L_P = alpha * L_adv + gamma * L_img + lam * L_feat`` with
   ``L_feat = d(F(x), F(P(x')))`` (Eq. 5, d = mean absolute error as in the paper),
   ``L_img = ||P(x') - x||_2`` (Eq. 6) and the relativistic average GAN loss ``L_adv``
   (Eq. 7);
4. critic step: C learns to tell ``x`` from ``P(x')`` with the relativistic average loss.

Paper settings (Sec. 4.1) are the recipe's defaults where they transfer: Adam with
learning rate 1e-4 for both networks, batch 16, alpha = 5e-3, gamma = 1e-2, lambda = 1.

Deviations and choices the paper leaves open:
- L_adv: Eq. 7 writes only ``-log sigmoid(C(P(x')) - C(x))``. We use the full
  relativistic *average* loss of Jolicoeur-Martineau [20] that the text names, symmetric
  in real and purified images: for P,
  ``1/2 [ -log s(C(P(x')) - mean C(x)) - log(1 - s(C(x) - mean C(P(x')))) ]``,
  and for C the same with real and purified swapped. Means are over the batch.
- L_img: the per-image L2 norm (not squared, as Eq. 6 writes it), averaged over the batch.
- The SSP distance defaults to the same MAE as L_feat (Eq. 5 says Delta is computed with
  MAE); our SSP attack's own default is MSE. The SSP random start is seeded per image
  content and epoch.
- Crops: the paper crops 128x128 from 480x480 images. Our images are 28x28 / 32x32, so the
  default is a pad-and-crop (zero padding ``crop_padding`` = 2, crop back to the image
  size); ``crop_size`` smaller than the image gives the paper's plain random crop.
- The paper does not state the SSP steps used in training; defaults eps = 16/255,
  step 2/255, 10 steps (our SSP's defaults). Constant learning rates, Adam's default betas.
- The feature extractor is frozen (eval mode, no parameter gradients), as in the paper;
  the critic is in train mode (batch norm on batch statistics) during training.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from advrepair.runtime import resolve_device
from advrepair.attacks.ssp import DISTANCES, SSP, LayerFeatures
from advrepair.data import ImageDataset
from advrepair.errors import InputError
from advrepair.models.purifier import Critic, Purifier
from advrepair.seeding import seed_everything
from advrepair.validation import check_images, check_int_at_least, check_positive


@dataclass(frozen=True)
class PurifierRecipe:
    """Everything that reproduces a purifier (recorded in its card).

    Attributes:
        epochs, batch_size, lr (purifier), critic_lr, train_subset: the loop.
        ssp_eps, ssp_alpha, ssp_steps: SSP budget (L-inf), step kappa and iterations T.
        layer: the feature extractor's layer (a name from ``named_modules()``; ``None``: its
            ``features`` method, else its output) used by SSP and by L_feat.
        distance: d of Eq. 1 / Eq. 5 (``"mae"``, ``"mse"`` or ``"cosine"``).
        crop_size: side of the random crops (``None``: the image size).
        crop_padding: zero padding added on each side before cropping.
        alpha, gamma, lam: the weights of L_adv, L_img and L_feat in Eq. 8.
        seed: seeds the batch order, the crops, the initial weights' global RNG and SSP.

    Example:
        >>> recipe = PurifierRecipe(epochs=2, batch_size=32, lr=1e-3, layer="body.3")
    """

    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-4
    critic_lr: float = 1e-4
    ssp_eps: float = 16 / 255
    ssp_alpha: float = 2 / 255
    ssp_steps: int = 10
    layer: str | None = None
    distance: str = "mae"
    crop_size: int | None = None
    crop_padding: int = 2
    alpha: float = 5e-3
    gamma: float = 1e-2
    lam: float = 1.0
    train_subset: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_int_at_least(self.epochs, "epochs", 1)
        check_int_at_least(self.batch_size, "batch_size", 2)  # the relativistic loss needs batch means
        check_positive(self.lr, "lr")
        check_positive(self.critic_lr, "critic_lr")
        check_positive(self.ssp_eps, "ssp_eps", allow_zero=True)
        check_positive(self.ssp_alpha, "ssp_alpha")
        check_int_at_least(self.ssp_steps, "ssp_steps", 0)
        if self.distance not in DISTANCES:
            raise InputError(f"unknown distance {self.distance!r}; expected one of {sorted(DISTANCES)}")
        if self.crop_size is not None:
            check_int_at_least(self.crop_size, "crop_size", 1)
        check_int_at_least(self.crop_padding, "crop_padding", 0)
        for name in ("alpha", "gamma", "lam"):
            check_positive(getattr(self, name), name, allow_zero=True)
        if self.train_subset is not None:
            check_int_at_least(self.train_subset, "train_subset", 1)
        check_int_at_least(self.seed, "seed", 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def critic(self, in_channels: int, image_size: int, **options: Any) -> Critic:
        """Algorithm 2's critic C for this recipe: it judges crops, so it is sized for
        ``crop_size`` (the image size without one)."""
        return Critic(in_channels=in_channels, input_size=self.crop_size or image_size, **options)

    def card_dict(self, critic: Critic) -> dict[str, Any]:
        """What a purifier's card records as its recipe: these fields and the critic's config."""
        return {**self.to_dict(), "critic": critic.config}


def random_crops(images: torch.Tensor, size: int, padding: int, gen: torch.Generator) -> torch.Tensor:
    """One random ``size`` x ``size`` crop per image of the zero-padded images.

    Shapes: (B, C, H, W) -> (B, C, size, size); offsets come from ``gen`` (CPU).
    """
    x = F.pad(images, (padding,) * 4) if padding else images
    h, w = x.shape[-2:]
    if size > h or size > w:
        raise InputError(f"crop_size {size} exceeds the padded image size {h}x{w}")
    if size == h and size == w:
        return x
    top = torch.randint(0, h - size + 1, (x.shape[0],), generator=gen).tolist()
    left = torch.randint(0, w - size + 1, (x.shape[0],), generator=gen).tolist()
    return torch.stack([x[i, :, t:t + size, lf:lf + size] for i, (t, lf) in enumerate(zip(top, left))])


def pixel_loss(purified: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Eq. 6 per image: ``||P(x') - x||_2``, (B, C, H, W) x2 -> (B,)."""
    return (purified - clean).flatten(1).norm(dim=1)


def relativistic_loss(real: torch.Tensor, fake: torch.Tensor, for_critic: bool) -> torch.Tensor:
    """Relativistic average GAN loss (Jolicoeur-Martineau 2018; naseer2020 Eq. 7), a scalar.

    ``real``, ``fake``: (B,) critic logits of clean and purified images. The critic wants
    real images to look more real than the average purified one and vice versa; the
    purifier wants the opposite. ``-log s(z) = softplus(-z)``, ``-log(1 - s(z)) = softplus(z)``.
    """
    real_rel, fake_rel = real - fake.mean(), fake - real.mean()
    if for_critic:
        return 0.5 * (F.softplus(-real_rel).mean() + F.softplus(fake_rel).mean())
    return 0.5 * (F.softplus(real_rel).mean() + F.softplus(-fake_rel).mean())


def _image_source(data: ImageDataset | torch.Tensor) -> tuple[int, tuple[int, int, int],
                                                               Callable[[torch.Tensor], torch.Tensor]]:
    """(number of images, (C, H, W), fetch(indices) -> float images); datasets stay uint8 until fetched."""
    if isinstance(data, ImageDataset):
        return len(data), data.image_shape, lambda idx: data.tensors(idx)[0]
    if isinstance(data, torch.Tensor):
        check_images(data, "data")
        c, h, w = data.shape[1:]
        return int(data.shape[0]), (int(c), int(h), int(w)), lambda idx: data[idx]
    raise InputError(f"data must be an ImageDataset or a float image tensor, got {type(data).__name__}")


def _batches(n: int, batch_size: int, gen: torch.Generator, subset: int | None) -> Iterator[torch.Tensor]:
    m = n if subset is None else min(subset, n)
    order = torch.randperm(n, generator=gen)[:m]
    for start in range(0, m, batch_size):
        idx = order[start:start + batch_size]
        if idx.numel() >= 2:  # the relativistic loss needs batch means of at least two images
            yield idx


def _resolve(arg: Any, recipe_value: Any, name: str, default: Any) -> Any:
    if arg is None:
        return recipe_value
    if recipe_value != default and arg != recipe_value:
        raise InputError(f"{name}={arg!r} conflicts with recipe.{name}={recipe_value!r}; "
                         f"set it in one place (dataclasses.replace(recipe, {name}=...))")
    return arg


def train_purifier(purifier: Purifier, critic: Critic, feature_model: nn.Module, layer: str | None,
                   data: ImageDataset | torch.Tensor, recipe: PurifierRecipe, *, seed: int | None = None,
                   device: str | torch.device = "cpu", progress: bool = True) -> list[dict[str, float]]:
    """Train ``purifier`` and ``critic`` in place by Algorithm 2; returns per-epoch history.

    Args:
        purifier: P, images -> images.
        critic: C, sized for the crops (``critic.input_size == crop size``).
        feature_model: F, frozen; any module (a classifier with normalization inside).
        layer: F's layer for SSP and L_feat; ``None`` takes ``recipe.layer``. A value that
            conflicts with a non-default ``recipe.layer`` raises InputError.
        data: an ImageDataset (labels unused) or float images (N, C, H, W) in [0, 1].
        recipe: the hyper-parameters (Eq. 8 weights, SSP, crops, optimizer).
        seed: ``None`` takes ``recipe.seed``; same conflict rule as ``layer``.
        progress: tqdm bars and one line per epoch.

    Returns:
        One dict per epoch with the image-weighted means of ``pixel`` (L_img), ``feature``
        (L_feat), ``adv`` (L_adv), ``total`` (Eq. 8), ``critic`` (C's loss), and the same
        distances without purification, ``ssp_pixel = ||x' - x||_2`` and
        ``ssp_feature = d(F(x), F(x'))``, the identity's baseline.

    Example:
        >>> p, c = Purifier(1), Critic(1, input_size=28)
        >>> history = train_purifier(p, c, cnn, "body.3", train_set, PurifierRecipe(epochs=1))
    """
    if not isinstance(recipe, PurifierRecipe):
        raise InputError(f"recipe must be a PurifierRecipe, got {type(recipe).__name__}")
    if not isinstance(purifier, Purifier) or not isinstance(critic, Critic):
        raise InputError("train_purifier needs a models.purifier.Purifier and a models.purifier.Critic")
    layer = _resolve(layer, recipe.layer, "layer", None)
    seed = _resolve(seed, recipe.seed, "seed", 0)
    n_images, (c, h, w), fetch = _image_source(data)
    if c != purifier.in_channels or c != critic.in_channels:
        raise InputError(f"the data have {c} channels, the purifier {purifier.in_channels} "
                         f"and the critic {critic.in_channels}")
    crop = recipe.crop_size if recipe.crop_size is not None else min(h, w)
    if crop > min(h, w) + 2 * recipe.crop_padding:
        raise InputError(f"crop_size {crop} exceeds the padded image size")
    if critic.input_size != crop:
        raise InputError(f"the critic judges {critic.input_size}x{critic.input_size} images but the crops are "
                         f"{crop}x{crop}; build Critic(input_size={crop})")
    if n_images < 2:
        raise InputError("train_purifier needs at least 2 images (the relativistic loss uses batch means)")

    device = resolve_device(device)
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    purifier.to(device)
    critic.to(device)
    feature_model.to(device).eval()
    features = LayerFeatures(feature_model, layer)  # raises InputError for an unknown layer
    frozen = [(p, p.requires_grad) for p in feature_model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    distance = DISTANCES[recipe.distance]
    opt_p = torch.optim.Adam(purifier.parameters(), lr=recipe.lr)
    opt_c = torch.optim.Adam(critic.parameters(), lr=recipe.critic_lr)
    n = n_images if recipe.train_subset is None else min(recipe.train_subset, n_images)
    per_epoch = math.ceil(n / recipe.batch_size)
    history: list[dict[str, float]] = []
    try:
        for epoch in range(recipe.epochs):
            attack = SSP(feature_model, eps=recipe.ssp_eps, alpha=recipe.ssp_alpha, steps=recipe.ssp_steps,
                         layer=layer, distance=recipe.distance, seed=seed * 1000 + epoch)
            sums = dict.fromkeys(("pixel", "feature", "adv", "total", "critic", "ssp_pixel", "ssp_feature"), 0.0)
            count = 0
            bar = tqdm(_batches(n_images, recipe.batch_size, gen, recipe.train_subset), total=per_epoch,
                       desc=f"nrp epoch {epoch + 1}/{recipe.epochs}", disable=not progress, leave=False)
            for idx in bar:
                x = random_crops(fetch(idx), crop, recipe.crop_padding, gen).to(device)
                x_adv = attack(x, None)  # Algorithm 2 line 3 (Algorithm 1)
                with torch.no_grad():
                    clean_feats = features(x)
                    ssp_feature = distance(features(x_adv), clean_feats)

                # lines 4-5: purifier step on Eq. 8
                purifier.train()
                critic.train()
                for p in critic.parameters():
                    p.requires_grad_(False)
                purified = purifier(x_adv)
                l_feat = distance(features(purified), clean_feats).mean()
                l_img = pixel_loss(purified, x).mean()
                with torch.no_grad():
                    real_logits = critic(x)
                l_adv = relativistic_loss(real_logits, critic(purified), for_critic=False)
                total = recipe.alpha * l_adv + recipe.gamma * l_img + recipe.lam * l_feat
                opt_p.zero_grad(set_to_none=True)
                total.backward()
                opt_p.step()
                for p in critic.parameters():
                    p.requires_grad_(True)

                # line 6: critic step, real x against purified P(x')
                l_critic = relativistic_loss(critic(x), critic(purified.detach()), for_critic=True)
                opt_c.zero_grad(set_to_none=True)
                l_critic.backward()
                opt_c.step()

                b = x.shape[0]
                count += b
                for key, value in (("pixel", l_img), ("feature", l_feat), ("adv", l_adv), ("total", total),
                                   ("critic", l_critic)):
                    sums[key] += float(value.detach()) * b
                sums["ssp_pixel"] += float(pixel_loss(x_adv, x).sum())
                sums["ssp_feature"] += float(ssp_feature.sum())
                bar.set_postfix(feat=f"{sums['feature'] / count:.4f}", pix=f"{sums['pixel'] / count:.3f}")
            row = {"epoch": epoch + 1, **{k: v / max(count, 1) for k, v in sums.items()}}
            history.append(row)
            if progress:
                tqdm.write(f"nrp epoch {epoch + 1}/{recipe.epochs}: feature {row['feature']:.4f} "
                           f"(SSP {row['ssp_feature']:.4f}), pixel {row['pixel']:.3f} (SSP {row['ssp_pixel']:.3f}), "
                           f"adv {row['adv']:.3f}, critic {row['critic']:.3f}")
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    purifier.eval()
    critic.eval()
    return history
