"""The native engine: RIDE's MNIST network (one image channel, hidden width 16, Table 3) fitted
by a C kernel (``advrepair/engine/kernels/ride_step.c``), one network per thread at a time.

The grouped-convolution engine (:mod:`advrepair.defenses.ride.batched`) spends as much time
between its convolutions as in them: every ReLU, dropout mask, sigmoid, loss and Adam operation
is a separate pass over all networks' tensors. The kernel runs a network's whole step
(forward, backward, Adam) in one go while its activations stay in cache. The random numbers are
the same (drawn here, from each image's generator, in the same order), so both engines compute
the same fit up to float rounding (tested). Each network is computed alone, so an image's
estimate is bit-identical in any batch, chunk and thread count, with no padding networks.

Other networks (width != 16, colour images), dropout other than 0 or 1/2, other devices or
dtypes, ``ADVREPAIR_NATIVE_KERNELS=0`` and machines without a C compiler use the grouped engine.
"""
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

import torch

from advrepair.defenses.ride.loop import run_fit
from advrepair.defenses.ride.networks import DIP_NOISE_SCALE, RideNetSpec, _draw_init, dropout_draw_buffer, dropout_units
from advrepair.defenses.ride.results import RideResult
from advrepair.engine.native import bound_kernel

if TYPE_CHECKING:
    from advrepair.defenses.ride.defense import RIDE

#: the kernel's network: hidden width and image channels
WIDTH, CHANNELS, MAX_DEPTH = 16, 1, 32
_POINTER, _INT64, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float


def _declare(library: ctypes.CDLL) -> None:
    train_arguments: list[Any] = [_POINTER] * 3 + [_INT64] + [_POINTER] * 3  # four ctypes: mypy finds no join
    train_arguments += [_INT64, _POINTER, _INT64] + [_INT] * 5 + [_FLOAT] * 7 + [_INT]
    library.ride_train_step.argtypes = train_arguments
    forward_arguments: list[Any] = [_POINTER, _INT64, _POINTER, _POINTER, _INT64] + [_INT] * 5
    library.ride_forward.argtypes = forward_arguments
    library.ride_train_step.restype = library.ride_forward.restype = _INT


def _library() -> ctypes.CDLL | None:
    return bound_kernel("ride_step", _declare, "ride_use_openmp")


def native_engine_covers(spec: RideNetSpec, channels: int, dropout: float, device: torch.device,
                         dtype: torch.dtype) -> bool:
    """Whether the native engine fits these networks here (else the grouped engine does)."""
    return (spec.width == WIDTH and channels == CHANNELS and 2 <= spec.depth <= MAX_DEPTH
            and (dropout in (0.0, 0.5) or not spec.dropout_layers)
            and device.type == "cpu" and dtype == torch.float32 and _library() is not None)


def pack_parameters(flat: list[torch.Tensor]) -> torch.Tensor:
    """``[w1, b1, w2, b2, ...]`` (``nn.Conv2d`` layouts) -> the kernel's vector: per layer the
    weights as [tap][in][out], then the bias."""
    parts = []
    for weight, bias in zip(flat[0::2], flat[1::2]):
        parts += [weight.permute(2, 3, 1, 0).reshape(-1), bias.reshape(-1)]
    return torch.cat(parts)


def _check(status: int, what: str) -> None:
    # the kernel refuses shapes it does not take, which native_engine_covers keeps away: what is
    # left is memory for its per-thread workspace
    if status != 0:
        raise MemoryError(f"RIDE's native {what} failed: no memory for its workspace")


