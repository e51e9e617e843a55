"""A thin first convolution and the 2x2 max-pool after it, run as one native pass on the CPU.

On the zoo CNNs the first convolution writes its full-resolution output (on 512 views of
28x28 images, 51 MB) only for the max-pool to read it back and keep a quarter; the pool's
backward zero-fills a gradient of that size and scatters into it, and the input gradient
reads it once more. That traffic, not arithmetic, is what the reverse attack's step spends
most of its first layer on. The kernel (``kernels/conv_pool.c``) computes each pooling
window's four convolution outputs in registers, keeps the maximum and a one-byte code of
where it was; its backward folds the pooled gradient straight onto the image through the
codes. The full-resolution tensors never exist.

It applies inside :func:`advrepair.engine.fast_input_gradients` (every attack and every
defense's gradient loop), to each ``nn.Sequential`` whose members include a thin
convolution (:func:`~advrepair.engine.is_thin_convolution`; stride 1, odd square kernel,
"same" zero padding) directly followed by ``nn.MaxPool2d(2)`` (stride 2, no padding,
dilation or ceil mode), on float32 CPU tensors outside autocast, with even height and width
and neither layer hooked. Anything else takes the layers' own path. The pooled values equal
PyTorch's up to float summation order (ties and NaN pick the same window position: the first
maximum in scan order); the output has the layout PyTorch's convolution would give it.

Gradients: the image's through the kernel; the weights' and bias's, when a backward pass asks
for them, through PyTorch's convolution weight gradient on the scattered pooled gradient
(autograd never runs that branch when only the image's gradient is wanted). With
``create_graph=True`` the image's gradient is built from differentiable operations, so
second derivatives stay exact.

``ADVREPAIR_FUSED_CONV_POOL=0`` turns the fusion off (``ADVREPAIR_NATIVE_KERNELS=0`` turns off
every native kernel); results record whether it was on and built (:func:`fused_conv_pool_available`).
"""
from __future__ import annotations

import ctypes
import os
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_weight

from advrepair.engine.native import bound_kernel

#: set to ``0`` to keep the convolution and the max-pool apart
SWITCH = "ADVREPAIR_FUSED_CONV_POOL"
#: the kernel's limits (``kernels/conv_pool.c``)
MAX_CHANNELS = 256
MAX_TAPS = 64  # input channels x kernel height x width

_PAIRS = "_advrepair_fused_pairs"  # on a covered Sequential: the _Fusion of the block covering it
_POINTER, _INT64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def fused_conv_pool_enabled() -> bool:
    """Whether the fusion is switched on (``ADVREPAIR_FUSED_CONV_POOL``)."""
    return os.environ.get(SWITCH, "1") != "0"


def _declare(library: ctypes.CDLL) -> None:
    library.conv_pool_forward.argtypes = [_POINTER] * 5 + [_INT64] + [_INT] * 6
    library.conv_pool_backward.argtypes = [_POINTER] * 4 + [_INT64] + [_INT] * 7
    library.conv_pool_forward.restype = library.conv_pool_backward.restype = _INT


def _library() -> ctypes.CDLL | None:
    return bound_kernel("conv_pool", _declare, "conv_pool_use_openmp")


def fused_conv_pool_available() -> bool:
    """Whether the fusion runs in this process: switched on and its kernel built here."""
    return fused_conv_pool_enabled() and _library() is not None


def _pair_fits(conv: nn.Module, pool: nn.Module) -> bool:
    from advrepair.engine.thin_convolutions import is_thin_convolution  # it imports this module
    if not (is_thin_convolution(conv) and isinstance(pool, nn.MaxPool2d) and isinstance(conv, nn.Conv2d)):
        return False
    kh, kw = conv.kernel_size
    square_same = kh == kw and kh % 2 == 1 and tuple(conv.padding) == (kh // 2, kw // 2)
    pool_2x2 = (_pair(pool.kernel_size) == (2, 2) and _pair(pool.stride or pool.kernel_size) == (2, 2)
                and _pair(pool.padding) == (0, 0) and _pair(pool.dilation) == (1, 1)
                and not pool.ceil_mode and not pool.return_indices)
    return (square_same and pool_2x2 and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1)
            and conv.out_channels <= MAX_CHANNELS and conv.in_channels * kh * kw <= MAX_TAPS
            and type(pool).forward is nn.MaxPool2d.forward)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _hooked(module: nn.Module, own: set[int]) -> bool:
    """Whether anything but our own tap hooks watches the module's forward or backward."""
    hooks = [module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
             getattr(module, "_backward_pre_hooks", {})]
    return any(set(h) - own for h in hooks)


def _global_hooks() -> bool:
    state = nn.modules.module
    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
             "_global_backward_pre_hooks")
    return any(len(getattr(state, name, {})) for name in names)


