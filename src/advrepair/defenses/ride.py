"""RIDE: Robust Iterative Data Estimation, a per-input self-supervised defense (Lin, Pfister &
Zhang, "White-Box Adversarial Defense via Self-Supervised Data Estimation").

For every input image x~ a small fully convolutional network h(.; w) is initialized at random
and fitted to that image alone (the paper's "functional" defender: w = omega(x~)); its output
is the estimate of the clean image. Four variants, as in the paper's ablation (Fig. 4, 5a):

``"dae"``  Algorithm 1 / Eq. 7. Each of K steps draws n pairs (s, z) ~ N(x~, sigma) x N(x~, sigma)
           and takes an Adam step on ``l_h(s, h(z; w))`` (mean squared error). The estimate is
           ``x_est = E_z[h(z; w)]``, z ~ N(x~, sigma), averaged over a mini-batch of samples.
``"ride"`` Algorithm 2 / Eq. 8-9 (the default). T checkpoints; checkpoint t runs the DAE for
           K steps towards x^(t-1) (weights and Adam state carried over), then
           ``x^(t) = alpha * x^(t-1) + (1 - alpha) * x_est^(t)``; returns x_est^(T).
``"dip"``  Deep image prior (Eq. 4): fixed random input z0, target x~, loss ``l_h(x~, h(z0; w))``;
           the estimate is h(z0; w).
``"idip"`` I-DIP: DIP with Algorithm 2's interpolation (the target is x^(t-1)).

"dae" and "dip" run the same T * K steps as their iterative versions with a fixed target
(alpha = 1, which the paper notes turns RIDE into DAE), so the variants compare at equal cost.

Paper defaults (Alg. 2 and the ablation section), all defaults here: sigma = 0.5, alpha = 0.9,
K = 2000 steps per checkpoint, T = 5 checkpoints, mini-batch n = 1, Adam with learning rate 1e-4
and (L2, not decoupled) weight decay 1e-4, MSE loss, dropout 0.5, no batch normalization,
uniform random initialization, a sigmoid after the output layer (images are in [0, 1]).
Networks (Table 3; 3x3 convolutions, padding 1, ReLU after every layer but the last):

- ``"mnist"``   C -> 16 -> 16 (dropout) -> 16 (dropout) -> C            (for 28 x 28 gray images)
- ``"cifar"``   C -> 32 -> 32 (dropout) -> 32 (dropout) -> 32 -> C      (for 32 x 32 color images)
- ``"imagenet"`` C -> 32 x 7 (dropout after layers 4, 5, 6) -> C
- ``"auto"`` (default): "mnist" for one channel, "cifar" otherwise.

Being fully convolutional they run on any image size; only the channel count is taken from the
images.

Batched engine. B images are fitted together, each with its OWN network: the B networks'
weights are stacked along the output-channel axis and run as one grouped convolution
(``groups=B``, channels-last), the loss is the sum of the per-image losses (so each network
receives exactly its own gradient), and Adam runs element-wise on the stacked tensors, which is
per-model Adam. ``RIDE.fit_sequential`` is the reference: one image at a time, an ordinary
``nn.Conv2d`` network and ``torch.optim.Adam``; given the same seed both paths draw the same
random numbers and agree to float rounding after a few steps (tested). Over thousands of steps
rounding differences grow (measured: 3e-4 max per pixel after 1000 steps at lr 1e-4), so the
two are the same algorithm, not bit-identical.

Bit-identical batch independence: oneDNN's grouped-convolution backward chooses its kernel, and
so its summation order, from the group count; a lone image and the same image in a batch of 3
then drift apart (1e-3 per pixel after 1000 steps). The engine therefore always runs a multiple
of ``GROUP_MULTIPLE`` = 8 networks, padding with inert all-zero networks; with that, an image's
estimate was bit-identical for every batch size, position, chunk size and thread count tried
on an AVX2 CPU (tested). The price: a lone image costs as much as eight.

Deviations and choices, each on purpose:

- Randomness per image: each image's initial weights, DIP input z0, DAE noise and dropout masks
  come, in a fixed order, from one generator seeded by the image's content and ``seed``
  (``advrepair.seeding.image_generators``). An image's estimate never depends on its
  batch-mates or the chunk size (see above); ``seed=None`` gives a truly random defense.
- Dropout: element-wise, p = 0.5, after the ReLU of the layers Table 3 marks; its masks are drawn
  from the per-image generator (not torch's global one). The estimates x_est are computed with
  dropout off (eval mode); the paper does not say.
- Estimate: ``x_est = E_z[h(z; w)]`` is averaged over ``estimate_samples`` noisy inputs (default
  the mini-batch size n = 1, reading Alg. 1's "// mini-batch" literally).
- Weights *and* Adam's moments carry over between checkpoints (one optimizer for all T * K
  steps); Alg. 2 passes w^(t-1) on and is silent about the optimizer state.
- Initialization: "random uniform" made concrete as U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights
  and biases (PyTorch's default range for convolutions).
- DIP input: z0 ~ U[0, 0.1) with the image's channel count (DIP's usual noise scale; the paper's
  Table 3 networks take C input planes). The DIP target is not noised.
- Noise is not clipped: s and z may leave [0, 1]; the output is in [0, 1] by the sigmoid.
- Gradient: the defense output is detached. omega (the fitting) is the part the paper argues an
  attacker cannot differentiate; evaluate RIDE white-box with ``advrepair.adaptive.BPDA``
  (the paper's Table 2 attack). Calling ``backward`` through RIDE itself raises torch's
  "does not require grad" error rather than returning a misleading zero gradient.
- Cost: the paper's defaults mean 10,000 Adam steps per image. On this project's 2-core CPU,
  28 x 28 images with the "mnist" network cost 2.2-3 ms per image per step batched (1 thread,
  busy machine; the grouped convolutions alone take ~0.45 ms with 2 idle threads), so 5-30 s
  per image; pass ``iterations=`` (K) and ``checkpoints=`` (T) to trade quality for time.
  ``bench/ride_throughput.py`` measures it.

Example:
    >>> defense = RIDE(iterations=200, checkpoints=5, seed=0)
    >>> defended = nn.Sequential(defense, classifier)       # (B, 1, 28, 28) -> logits
    >>> result = defense.fit(x_adv, clean=x_clean, trajectory=True)
    >>> result.trajectory.to_clean.shape                    # (T * K + 1, B)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from advrepair.errors import InputError
from advrepair.seeding import image_generators
from advrepair.validation import check_images, check_int_at_least, check_positive

MODES = ("ride", "dae", "dip", "idip")
# The batched engine runs a multiple of this many networks (padding with inert zero networks):
# oneDNN picks its grouped-convolution kernels, and so its summation order, by the channel
# count; with a multiple of 8 groups an image's gradients were bit-identical for every batch
# size, position and thread count we tried (AVX2 CPU), without it they were not.
GROUP_MULTIPLE = 8
DIP_NOISE_SCALE = 0.1


@dataclass(frozen=True)
class RideNetSpec:
    """A reconstruction network of Table 3: ``depth`` 3x3 conv layers (the last is the output
    layer), hidden ``width``, dropout after the (1-based) hidden layers in ``dropout_layers``."""

    width: int
    depth: int
    dropout_layers: tuple[int, ...]


RIDE_NETWORKS: dict[str, RideNetSpec] = {
    "mnist": RideNetSpec(width=16, depth=4, dropout_layers=(2, 3)),
    "cifar": RideNetSpec(width=32, depth=5, dropout_layers=(2, 3)),
    "imagenet": RideNetSpec(width=32, depth=8, dropout_layers=(4, 5, 6)),
}


def resolve_network(network: str | RideNetSpec, channels: int) -> RideNetSpec:
    """The spec for ``network`` ("auto": "mnist" for 1 channel, else "cifar")."""
    if isinstance(network, RideNetSpec):
        return network
    if network == "auto":
        return RIDE_NETWORKS["mnist" if channels == 1 else "cifar"]
    return RIDE_NETWORKS[network]


def _layer_channels(spec: RideNetSpec, channels: int) -> list[tuple[int, int]]:
    """(in, out) planes of each conv layer."""
    planes = [channels] + [spec.width] * (spec.depth - 1) + [channels]
    return list(zip(planes[:-1], planes[1:]))


# --------------------------------------------------------------------------------------------
# Per-image random draws, shared by the batched engine and the sequential reference so both see
# the same numbers in the same order.
# --------------------------------------------------------------------------------------------

def _draw_init(gen: torch.Generator, spec: RideNetSpec, channels: int,
               dtype: torch.dtype) -> list[torch.Tensor]:
    """[w1, b1, w2, b2, ...] for one image: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    out = []
    for cin, cout in _layer_channels(spec, channels):
        bound = 1.0 / math.sqrt(cin * 9)
        out.append((torch.rand((cout, cin, 3, 3), generator=gen, dtype=dtype) * 2 - 1) * bound)
        out.append((torch.rand((cout,), generator=gen, dtype=dtype) * 2 - 1) * bound)
    return out