class _Networks:
    """b networks' parameters and Adam state in the kernel's layout."""

    def __init__(self, inits: list[list[torch.Tensor]], spec: RideNetSpec, lr: float, weight_decay: float,
                 library: ctypes.CDLL, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.parameters = torch.stack([pack_parameters(init) for init in inits]).contiguous()
        self.first_moments = torch.zeros_like(self.parameters)
        self.second_moments = torch.zeros_like(self.parameters)
        self.spec, self.lr, self.weight_decay, self.betas, self.eps = spec, lr, weight_decay, betas, eps
        self.library, self.t = library, 0
        self.dropout_layers = sum(1 << k for k in spec.dropout_layers)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(b, m, H, W) -> (b, m, H, W): each network on its own m inputs, without dropout."""
        inputs = inputs.contiguous()
        out = torch.empty_like(inputs)
        b, m, hh, ww = inputs.shape
        _check(self.library.ride_forward(self.parameters.data_ptr(), self.parameters.shape[1], inputs.data_ptr(),
                                         out.data_ptr(), b, self.spec.depth, hh, ww, m, torch.get_num_threads()),
               "forward pass")
        return out

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor, draws: torch.Tensor | None) -> torch.Tensor:
        """One Adam step of each network on its (b, n, H, W) inputs and targets; the losses (b,)
        before the step. ``draws``: the packed dropout bits (rows of ``dropout_draw_buffer``)."""
        inputs, targets = inputs.contiguous(), targets.contiguous()
        b, n, hh, ww = inputs.shape
        self.t += 1
        beta1, beta2 = self.betas
        # the scalars as torch.optim.Adam computes them (in double, then used in float)
        step_size = self.lr / (1 - beta1 ** self.t)
        bias_correction2_sqrt = (1 - beta2 ** self.t) ** 0.5
        losses = torch.empty(b)
        layers = self.dropout_layers if draws is not None else 0
        draws_pointer, draws_stride = (draws.data_ptr(), 2 * draws.shape[1]) if draws is not None else (None, 0)
        _check(self.library.ride_train_step(
            self.parameters.data_ptr(), self.first_moments.data_ptr(), self.second_moments.data_ptr(),
            self.parameters.shape[1], inputs.data_ptr(), targets.data_ptr(), draws_pointer, draws_stride,
            losses.data_ptr(), b, self.spec.depth, hh, ww, n, layers, step_size, self.weight_decay, 1 - beta1,
            beta2, 1 - beta2, self.eps, bias_correction2_sqrt, torch.get_num_threads()), "training step")
        return losses


def fit_chunk_native(ride: "RIDE", x: torch.Tensor, spec: RideNetSpec, gens: list[torch.Generator],
                     clean: torch.Tensor | None, adv: torch.Tensor,
                     trace_gens: list[torch.Generator] | None, bar: Any) -> RideResult:
    """``batched.fit_chunk`` on the native kernel (see the module docstring); same arguments."""
    library = _library()
    assert library is not None  # native_engine_covers said so
    b, c, hh, ww = x.shape
    dt = x.dtype
    n, m_est, sigma = ride.batch, ride.estimate_samples, ride.sigma
    nets = _Networks([_draw_init(g, spec, c, dt) for g in gens], spec, ride.lr, ride.weight_decay, library)
    z0 = None
    if not ride.is_dae:
        z0 = DIP_NOISE_SCALE * torch.stack([torch.rand((1, c, hh, ww), generator=g, dtype=dt) for g in gens])
        z0 = z0.view(b, 1, hh, ww)
    trace_eps = None
    if trace_gens is not None and ride.is_dae:
        trace_eps = torch.stack([torch.randn((m_est, c, hh, ww), generator=g, dtype=dt) for g in trace_gens])

    def estimate(center: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        # center (b, C, H, W); eps (b, m, C, H, W) for DAE; returns (b, C, H, W)
        if ride.is_dae:
            assert eps is not None  # the DAE estimate averages over noise draws
            return nets.forward((center[:, None] + sigma * eps).view(b, -1, hh, ww)).view(b, -1, c, hh, ww).mean(1)
        assert z0 is not None  # the DIP input
        return nets.forward(z0).view(b, c, hh, ww)

    noise = torch.zeros((b, 2, n, c, hh, ww), dtype=dt) if ride.is_dae else None
    draws = (dropout_draw_buffer(b, dropout_units(spec, n, hh, ww), ride.dropout, dt)
             if ride.dropout > 0 and spec.dropout_layers else None)

    def train_step(target: torch.Tensor) -> torch.Tensor:
        if noise is not None:
            inputs = (target[:, None] + sigma * noise[:, 0]).view(b, n, hh, ww)
            targets = (target[:, None] + sigma * noise[:, 1]).view(b, n, hh, ww)
        else:
            assert z0 is not None  # the DIP input, drawn above
            inputs = z0.expand(b, n, hh, ww)
            targets = target.reshape(b, 1, hh, ww).expand(b, n, hh, ww)
        return nets.train_step(inputs, targets, draws)

    return run_fit(ride, spec, gens, x, estimate, train_step, noise, draws, lambda t: t, bar, clean, adv, trace_eps,
                   trace_gens is not None)
