"""TI-FGSM (Dong et al. 2019, "Evading Defenses to Transferable Adversarial Examples by
Translation-Invariant Attacks"), combinable with input diversity and momentum (DIM-TI)."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from advrepair.attacks.difgsm import DIFGSM
from advrepair.engine import MomentumSignStep, StepRule
from advrepair.errors import InputError
from advrepair.validation import check_positive
from advrepair.attacks.registry import register_attack

KERNELS = ("gaussian", "linear", "uniform")


def smoothing_kernel(kernel_name: str = "gaussian", len_kernel: int = 15, nsig: float = 3.0) -> torch.Tensor:
    """A (len_kernel, len_kernel) float32 kernel summing to 1.

    ``gaussian``: the standard normal density sampled at ``len_kernel`` points spanning
    ``[-nsig, nsig]`` per axis; ``linear``: a tent falling to ``2/(len_kernel+1)`` at the
    edges; ``uniform``: a box.
    """
    if kernel_name not in KERNELS:
        raise InputError(f"unknown kernel_name {kernel_name!r}; expected one of {list(KERNELS)}")
    n = len_kernel
    # float64 then one rounding to float32, so the kernel does not depend on summation order
    if kernel_name == "gaussian":
        t = torch.linspace(-nsig, nsig, n, dtype=torch.float64)
        profile = torch.exp(-0.5 * t * t)  # the density's constant cancels in the normalization
    elif kernel_name == "linear":
        t = torch.linspace((1 - n) / 2, (n - 1) / 2, n, dtype=torch.float64)
        profile = 1 - t.abs() * 2 / (n + 1)
    else:
        profile = torch.ones(n, dtype=torch.float64)
    kernel = torch.outer(profile, profile)
    return (kernel / kernel.sum()).to(torch.float32)


class SmoothedGradientStep:
    """Step rule that convolves the gradient with a kernel, per channel, before ``inner``.

    Averaging the gradient over translations is the translation-invariant attack's
    approximation of attacking an ensemble of translated images.
    """

    def __init__(self, kernel: torch.Tensor, inner: StepRule) -> None:
        if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
            raise InputError(f"the smoothing kernel must be square with an odd side, got {tuple(kernel.shape)}")
        self.kernel = kernel
        self.inner = inner

    def reset(self) -> None:
        self.inner.reset()

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        channels, side = grad.shape[1], self.kernel.shape[0]
        weight = self.kernel.to(grad.device, grad.dtype).expand(channels, 1, side, side)
        smoothed = F.conv2d(grad, weight, padding=side // 2, groups=channels)
        return self.inner.direction(smoothed)


@register_attack("tifgsm")
class TIFGSM(DIFGSM):
    """Iterative FGSM whose gradient is smoothed by a kernel before each step, L-inf budget;
    with ``diversity_prob > 0`` the gradient is taken through DI-FGSM's random resize-and-pad
    and with ``decay > 0`` MI-FGSM's momentum is added (DIM-TI).

    Smoothing acts on every channel separately, so any channel count works (torchattacks
    hard-codes 3). ``len_kernel`` must be odd so the kernel has a center pixel and the
    smoothed gradient is not shifted. Random draws are per-image seeded as in ``DIFGSM``.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = TIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=1.0)(images, labels)
    """

    name = "tifgsm"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 alpha: float = 2 / 255, steps: int = 10, decay: float = 0.0,
                 kernel_name: str = "gaussian", len_kernel: int = 15, nsig: float = 3.0,
                 resize_rate: float = 0.9, diversity_prob: float = 0.5, random_start: bool = False,
                 seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, decay=decay, resize_rate=resize_rate,
                         diversity_prob=diversity_prob, random_start=random_start, seed=seed)
        if isinstance(len_kernel, bool) or not isinstance(len_kernel, (int, float)) \
                or int(len_kernel) != len_kernel or len_kernel < 1 or int(len_kernel) % 2 == 0:
            raise InputError(f"len_kernel must be an odd integer >= 1 (the kernel needs a center pixel), "
                             f"got {len_kernel!r}")
        self.kernel_name = kernel_name
        self.len_kernel = int(len_kernel)
        self.nsig = check_positive(nsig, "nsig")
        self.kernel = smoothing_kernel(kernel_name, self.len_kernel, self.nsig)

    def _step_rule(self) -> StepRule:
        return SmoothedGradientStep(self.kernel, MomentumSignStep(self.decay))

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(kernel_name=self.kernel_name, len_kernel=self.len_kernel, nsig=self.nsig)
        return p
