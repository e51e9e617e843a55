"""Inpainting with a context encoder (Pathak et al. 2016) as a self-supervised task.

lawhon ("multi-task SSL reversal", Sec. 3.2.2) repairs an image by also minimizing the
reconstruction loss of a context encoder F:

    L_i(x) = || M ⊙ (x - F((1 - M) ⊙ x)) ||_2^2                                (L_i)

with M the binary mask of dropped pixels (1 = dropped). lawhon drops the image's center
(Pathak et al.'s central region: half the side, a quarter of the area) and proposes, as
future work, random missing patches "so that contexts on all parts of the image are well
represented". Both are here: ``mask="center"`` (deterministic) and ``mask="random"``
(``n_rects`` axis-aligned rectangles whose sides and positions are read from the uniform
numbers ``u``, so the caller seeds them per image; the union is the mask). The network is
an encoder-decoder of the image alone: like lawhon (who stresses that the tasks run on
different architectures) it does not read the classifier's features, so ``backbone`` is
unused.

``InpaintingNet`` follows the context encoder's shape: a strided-conv encoder, Pathak's
channel-wise fully connected bottleneck (one dense map per channel over the spatial
positions, then a stride-1 1x1 conv that mixes channels), and a transposed-conv decoder.

Deviations from the papers, on purpose:
- Size: 3 encoder convs (3x3, stride 2) and 3 transposed convs sized for 28x28 / 32x32
  (any size the net was built for, any channel count), not AlexNet; no BatchNorm (a
  briefly trained small net, and eval-mode purity), no dropout in the bottleneck.
- The net predicts the whole image and the loss reads only the masked pixels; Pathak et
  al. output only the (fixed) central patch, which cannot serve random masks.
- The mask is fed to the net as one extra input channel and dropped pixels are zero, as in
  lawhon's formula ``(1 - M) ⊙ x`` (Pathak fills them with the dataset mean). Without
  the mask channel a random hole is indistinguishable from a dark region.
- Only the L2 loss (lawhon also drops Pathak's adversarial loss); no 10x weight on a
  border overlap; and the loss is the *mean* squared error over the masked pixels and
  channels, not the sum: a constant factor for center masks (sign steps do not see it,
  but it sets the scale that the task weights alpha_k multiply), and comparable across
  random masks of different areas.

Example:
    >>> task = InpaintingTask(InpaintingNet(in_channels=1, input_size=28), mask="random")
    >>> u = torch.rand(len(images), *task.numbers_per_image)
    >>> loss = task.per_image_loss(classifier, images, u, None)       # (B,)
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from advrepair.errors import InputError
from advrepair.models.base import Classifier
from advrepair.models.registry import register_architecture
from advrepair.ssl.task import SelfSupervisedTask
from advrepair.validation import check_fraction, check_images, check_int_at_least

MASK_MODES = ("center", "random")
#: uniforms one random rectangle consumes: height, width, top, left
N_RECT_NUMBERS = 4


def _down(n: int) -> int:
    """Output side of a 3x3 stride-2 conv with padding 1."""
    return (n + 1) // 2


class ChannelwiseFC(nn.Module):
    """Pathak et al.'s channel-wise fully connected layer: (B, C, h, w) -> (B, C, h, w).

    Each channel has its own dense map over the h*w positions (no cross-channel weights),
    so it costs C * (h*w)^2 parameters instead of (C*h*w)^2.
    """

    def __init__(self, channels: int, side: int) -> None:
        super().__init__()
        n = side * side
        bound = 1 / math.sqrt(n)
        self.weight = nn.Parameter(torch.empty(channels, n, n).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels, n).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = torch.einsum("bcs,cst->bct", x.reshape(b, c, h * w), self.weight) + self.bias
        return y.view(b, c, h, w)


class InpaintingNet(nn.Module):
    """A small context encoder: (masked image, mask) -> the whole image predicted.

    Args:
        in_channels: image channels C (any count).
        input_size: side S of the square images it is built for (28, 32, ...).
        width: w; the encoder has w, 2w, 4w channels.

    Shapes: ``forward(masked, mask)``: (B, C, S, S) and (B, 1, S, S) -> (B, C, S, S) in
    (0, 1). ``arch`` and ``config`` let ``save_checkpoint`` / ``build_model`` rebuild it.

    Example:
        >>> net = InpaintingNet(in_channels=3, input_size=32)
        >>> net(torch.rand(2, 3, 32, 32), torch.zeros(2, 1, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    arch = "inpainting-net"

    def __init__(self, in_channels: int = 1, input_size: int = 28, width: int = 16) -> None:
        super().__init__()
        in_channels = check_int_at_least(in_channels, "in_channels", 1)
        input_size = check_int_at_least(input_size, "input_size", 8)
        width = check_int_at_least(width, "width", 1)
        self.config: dict[str, Any] = dict(in_channels=in_channels, input_size=input_size, width=width)
        self.in_channels, self.input_size = in_channels, input_size
        s1 = _down(input_size)
        s2 = _down(s1)
        s3 = _down(s2)
        self._sizes = [(s2, s2), (s1, s1), (input_size, input_size)]  # decoder output sizes
        act = nn.LeakyReLU(0.2)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels + 1, width, 3, stride=2, padding=1), act,
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), act,
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), act,
        )
        self.bottleneck = nn.Sequential(ChannelwiseFC(4 * width, s3), nn.ReLU(),
                                        nn.Conv2d(4 * width, 4 * width, 1), nn.ReLU())
        self.up = nn.ModuleList([
            nn.ConvTranspose2d(4 * width, 2 * width, 3, stride=2, padding=1),
            nn.ConvTranspose2d(2 * width, width, 3, stride=2, padding=1),
            nn.ConvTranspose2d(width, in_channels, 3, stride=2, padding=1),
        ])

    def forward(self, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if masked.dim() != 4 or tuple(masked.shape[1:]) != (self.in_channels, self.input_size, self.input_size):
            raise InputError(
                f"InpaintingNet was built for ({self.in_channels}, {self.input_size}, {self.input_size}) images, "
                f"got shape {tuple(masked.shape)}")
        h = self.bottleneck(self.encoder(torch.cat([masked, mask.to(masked.dtype)], dim=1)))
        for i, (layer, size) in enumerate(zip(self.up, self._sizes)):
            h = layer(h, output_size=list(size))
            h = torch.relu(h) if i < len(self.up) - 1 else torch.sigmoid(h)
        return h


register_architecture(InpaintingNet.arch, InpaintingNet)


def center_mask(batch: int, height: int, width: int, frac: float = 0.5,
                device: torch.device | None = None) -> torch.Tensor:
    """(B, 1, H, W) mask, 1 on the central ``round(frac*H) x round(frac*W)`` rectangle."""
    batch = check_int_at_least(batch, "batch", 1)
    height = check_int_at_least(height, "height", 1)
    width = check_int_at_least(width, "width", 1)
    frac = check_fraction(frac, "frac (the masked side's fraction of the image side)")
    mh, mw = max(1, round(frac * height)), max(1, round(frac * width))
    top, left = (height - mh) // 2, (width - mw) // 2
    m = torch.zeros(batch, 1, height, width, device=device)
    m[:, :, top:top + mh, left:left + mw] = 1.0
    return m


def random_rect_mask(u: torch.Tensor, height: int, width: int,
                     rect_frac: tuple[float, float] = (0.2, 0.35)) -> torch.Tensor:
    """Union of axis-aligned rectangles placed by uniform numbers.

    Args:
        u: (B, R, 4) uniforms in [0, 1): per rectangle its height and width fractions
            (``lo + u * (hi - lo)`` of the image side, ``rect_frac = (lo, hi)``) and its
            top and left positions (uniform over the positions that keep it inside).
    Returns:
        (B, 1, H, W) float mask, 1 = dropped. Row ``i`` depends only on ``u[i]``.
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3 or u.shape[2] != N_RECT_NUMBERS:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise InputError(f"random masks need u of shape (B, R, {N_RECT_NUMBERS}), got {got}")
    height = check_int_at_least(height, "height", 1)
    width = check_int_at_least(width, "width", 1)
    try:
        lo, hi = (float(v) for v in rect_frac)
    except (TypeError, ValueError):
        raise InputError(f"rect_frac must be a pair (lo, hi), got {rect_frac!r}") from None
    if not 0 < lo <= hi <= 1:
        raise InputError(f"rect_frac must satisfy 0 < lo <= hi <= 1, got {rect_frac!r}")
    u = u.detach().to(torch.float64)
    mh = (torch.round((lo + u[..., 0] * (hi - lo)) * height)).clamp(1, height)          # (B, R)
    mw = (torch.round((lo + u[..., 1] * (hi - lo)) * width)).clamp(1, width)
    top = torch.minimum(torch.floor(u[..., 2] * (height - mh + 1)), height - mh)
    left = torch.minimum(torch.floor(u[..., 3] * (width - mw + 1)), width - mw)
    rows = torch.arange(height, device=u.device, dtype=u.dtype).view(1, 1, height, 1)
    cols = torch.arange(width, device=u.device, dtype=u.dtype).view(1, 1, 1, width)
    inside_r = (rows >= top[..., None, None]) & (rows < (top + mh)[..., None, None])
    inside_c = (cols >= left[..., None, None]) & (cols < (left + mw)[..., None, None])
    return (inside_r & inside_c).any(dim=1, keepdim=True).float()


class InpaintingTask(SelfSupervisedTask):
    """Inpainting, lawhon's L_i with a context encoder (Pathak et al.).

    Args:
        head: the ``InpaintingNet`` (called ``head`` like every task's trained module).
        mask: ``"center"`` (the paper's) or ``"random"`` (its proposed random patches).
        mask_frac: side of the center square as a fraction of the image side (Pathak: 0.5).
        rect_frac: (lo, hi) range of a random rectangle's side fractions.
        n_rects: rectangles per random mask (Pathak's random blocks: several, together
            up to about a quarter of the image; defaults 2 x (0.2-0.35)).

    Shapes: ``per_image_loss``: (B, C, S, S), u (B, *numbers_per_image) -> (B,);
    ``numbers_per_image`` is (0,) for center masks and (n_rects, 4) for random ones.
    ``backbone`` is unused (the net reads the image).

    Example:
        >>> task = InpaintingTask(InpaintingNet(1, 28), mask="center")
        >>> train_ssl_task(task, classifier, data, SSLRecipe(epochs=3))
        >>> defense = ReverseAttack(classifier, [(contrastive, 1.0), (task, 10.0)], eps_v=0.2)
    """

    name = "inpainting"

    def __init__(self, head: InpaintingNet, mask: str = "center", mask_frac: float = 0.5,
                 rect_frac: tuple[float, float] = (0.2, 0.35), n_rects: int = 2) -> None:
        super().__init__()
        if not isinstance(head, InpaintingNet):
            raise InputError(f"InpaintingTask needs an InpaintingNet, got {type(head).__name__}")
        if mask not in MASK_MODES:
            raise InputError(f"unknown mask mode {mask!r}; expected one of {list(MASK_MODES)}")
        if not isinstance(mask_frac, (int, float)) or not 0 < mask_frac < 1:
            raise InputError(f"mask_frac must lie in (0, 1), got {mask_frac!r}")
        try:
            lo, hi = (float(v) for v in rect_frac)
        except (TypeError, ValueError) as exc:
            raise InputError(f"rect_frac must be a pair (lo, hi), got {rect_frac!r}") from exc
        if not 0 < lo <= hi <= 1:
            raise InputError(f"rect_frac must satisfy 0 < lo <= hi <= 1, got {rect_frac!r}")
        self.head = head
        self.mask_mode = mask
        self.mask_frac = float(mask_frac)
        self.rect_frac = (lo, hi)
        self.n_rects = check_int_at_least(n_rects, "n_rects", 1)

    @property
    def numbers_per_image(self) -> tuple[int, ...]:
        return (0,) if self.mask_mode == "center" else (self.n_rects, N_RECT_NUMBERS)

    @property
    def training_numbers_per_image(self) -> tuple[int, ...]:
        return self.numbers_per_image

    def make_mask(self, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), u (B, *numbers_per_image) -> (B, 1, H, W) mask, 1 = dropped."""
        b, _, h, w = images.shape
        if tuple(u.shape) != (b, *self.numbers_per_image):
            raise InputError(f"{self.mask_mode} inpainting needs u of shape {(b, *self.numbers_per_image)}, "
                             f"got {tuple(u.shape)}")
        if self.mask_mode == "center":
            return center_mask(b, h, w, self.mask_frac, images.device).to(images.dtype)
        return random_rect_mask(u.to(images.device), h, w, self.rect_frac).to(images.dtype)

    def reconstruct(self, images: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The net's prediction from the masked images, and the mask: (B, C, H, W), (B, 1, H, W)."""
        mask = self.make_mask(images, u)
        return self.head((1 - mask) * images, mask), mask

    def per_image_loss(self, backbone: Classifier, images: torch.Tensor, u: torch.Tensor,
                       context: Any) -> torch.Tensor:
        check_images(images)
        pred, mask = self.reconstruct(images, u)
        err = (mask * (images - pred)).pow(2).flatten(1).sum(1)
        return err / (mask.flatten(1).sum(1) * images.shape[1])

    def training_loss(self, backbone: Classifier, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.per_image_loss(backbone, images, u, None).mean()

    def config(self) -> dict[str, Any]:
        return {"mask": self.mask_mode, "mask_frac": self.mask_frac, "rect_frac": list(self.rect_frac),
                "n_rects": self.n_rects}