def _suggests_channels_last(t: torch.Tensor) -> bool:
    """PyTorch's choice of a convolution's output layout, from one operand's strides."""
    return t.dim() == 4 and t.shape[1] > 0 and t.stride(1) == 1 and t.is_contiguous(memory_format=torch.channels_last) \
        and not (t.shape[1] == 1 and t.shape[2] * t.shape[3] == 1)


def _can_fuse(x: Any, conv: nn.Conv2d) -> bool:
    return (isinstance(x, torch.Tensor) and x.dim() == 4 and x.device.type == "cpu" and x.dtype == torch.float32
            and conv.weight.dtype == torch.float32 and conv.weight.device.type == "cpu"
            and x.shape[1] == conv.in_channels and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
            and x.shape[2] >= 2 and x.shape[3] >= 2 and not torch.is_autocast_enabled("cpu")
            and fused_conv_pool_enabled() and _library() is not None)


class _Stage:
    """What one fused call keeps for its backward: the images, the window codes, the layer."""

    def __init__(self, images: torch.Tensor, codes: torch.Tensor, conv: nn.Conv2d) -> None:
        self.images, self.codes, self.conv = images, codes, conv

    def full_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """The pooled gradient scattered onto the convolution's output (differentiable in ``grad``)."""
        _, _, h, w = grad.shape
        code = self.codes.permute(0, 3, 1, 2).long()  # (N, C, h, w) like grad
        rows = torch.arange(h, device=grad.device).view(1, 1, h, 1) * 2 + code // 2
        cols = torch.arange(w, device=grad.device).view(1, 1, 1, w) * 2 + code % 2
        return F.max_unpool2d(grad.contiguous(), rows * (2 * w) + cols, (2, 2), output_size=(2 * h, 2 * w))

    def images_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if torch.is_grad_enabled():  # create_graph: differentiable operations only
            return F.conv_transpose2d(self.full_gradient(grad), conv.weight, padding=conv.padding)  # type: ignore[arg-type]
        library = _library()
        assert library is not None
        n, cin, height, width = self.images.shape
        rows = weights_by_window_position(conv.weight.detach())
        padded = rows.shape[-1]
        grad = grad.contiguous(memory_format=torch.channels_last)
        result = torch.empty(n, cin, height, width, dtype=torch.float32)
        status = library.conv_pool_backward(grad.data_ptr(), self.codes.data_ptr(), rows.data_ptr(),
                                            result.data_ptr(), n, cin, height, width, rows.shape[1],
                                            conv.weight.shape[-1], padded, torch.get_num_threads())
        if status != 0:
            raise RuntimeError("conv_pool_backward failed (out of memory?)")
        return result


