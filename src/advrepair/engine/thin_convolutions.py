"""Faster input gradients through thin convolutions (few input channels) on the CPU.

An attack needs the gradient of the loss with respect to the image, so every step runs the
backward pass of the model's first convolution with respect to its input: a (B, O, H, W)
gradient folded back onto (B, C, H, W) with C = 1 or 3. oneDNN's backward-data kernel runs
that shape at a small fraction of the machine's peak (on the zoo CNN it cost a fifth of a whole
forward and backward step, more than the second convolution with eight times its FLOPs). The
same gradient is a 1x1 convolution of the output gradient onto the kernel's C·kh·kw taps,
each tap's plane then added back at its offset (what ``F.fold`` computes, 3x faster here). On
the zoo CNNs a whole forward and backward step at 200 images gets 8-15% faster.

:func:`fast_input_gradients` applies it to a module's eligible ``nn.Conv2d`` layers for the
duration of a ``with`` block. Forward values are untouched (the same convolution runs); the
input gradient equals oneDNN's up to float rounding (summation order); weight and bias
gradients still come from PyTorch's own convolution node, which autograd skips when only the
input's gradient is asked for, as before. Second derivatives (``create_graph=True``) stay exact:
the replacement backward is built from differentiable operations.

Example:
    >>> with fast_input_gradients(model):
    ...     grad, = torch.autograd.grad(loss_fn(model(x)), x)
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from advrepair.engine.fused_conv_pool import fuse_conv_pools, unfuse_conv_pools

#: convolutions with at most this many input taps (channels x kernel height x width) qualify,
#: and only with at least as many output channels as taps. Measured (forward + input backward,
#: 2-core CPU, channels-last): 9 taps -> 32 or 64 outputs 2.5x faster, 27 -> 64 1.2-1.5x,
#: 27 -> 32 1.2x, 36 -> 64 1.3x; 27 -> 24 even; 27 -> 16 0.8-0.9x and 72 -> 64 0.8x (slower)
MAX_TAPS = 36

#: set to ``0`` to keep PyTorch's own input gradients everywhere (results record the choice)
SWITCH = "ADVREPAIR_TAP_INPUT_GRADIENTS"

_ACTIVE = "_advrepair_tap_input"  # the input a covered layer is running on, between its two hooks
_COVERED = "_advrepair_tap_covered"  # set while a fast_input_gradients block covers the layer


class _TapInputGradient(torch.autograd.Function):
    """Identity on the convolution's output; in backward, passes the output gradient on to
    PyTorch's convolution node (weight and bias) and computes the input's gradient by taps."""

    @staticmethod
    def forward(ctx: Any, output: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor,
                conv: nn.Conv2d) -> torch.Tensor:
        ctx.save_for_backward(weight)
        ctx.input_size = tuple(inputs.shape[-2:])
        ctx.geometry = (conv.kernel_size, conv.dilation, conv.padding, conv.stride)
        return output.detach()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        (weight,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[1]:
            grad_input = _fold_taps(grad_output, weight, ctx.input_size, *ctx.geometry)
        return grad_output, grad_input, None, None


def _fold_taps(grad_output: torch.Tensor, weight: torch.Tensor, input_size: tuple[int, int],
               kernel: tuple[int, int], dilation: tuple[int, int], padding: tuple[int, int],
               stride: tuple[int, int]) -> torch.Tensor:
    """The convolution's input gradient: each tap's plane (a 1x1 convolution of the output
    gradient) added back at its offset. Same sums as ``F.fold``, 3x faster on these shapes."""
    out_channels, in_channels = weight.shape[:2]
    taps = weight.permute(1, 2, 3, 0).reshape(-1, out_channels, 1, 1)
    batch, _, out_h, out_w = grad_output.shape
    planes = F.conv2d(grad_output, taps).view(batch, in_channels, kernel[0], kernel[1], out_h, out_w)
    (in_h, in_w), (pad_h, pad_w), (step_h, step_w) = input_size, padding, stride
    padded = grad_output.new_zeros(batch, in_channels, in_h + 2 * pad_h, in_w + 2 * pad_w)
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            top, left = a * dilation[0], b * dilation[1]
            padded[:, :, top:top + step_h * (out_h - 1) + 1:step_h,
                   left:left + step_w * (out_w - 1) + 1:step_w] += planes[:, :, a, b]
    return padded[:, :, pad_h:pad_h + in_h, pad_w:pad_w + in_w]


def tap_input_gradients_enabled() -> bool:
    """Whether :func:`fast_input_gradients` is on in this process (``ADVREPAIR_TAP_INPUT_GRADIENTS``)."""
    return os.environ.get(SWITCH, "1") != "0"


def is_thin_convolution(module: nn.Module) -> bool:
    """Whether :func:`fast_input_gradients` applies to ``module``: a plain 2-D convolution
    (not a subclass with its own forward), zero padding given as numbers, one group, at most
    :data:`MAX_TAPS` input taps and at least as many output channels as taps (where the taps
    were measured faster)."""
    if not isinstance(module, nn.Conv2d):
        return False
    own_forward = type(module).forward is nn.Conv2d.forward and \
        type(module)._conv_forward is nn.Conv2d._conv_forward
    kh, kw = module.kernel_size
    taps = module.in_channels * kh * kw
    return (own_forward and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str) and taps <= MAX_TAPS and module.out_channels >= taps)


def _detach_input(module: nn.Conv2d, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    x = args[0] if args else None
    if not (isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()
            and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 4
            and not torch.is_autocast_enabled("cpu")):  # autocast picks the convolution's dtype
        return None
    module.__dict__[_ACTIVE] = x
    return (x.detach(), *args[1:])


def _attach_input_gradient(module: nn.Conv2d, _args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
    x = module.__dict__.pop(_ACTIVE, None)
    if x is None:
        return None
    return _TapInputGradient.apply(output, x, module.weight, module)


@contextlib.contextmanager
def fast_input_gradients(module: Any, enabled: bool = True) -> Iterator[int]:
    """Within the block, gradients with respect to the inputs of ``module``'s thin convolutions
    (:func:`is_thin_convolution`) go by taps on the CPU. Yields how many layers it covers.

    Where such a convolution is directly followed by a 2x2 max-pool inside an ``nn.Sequential``,
    the two run as one native pass (:mod:`advrepair.engine.fused_conv_pool`; forward values then
    agree with PyTorch's up to float summation order).

    Reentrant (an attack inside an attack covers each layer once); anything that is not an
    ``nn.Module`` passes through untouched (yields 0). CUDA tensors keep cuDNN's kernels, and
    passes under autocast PyTorch's own.
    ``ADVREPAIR_TAP_INPUT_GRADIENTS=0`` turns it off process-wide. Pass ``enabled=False``
    where activation checkpointing may recompute the block's forward after the block has
    ended: the recomputed graph must match the original.
    """
    if not (enabled and tap_input_gradients_enabled() and isinstance(module, nn.Module)):
        yield 0
        return
    handles: list[RemovableHandle] = []
    covered: list[nn.Module] = []
    fused: list[nn.Sequential] = []
    try:
        own_hooks: dict[nn.Module, set[int]] = {}
        for layer in module.modules():
            if is_thin_convolution(layer) and _COVERED not in layer.__dict__:
                layer.__dict__[_COVERED] = True
                covered.append(layer)
                pair = (layer.register_forward_pre_hook(_detach_input), layer.register_forward_hook(_attach_input_gradient))
                handles.extend(pair)
                own_hooks[layer] = {h.id for h in pair}
        fused = fuse_conv_pools(module, own_hooks)
        yield len(covered)
    finally:
        unfuse_conv_pools(fused)
        for handle in handles:
            handle.remove()
        for layer in covered:
            del layer.__dict__[_COVERED]
            layer.__dict__.pop(_ACTIVE, None)