def _draw_step(gen: torch.Generator, dae: bool, n: int, shape: tuple[int, int, int],
               spec: RideNetSpec, dropout: float, dtype: torch.dtype,
               noise_out: torch.Tensor | None = None, uniform_out: torch.Tensor | None = None
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One step's numbers for one image, in a fixed order: the DAE's input and target noise
    ``(2, n, C, H, W)`` (DAE modes only), then the dropout uniforms ``(n, L, width, H, W)`` for the
    L dropout layers (if dropout > 0). ``*_out`` lets the batched engine write into its buffers."""
    noise = uniform = None
    if dae:
        noise = torch.randn((2, n, *shape), generator=gen, dtype=dtype, out=noise_out)
    if dropout > 0 and spec.dropout_layers:
        uniform = torch.rand((n, len(spec.dropout_layers), spec.width, shape[1], shape[2]),
                             generator=gen, dtype=dtype, out=uniform_out)
    return noise, uniform


def _dropout_masks(uniform: torch.Tensor, dropout: float) -> torch.Tensor:
    """Inverted-dropout masks (0 or 1/(1-p)) from uniforms, element-wise."""
    return (uniform >= dropout).to(uniform.dtype) / (1.0 - dropout)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

@dataclass
class RideTrajectory:
    """Per-step record of a fit (Fig. 2e / Fig. 6 of the paper), row 0 = before any step.

    Attributes:
        steps: (L,) global step index 0..T*K.
        loss: (L, B) training loss of each image's network at that step (row 0: NaN).
        to_adv: (L, B) L2 distance of the current estimate to the adversarial reference.
        to_clean: (L, B) L2 distance to the clean reference, or None if none was given.

    The estimate recorded at every step uses a fixed per-image noise draw (its own stream), so
    recording a trajectory never changes the fit.
    """

    steps: torch.Tensor
    loss: torch.Tensor
    to_adv: torch.Tensor
    to_clean: torch.Tensor | None = None

    @staticmethod
    def cat(parts: list["RideTrajectory"]) -> "RideTrajectory":
        """Join the trajectories of consecutive image chunks along the image axis."""
        cleans = [p.to_clean for p in parts if p.to_clean is not None]
        clean = torch.cat(cleans, 1) if len(cleans) == len(parts) else None
        return RideTrajectory(parts[0].steps, torch.cat([p.loss for p in parts], 1),
                              torch.cat([p.to_adv for p in parts], 1), clean)


@dataclass
class RideResult:
    """Output of ``RIDE.fit``: the defended images and what happened on the way.

    Attributes:
        estimate: (B, C, H, W) in [0, 1], x_est^(T) (what the defense returns).
        checkpoints: (T, B, C, H, W), x_est^(t) for t = 1..T.
        final_loss: (B,) the last step's training loss of each network.
        trajectory: per-step distances, if asked for.
    """

    estimate: torch.Tensor
    checkpoints: torch.Tensor
    final_loss: torch.Tensor
    trajectory: RideTrajectory | None = None


# --------------------------------------------------------------------------------------------
# The reference network (one image)
# --------------------------------------------------------------------------------------------

class RideNetwork(nn.Module):
    """One image's reconstruction network h(z; w) of Table 3 (reference, unbatched).

    Shapes: (n, C, H, W) -> (n, C, H, W) in (0, 1).

    Args:
        spec: layer widths and dropout positions.
        channels: image channels C.
        dropout: dropout probability. Masks are passed explicitly to ``forward`` (one per
            dropout layer, already scaled by 1/(1-p)); without masks no dropout is applied.

    Example:
        >>> h = RideNetwork(RIDE_NETWORKS["mnist"], channels=1)
        >>> h(torch.rand(1, 1, 28, 28)).shape
        torch.Size([1, 1, 28, 28])
    """

    def __init__(self, spec: RideNetSpec, channels: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.spec = spec
        self.dropout = dropout
        self.convs = nn.ModuleList([nn.Conv2d(cin, cout, 3, padding=1)
                                    for cin, cout in _layer_channels(spec, channels)])

    def load_flat(self, flat: list[torch.Tensor]) -> None:
        """Set weights from ``[w1, b1, w2, b2, ...]``."""
        with torch.no_grad():
            for k, conv in enumerate(self.convs):
                assert isinstance(conv, nn.Conv2d) and conv.bias is not None
                conv.weight.copy_(flat[2 * k])
                conv.bias.copy_(flat[2 * k + 1])

    def forward(self, z: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        h = z
        m = 0
        for k, conv in enumerate(self.convs, start=1):
            h = conv(h)
            if k == len(self.convs):
                break
            h = F.relu(h)
            if masks and k in self.spec.dropout_layers:
                h = h * masks[m]
                m += 1
        return torch.sigmoid(h)


# --------------------------------------------------------------------------------------------
# The batched engine: B networks as one grouped convolution, per-model Adam on stacked tensors
# --------------------------------------------------------------------------------------------

class _StackedAdam:
    """Adam (Kingma & Ba) with L2 weight decay, element-wise on stacked per-model tensors.

    Element-wise, so on stacked weights it is exactly independent Adam per model; the update
    follows the same operation order as ``torch.optim.Adam(foreach=False)``.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = params
        self.lr, self.wd, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1 - b1 ** self.t
        bc2_sqrt = (1 - b2 ** self.t) ** 0.5
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            if self.wd != 0:
                g = g.add(p, alpha=self.wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / bc1)


def _grouped_forward(z: torch.Tensor, params: list[torch.Tensor], groups: int, spec: RideNetSpec,
                     masks: list[torch.Tensor] | None) -> torch.Tensor:
    """B networks at once. z: (n, B*C, H, W) -> (n, B*C, H, W); params stacked per layer."""
    h = z
    depth = len(params) // 2
    m = 0
    for k in range(1, depth + 1):
        h = F.conv2d(h, params[2 * k - 2], params[2 * k - 1], padding=1, groups=groups)
        if k == depth:
            break
        h = F.relu(h)
        if masks and k in spec.dropout_layers:
            h = h * masks[m]
            m += 1
    return torch.sigmoid(h)


def _to_grouped(x: torch.Tensor) -> torch.Tensor:
    """(B, n, C, H, W) -> (n, B*C, H, W), channels-last."""
    b, n, c, hh, ww = x.shape
    return x.transpose(0, 1).reshape(n, b * c, hh, ww).contiguous(memory_format=torch.channels_last)


def _from_grouped(x: torch.Tensor, b: int) -> torch.Tensor:
    """(n, B*C, H, W) -> (B, n, C, H, W)."""
    n, bc, hh, ww = x.shape
    return x.reshape(n, b, bc // b, hh, ww).transpose(0, 1)


# --------------------------------------------------------------------------------------------
# The defense
# --------------------------------------------------------------------------------------------

class RIDE(nn.Module):
    """Per-input self-supervised data estimation (DAE / RIDE / DIP / I-DIP), images -> images.

    Args:
        mode: "ride" (Alg. 2, default), "dae" (Alg. 1), "dip" (Eq. 4) or "idip" (I-DIP).
        network: "auto", "mnist", "cifar", "imagenet" (Table 3) or a ``RideNetSpec``.
        sigma: Gaussian std of the DAE input and target noise (paper: 0.5).
        alpha: interpolation of Alg. 2 / Eq. 9 (paper: 0.9); ignored by "dae" and "dip".
        iterations: K, Adam steps per checkpoint (paper: 2000).
        checkpoints: T (paper: 5). Every mode runs T * K steps.
        batch: mini-batch n of noisy samples per step (paper: 1).
        lr: Adam learning rate (paper: 1e-4).
        weight_decay: Adam's L2 weight decay (paper: 1e-4).
        dropout: dropout probability at the Table 3 layers (paper: 0.5; 0 disables).
        estimate_samples: noisy inputs averaged for x_est (default: ``batch``).
        seed: seeds the per-image randomness (with the image content); None = truly random.
        chunk_size: images fitted together by the batched engine; speed/memory only.
        progress: show a tqdm bar over the steps.

    Shapes: (B, C, H, W) in [0, 1] -> (B, C, H, W) in [0, 1], detached (use BPDA to attack it).

    Example:
        >>> defense = RIDE(iterations=100, checkpoints=5, seed=0)
        >>> cleaned = defense(torch.rand(8, 1, 28, 28))
    """

    def __init__(self, mode: str = "ride", network: str | RideNetSpec = "auto", sigma: float = 0.5,
                 alpha: float = 0.9, iterations: int = 2000, checkpoints: int = 5, batch: int = 1,
                 lr: float = 1e-4, weight_decay: float = 1e-4, dropout: float = 0.5,
                 estimate_samples: int | None = None, seed: int | None = 0, chunk_size: int = 64,
                 progress: bool = False) -> None:
        super().__init__()
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(network, RideNetSpec) and network != "auto" and network not in RIDE_NETWORKS:
            raise InputError(f"network must be 'auto', one of {sorted(RIDE_NETWORKS)} or a RideNetSpec, "
                             f"got {network!r}")
        if isinstance(network, RideNetSpec):
            check_int_at_least(network.width, "network.width", 1)
            check_int_at_least(network.depth, "network.depth", 2)
            if any(not 1 <= k < network.depth for k in network.dropout_layers):
                raise InputError(f"network.dropout_layers must be hidden layers 1..{network.depth - 1}, "
                                 f"got {network.dropout_layers}")
        self.mode = mode
        self.network = network
        self.sigma = check_positive(sigma, "sigma", allow_zero=True)
        alpha = check_positive(alpha, "alpha", allow_zero=True)
        if alpha > 1:
            raise InputError(f"alpha must lie in [0, 1], got {alpha}")
        self.alpha = alpha
        self.iterations = check_int_at_least(iterations, "iterations", 1)
        self.checkpoints = check_int_at_least(checkpoints, "checkpoints", 1)
        self.batch = check_int_at_least(batch, "batch", 1)
        self.lr = check_positive(lr, "lr")
        self.weight_decay = check_positive(weight_decay, "weight_decay", allow_zero=True)
        dropout = check_positive(dropout, "dropout", allow_zero=True)
        if dropout >= 1:
            raise InputError(f"dropout must lie in [0, 1), got {dropout}")
        self.dropout = dropout
        self.estimate_samples = self.batch if estimate_samples is None else check_int_at_least(
            estimate_samples, "estimate_samples", 1)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InputError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self.chunk_size = check_int_at_least(chunk_size, "chunk_size", 1)
        self.progress = progress
        self.last_result: RideResult | None = None

    # ---------------------------------------------------------------- configuration helpers
    @property
    def is_dae(self) -> bool:
        """True for the DAE-based modes (noisy input and target), False for DIP ones."""
        return self.mode in ("ride", "dae")

    @property
    def effective_alpha(self) -> float:
        """alpha of Eq. 9; 1 (a fixed target) for the non-iterative modes."""
        return self.alpha if self.mode in ("ride", "idip") else 1.0

    @property
    def total_steps(self) -> int:
        return self.iterations * self.checkpoints

    def params(self) -> dict[str, Any]:
        """Name and parameters, as recorded in results.json."""
        net = self.network if isinstance(self.network, str) else {
            "width": self.network.width, "depth": self.network.depth,
            "dropout_layers": list(self.network.dropout_layers)}
        return {"name": "ride", "mode": self.mode, "network": net, "sigma": self.sigma,
                "alpha": self.alpha, "iterations": self.iterations, "checkpoints": self.checkpoints,
                "batch": self.batch, "lr": self.lr, "weight_decay": self.weight_decay,
                "dropout": self.dropout, "estimate_samples": self.estimate_samples, "seed": self.seed}

    def _check(self, images: object, clean: object, adversarial: object
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        images = check_images(images)
        refs: list[torch.Tensor | None] = []
        for ref, name in ((clean, "clean"), (adversarial, "adversarial")):
            if ref is None:
                refs.append(None)
                continue
            checked = check_images(ref, name)
            if checked.shape != images.shape:
                raise InputError(f"{name} must have the images' shape {tuple(images.shape)}, "
                                 f"got {tuple(checked.shape)}")
            refs.append(checked.detach().to(images.device, images.dtype))
        adv = images.detach() if refs[1] is None else refs[1]
        return images.detach(), refs[0], adv

    # ---------------------------------------------------------------- public entry points
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        result = self.fit(images)
        return result.estimate

    def fit(self, images: torch.Tensor, clean: torch.Tensor | None = None,
            adversarial: torch.Tensor | None = None, trajectory: bool = False) -> RideResult:
        """Fit one network per image with the batched engine and return the estimates.

        Args:
            images: (B, C, H, W) in [0, 1], the (possibly adversarial) inputs x~.
            clean: (B, C, H, W) clean references for the trajectory (optional).
            adversarial: (B, C, H, W) adversarial references (default: ``images``).
            trajectory: record per-step L2 distances of the estimate to the references.

        Returns:
            RideResult with ``estimate`` (B, C, H, W) and ``checkpoints`` (T, B, C, H, W).
        """
        x, clean, adv = self._check(images, clean, adversarial)
        spec = resolve_network(self.network, x.shape[1])
        gens = image_generators(x, self.seed, "ride")
        trace_gens = image_generators(x, self.seed, "ride-trajectory") if trajectory else None
        bar = tqdm(total=self.total_steps * math.ceil(x.shape[0] / self.chunk_size),
                   disable=not self.progress, desc="RIDE", leave=False)
        parts = []
        with torch.inference_mode(False), torch.enable_grad(), bar:
            x, adv = x.clone(), adv.clone()
            clean = None if clean is None else clean.clone()
            for start in range(0, x.shape[0], self.chunk_size):
                sl = slice(start, start + self.chunk_size)
                parts.append(self._fit_chunk(
                    x[sl], spec, gens[sl], None if clean is None else clean[sl], adv[sl],
                    None if trace_gens is None else trace_gens[sl], bar))
        result = RideResult(
            estimate=torch.cat([p.estimate for p in parts]),
            checkpoints=torch.cat([p.checkpoints for p in parts], 1),
            final_loss=torch.cat([p.final_loss for p in parts]),
            trajectory=RideTrajectory.cat([p.trajectory for p in parts if p.trajectory is not None])
            if trajectory else None)
        self.last_result = result
        return result

    def fit_sequential(self, images: torch.Tensor, clean: torch.Tensor | None = None,
                       adversarial: torch.Tensor | None = None, trajectory: bool = False) -> RideResult:
        """The reference path: the same algorithm one image at a time, ``nn.Conv2d`` networks and
        ``torch.optim.Adam``, same per-image random numbers. Same arguments and result as ``fit``.
        """
        x, clean, adv = self._check(images, clean, adversarial)
        spec = resolve_network(self.network, x.shape[1])
        gens = image_generators(x, self.seed, "ride")
        trace_gens = image_generators(x, self.seed, "ride-trajectory") if trajectory else None
        parts = []
        with torch.inference_mode(False), torch.enable_grad():
            x, adv = x.clone(), adv.clone()
            clean = None if clean is None else clean.clone()
            for i in tqdm(range(x.shape[0]), disable=not self.progress, desc="RIDE (sequential)",
                          leave=False):
                parts.append(self._fit_one(
                    x[i], spec, gens[i], None if clean is None else clean[i], adv[i],
                    None if trace_gens is None else trace_gens[i]))
        result = RideResult(
            estimate=torch.stack([p.estimate for p in parts]),
            checkpoints=torch.stack([p.checkpoints for p in parts], 1),
            final_loss=torch.stack([p.final_loss for p in parts]),
            trajectory=RideTrajectory.cat([p.trajectory for p in parts if p.trajectory is not None])
            if trajectory else None)
        self.last_result = result
        return result

    # ---------------------------------------------------------------- batched engine
    def _fit_chunk(self, x: torch.Tensor, spec: RideNetSpec, gens: list[torch.Generator],
                   clean: torch.Tensor | None, adv: torch.Tensor,
                   trace_gens: list[torch.Generator] | None, bar: Any) -> RideResult:
        b, c, hh, ww = x.shape
        g_count = -(-b // GROUP_MULTIPLE) * GROUP_MULTIPLE  # networks run, padded (see module doc)
        dev, dt = x.device, x.dtype
        n, m_est, sigma = self.batch, self.estimate_samples, self.sigma

        def padded(t: torch.Tensor) -> torch.Tensor:
            """(b, ...) -> (g_count, ...) with zero rows for the padding networks."""
            return torch.cat([t, t.new_zeros((g_count - b, *t.shape[1:]))]) if g_count > b else t

        inits = [_draw_init(g, spec, c, dt) for g in gens]
        params = []
        for j in range(len(inits[0])):
            stacked = torch.cat([init[j] for init in inits])
            stacked = padded(stacked.view(b, -1, *stacked.shape[1:])).flatten(0, 1).to(dev)
            if stacked.dim() == 4:
                stacked = stacked.contiguous(memory_format=torch.channels_last)
            params.append(stacked.requires_grad_(True))
        opt = _StackedAdam(params, self.lr, self.weight_decay)
        z0 = z0_eval = None
        if not self.is_dae:
            z0 = torch.stack([torch.rand((1, c, hh, ww), generator=g, dtype=dt) for g in gens])
            z0 = _to_grouped(padded(DIP_NOISE_SCALE * z0).to(dev))
            z0_eval, z0 = z0, z0.expand(n, -1, -1, -1)
        trace_eps = None
        if trace_gens is not None and self.is_dae:
            trace_eps = padded(torch.stack([torch.randn((m_est, c, hh, ww), generator=g, dtype=dt)
                                            for g in trace_gens])).to(dev)

        def estimate(center: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
            # center (G, C, H, W); eps (G, m, C, H, W) for DAE; returns (b, C, H, W)
            with torch.no_grad():
                if self.is_dae:
                    assert eps is not None  # the DAE estimate averages over noise draws
                    out = _grouped_forward(_to_grouped(center[:, None] + sigma * eps), params, g_count, spec, None)
                    return _from_grouped(out, g_count)[:b].mean(1)
                assert z0_eval is not None  # the DIP input
                return _from_grouped(_grouped_forward(z0_eval, params, g_count, spec, None), g_count)[:b, 0]

        record = _Recorder(self.total_steps, b, clean, adv) if trace_gens is not None else None
        target = padded(x)
        if record is not None:
            record.add(0, estimate(target, trace_eps), None)
        ests = []
        loss = torch.full((b,), float("nan"))
        # per-step draws are written straight into these buffers; padding rows stay zero
        noise = torch.zeros((g_count, 2, n, c, hh, ww), dtype=dt) if self.is_dae else None
        uniform = (torch.zeros((g_count, n, len(spec.dropout_layers), spec.width, hh, ww), dtype=dt)
                   if self.dropout > 0 and spec.dropout_layers else None)
        step = 0
        for _t in range(self.checkpoints):
            for _k in range(self.iterations):
                for i, g in enumerate(gens):
                    _draw_step(g, self.is_dae, n, (c, hh, ww), spec, self.dropout, dt,
                               None if noise is None else noise[i], None if uniform is None else uniform[i])
                masks = None
                if uniform is not None:
                    all_masks = _dropout_masks(uniform.to(dev), self.dropout)
                    masks = [_to_grouped(all_masks[:, :, j]) for j in range(all_masks.shape[2])]
                if self.is_dae:
                    assert noise is not None  # allocated above for the DAE
                    noise_d = noise.to(dev)
                    inp = _to_grouped(target[:, None] + sigma * noise_d[:, 0])
                    tgt = target[:, None] + sigma * noise_d[:, 1]
                else:
                    assert z0 is not None  # the DIP input, drawn above
                    inp = z0
                    tgt = target[:, None].expand(g_count, n, c, hh, ww)
                out = _from_grouped(_grouped_forward(inp, params, g_count, spec, masks), g_count)
                per_image = (out[:b] - tgt[:b]).pow(2).mean(dim=(1, 2, 3, 4))
                grads = torch.autograd.grad(per_image.sum(), params)
                opt.step(list(grads))
                loss = per_image.detach()
                step += 1
                bar.update(1)
                if record is not None:
                    record.add(step, estimate(target, trace_eps), loss)
            eps_e = None
            if self.is_dae:
                eps_e = padded(torch.stack([torch.randn((m_est, c, hh, ww), generator=g, dtype=dt)
                                            for g in gens])).to(dev)
            est = estimate(target, eps_e)
            ests.append(est)
            alpha = self.effective_alpha
            if alpha != 1.0:
                target = alpha * target + (1 - alpha) * padded(est)
        return RideResult(estimate=ests[-1], checkpoints=torch.stack(ests), final_loss=loss.cpu(),
                          trajectory=record.result() if record is not None else None)

    # ---------------------------------------------------------------- sequential reference
    def _fit_one(self, x: torch.Tensor, spec: RideNetSpec, gen: torch.Generator,
                 clean: torch.Tensor | None, adv: torch.Tensor,
                 trace_gen: torch.Generator | None) -> RideResult:
        c, hh, ww = x.shape
        dev, dt = x.device, x.dtype
        n, m_est, sigma = self.batch, self.estimate_samples, self.sigma
        net = RideNetwork(spec, c, self.dropout).to(dev, dt)
        net.load_flat([p.to(dev) for p in _draw_init(gen, spec, c, dt)])
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay, foreach=False)
        z0 = None
        if not self.is_dae:
            z0 = (DIP_NOISE_SCALE * torch.rand((1, c, hh, ww), generator=gen, dtype=dt)).to(dev)
        trace_eps = None
        if trace_gen is not None and self.is_dae:
            trace_eps = torch.randn((m_est, c, hh, ww), generator=trace_gen, dtype=dt).to(dev)

        def estimate(center: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
            with torch.no_grad():
                if self.is_dae:
                    assert eps is not None
                    return net(center[None] + sigma * eps).mean(0)
                assert z0 is not None
                return net(z0)[0]

        record = (_Recorder(self.total_steps, 1, None if clean is None else clean[None], adv[None])
                  if trace_gen is not None else None)
        target = x
        if record is not None:
            record.add(0, estimate(target, trace_eps)[None], None)
        ests = []
        loss = torch.tensor(float("nan"))
        step = 0
        for _t in range(self.checkpoints):
            for _k in range(self.iterations):
                noise, uniform = _draw_step(gen, self.is_dae, n, (c, hh, ww), spec, self.dropout, dt)
                masks = None
                if uniform is not None:
                    all_masks = _dropout_masks(uniform.to(dev), self.dropout)
                    masks = [all_masks[:, j] for j in range(all_masks.shape[1])]
                if self.is_dae:
                    assert noise is not None
                    inp = target[None] + sigma * noise[0].to(dev)
                    tgt = target[None] + sigma * noise[1].to(dev)
                else:
                    assert z0 is not None
                    inp = z0.expand(n, -1, -1, -1)
                    tgt = target[None].expand(n, -1, -1, -1)
                opt.zero_grad(set_to_none=True)
                loss_t = F.mse_loss(net(inp, masks), tgt)
                loss_t.backward()
                opt.step()
                loss = loss_t.detach()
                step += 1
                if record is not None:
                    record.add(step, estimate(target, trace_eps)[None], loss[None])
            eps_e = None
            if self.is_dae:
                eps_e = torch.randn((m_est, c, hh, ww), generator=gen, dtype=dt).to(dev)
            est = estimate(target, eps_e)
            ests.append(est)
            alpha = self.effective_alpha
            target = target if alpha == 1.0 else alpha * target + (1 - alpha) * est
        return RideResult(estimate=ests[-1], checkpoints=torch.stack(ests), final_loss=loss.cpu(),
                          trajectory=record.result() if record is not None else None)


class _Recorder:
    """Collects per-step L2 distances (and losses) of the estimates of a chunk of images."""

    def __init__(self, steps: int, b: int, clean: torch.Tensor | None, adv: torch.Tensor) -> None:
        self.clean, self.adv = clean, adv
        self.loss = torch.full((steps + 1, b), float("nan"))
        self.to_adv = torch.empty(steps + 1, b)
        self.to_clean = torch.empty(steps + 1, b) if clean is not None else None

    def add(self, step: int, est: torch.Tensor, loss: torch.Tensor | None) -> None:
        self.to_adv[step] = (est - self.adv).flatten(1).norm(dim=1).cpu()
        if self.to_clean is not None and self.clean is not None:
            self.to_clean[step] = (est - self.clean).flatten(1).norm(dim=1).cpu()
        if loss is not None:
            self.loss[step] = loss.cpu()

    def result(self) -> RideTrajectory:
        return RideTrajectory(torch.arange(self.loss.shape[0]), self.loss, self.to_adv, self.to_clean)