def weights_by_window_position(weight: torch.Tensor) -> torch.Tensor:
    """The backward kernel's weights: for each of a pooling window's four positions, each output
    channel's kernel placed on the window's (k+1) x (k+1) receptive field per input channel
    (zeros elsewhere), flattened and zero-padded to a multiple of 8 floats.
    Shapes: (C_out, C_in, k, k) -> (4, C_out, ceil8(C_in (k+1)^2))."""
    out_channels, cin, k, _ = weight.shape
    rows = weight.new_zeros(4, out_channels, cin, k + 1, k + 1)
    for code, (row, col) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):  # scan order, as in the kernel
        rows[code, :, :, row:row + k, col:col + k] = weight
    footprint = cin * (k + 1) * (k + 1)
    return F.pad(rows.reshape(4, out_channels, footprint), (0, -(-footprint // 8) * 8 - footprint)).contiguous()


class _ImagesGradient(torch.autograd.Function):
    """Identity on the fused pooled output; its backward is the images' gradient. The pooled
    gradient itself goes back along the ``token`` input to :class:`_ParametersGradient`."""

    @staticmethod
    def forward(ctx: Any, pooled: torch.Tensor, images: torch.Tensor, token: torch.Tensor | None,
                stage: _Stage) -> torch.Tensor:
        ctx.stage = stage
        return pooled

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        images_grad = ctx.stage.images_gradient(grad) if ctx.needs_input_grad[1] else None
        return None, images_grad, grad if ctx.needs_input_grad[2] else None, None


class _ParametersGradient(torch.autograd.Function):
    """A zero tensor of the pooled output's shape (an expanded scalar: no memory) fed into
    :class:`_ImagesGradient`, which hands it the pooled gradient. Autograd runs this node only
    when a backward pass asks for the layer's weight or bias; nothing is kept between the two
    nodes, so no reference cycle holds a graph alive (with ``create_graph=True`` the gradient
    carries one)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, bias: torch.Tensor | None, stage: _Stage,
                shape: tuple[int, ...]) -> torch.Tensor:
        ctx.stage = stage
        return weight.new_zeros(()).expand(shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        stage: _Stage = ctx.stage
        conv = stage.conv
        weight_grad = bias_grad = None
        if ctx.needs_input_grad[0]:
            weight_grad = conv2d_weight(stage.images, conv.weight.shape, stage.full_gradient(grad), padding=conv.padding)
        if ctx.needs_input_grad[1]:
            bias_grad = grad.sum((0, 2, 3))  # the scatter moves values, so the sums are the pooled ones
        return weight_grad, bias_grad, None, None


def fused_conv_pool(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``max_pool2d(conv(x), 2)`` in one native pass, differentiable in ``x``, the weight and the bias.

    Requires what :func:`_can_fuse` checks (the fused Sequential checks it before each call).
    Shapes: (N, C_in, H, W) -> (N, C_out, H/2, W/2).
    """
    library = _library()
    assert library is not None
    weight = conv.weight.detach()
    n, cin, height, width = x.shape
    out_channels, k = weight.shape[0], weight.shape[-1]
    images = x.detach().contiguous()
    taps_by_channel = weight.permute(1, 2, 3, 0).reshape(cin * k * k, out_channels).contiguous()
    bias = conv.bias.detach().contiguous() if conv.bias is not None else weight.new_zeros(out_channels)
    channels_last = _suggests_channels_last(x) or _suggests_channels_last(conv.weight)
    pooled = torch.empty(n, out_channels, height // 2, width // 2, dtype=torch.float32,
                         memory_format=torch.channels_last)
    parameters = [p for p in (conv.weight, conv.bias) if p is not None]
    wants_graph = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in parameters))
    codes = torch.empty(n, height // 2, width // 2, out_channels, dtype=torch.uint8) if wants_graph else None
    status = library.conv_pool_forward(images.data_ptr(), taps_by_channel.data_ptr(), bias.data_ptr(),
                                       pooled.data_ptr(), None if codes is None else codes.data_ptr(),
                                       n, cin, height, width, out_channels, k, torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f"conv_pool_forward refused the shape {tuple(x.shape)} -> {out_channels} channels")
    if not channels_last:
        pooled = pooled.contiguous()
    if codes is None:
        return pooled
    stage = _Stage(images, codes, conv)
    token = None
    if any(p.requires_grad for p in parameters):
        token = _ParametersGradient.apply(conv.weight, conv.bias, stage, tuple(pooled.shape))
    return _ImagesGradient.apply(pooled, x, token, stage)


class _Fusion:
    """One :func:`fuse_conv_pools` block: its pairs run fused only while it is active. A model
    deep-copied inside the block shares this object (not a copy), so the copy falls back to its
    plain layers once the block ends."""

    def __init__(self, pairs: dict[int, tuple[nn.Module, nn.Module, set[int]]]) -> None:
        self.pairs, self.active = pairs, True

    def __copy__(self) -> "_Fusion":
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> "_Fusion":
        return self


def _fused_sequential_forward(self: nn.Sequential, input: Any) -> Any:
    fusion: _Fusion = self.__dict__[_PAIRS]
    pairs = fusion.pairs if fusion.active else {}
    members = list(self._modules.values())
    i = 0
    while i < len(members):
        pair = pairs.get(i)
        if (pair is not None and i + 1 < len(members) and members[i] is pair[0] and members[i + 1] is pair[1]
                and _can_fuse(input, pair[0]) and not _hooked(pair[0], pair[2]) and not _hooked(pair[1], set())  # type: ignore[arg-type]
                and not _global_hooks()):
            input = fused_conv_pool(input, pair[0])  # type: ignore[arg-type]
            i += 2
        else:
            input = members[i](input)
            i += 1
    return input


def fuse_conv_pools(module: nn.Module, own_hooks: dict[nn.Module, set[int]]) -> list[nn.Sequential]:
    """Let every plain ``nn.Sequential`` inside ``module`` run its fitting convolution + max-pool
    pairs fused, until :func:`unfuse_conv_pools`. ``own_hooks``: the hook ids the caller put on
    convolutions (they do not count as a user's hooks). Returns the Sequentials it changed."""
    if not fused_conv_pool_enabled():
        return []
    changed: list[nn.Sequential] = []
    for container in module.modules():
        if type(container).forward is not nn.Sequential.forward or not isinstance(container, nn.Sequential) \
                or "forward" in container.__dict__ or _PAIRS in container.__dict__:
            continue
        members = list(container._modules.values())
        pairs = {i: (a, b, own_hooks.get(a, set())) for i, (a, b) in enumerate(zip(members, members[1:]))
                 if _pair_fits(a, b)}
        if pairs:
            container.__dict__[_PAIRS] = _Fusion(pairs)
            container.__dict__["forward"] = types.MethodType(_fused_sequential_forward, container)
            changed.append(container)
    return changed


def unfuse_conv_pools(containers: list[nn.Sequential]) -> None:
    for container in containers:
        fusion = container.__dict__.pop(_PAIRS, None)
        if isinstance(fusion, _Fusion):
            fusion.active = False
        container.__dict__.pop("forward", None)
