"""The fused thin convolution + 2x2 max-pool (engine/fused_conv_pool.py, kernels/conv_pool.c)
against PyTorch's own layers: values, layouts, ties and NaN, every gradient, second
derivatives, batch and thread independence, scope, and the fallbacks."""
from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrepair.engine import fast_input_gradients, fused_conv_pool as fused
from advrepair.engine.native import load_kernel, openmp_runtime
from advrepair.models import SmallCNN

pytestmark = pytest.mark.skipif(load_kernel("conv_pool") is None, reason="no C compiler: the fusion is off here")


def _stage(in_channels: int = 1, width: int = 32, kernel: int = 3, bias: bool = True,
           channels_last: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    stage = nn.Sequential(nn.Conv2d(in_channels, width, kernel, padding=kernel // 2, bias=bias), nn.MaxPool2d(2),
                          nn.ReLU())
    return stage.to(memory_format=torch.channels_last) if channels_last else stage  # type: ignore[call-overload]


def _images(n: int = 6, channels: int = 1, size: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=g)
    x[:, :, : size // 3] = 0.0  # flat background: the four outputs of a window tie exactly
    return x


@contextlib.contextmanager
def _counted_fusions() -> Iterator[list[int]]:
    """Counts the fused calls made inside the block (so a test knows which path ran)."""
    calls: list[int] = []
    original = fused.fused_conv_pool

    def counting(*args: object) -> torch.Tensor:
        calls.append(1)
        return original(*args)  # type: ignore[arg-type]

    fused.fused_conv_pool = counting  # type: ignore[assignment]
    try:
        yield calls
    finally:
        fused.fused_conv_pool = original  # type: ignore[assignment]


def _run(stage: nn.Module, x: torch.Tensor, fast: bool, create_graph: bool = False) -> dict[str, torch.Tensor]:
    stage.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    with _counted_fusions() as calls, fast_input_gradients(stage) if fast else torch.enable_grad():
        out = stage(xg)
        loss = (out.square() * torch.linspace(0.5, 1.5, out.numel()).view_as(out)).sum()
        (grad,) = torch.autograd.grad(loss, xg, create_graph=create_graph, retain_graph=True)
        loss.backward(retain_graph=create_graph)
    assert bool(calls) == fast, "the path under test ran"
    conv = stage[0]
    bias = conv.bias.grad if conv.bias is not None else torch.zeros(())
    return {"out": out.detach(), "strides": torch.tensor(out.stride()), "input": grad.detach(),
            "weight": conv.weight.grad, "bias": bias, "graph": grad}


@pytest.mark.parametrize("in_channels,width,kernel,bias", [(1, 32, 3, True), (1, 64, 3, True), (3, 32, 3, False),
                                                           (1, 40, 5, True), (2, 24, 3, True)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_values_layout_and_every_gradient_equal_pytorchs(in_channels: int, width: int, kernel: int, bias: bool,
                                                          channels_last: bool) -> None:
    stage = _stage(in_channels, width, kernel, bias, channels_last)
    x = _images(channels=in_channels)
    plain, fast = _run(stage, x, fast=False), _run(stage, x, fast=True)
    assert torch.equal(plain["strides"], fast["strides"])  # the layout PyTorch's convolution gives
    for what in ("out", "input", "weight", "bias"):
        a, b = plain[what], fast[what]
        assert a.shape == b.shape, what
        assert (a - b).abs().max() <= 1e-5 * max(1.0, float(a.abs().max())), what


@pytest.mark.parametrize("in_channels", [1, 3])  # the kernel's 16-lane path, and its general one
def test_ties_and_nan_pick_pytorchs_window_position(in_channels: int) -> None:
    stage = _stage(in_channels=in_channels)
    x = _images(channels=in_channels)
    x[0] = 0.0  # a whole image of ties
    x[1, 0, 5, 6] = float("nan")
    plain, fast = _run(stage, x, fast=False), _run(stage, x, fast=True)
    assert torch.equal(plain["out"].isnan(), fast["out"].isnan()) and fast["out"].isnan().any()
    a, b = plain["input"][2:], fast["input"][2:]
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    # where the gradient lands: the first maximum of each window, or the NaN
    assert torch.equal(plain["input"][0] != 0, fast["input"][0] != 0)
    assert torch.equal(plain["input"][1].isnan(), fast["input"][1].isnan())


def test_second_derivatives_through_the_fused_gradient() -> None:
    stage = _stage(width=16)
    x = _images(n=3)
    plain, fast = _run(stage, x, fast=False, create_graph=True), _run(stage, x, fast=True, create_graph=True)

    def weight_second(run: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.autograd.grad(run["graph"].square().sum(), stage[0].weight)[0]

    a, b = weight_second(plain), weight_second(fast)
    assert (a - b).abs().max() <= 1e-5 * float(a.abs().max())


def test_only_the_images_gradient_skips_the_parameters_branch() -> None:
    stage = _stage()
    x = _images().requires_grad_(True)
    with fast_input_gradients(stage):
        out = stage(x)
    seen: list[str] = []
    node = out.grad_fn
    while node is not None and not seen:  # ReLU, then the fused node with the token behind it
        if type(node).__name__ == "_ImagesGradientBackward":
            token = node.next_functions[2][0]
            seen.append(type(token).__name__)
            token.register_prehook(lambda grads: seen.append("ran") or None)  # type: ignore[func-returns-value]
        node = node.next_functions[0][0] if node.next_functions else None
    assert seen == ["_ParametersGradientBackward"]
    torch.autograd.grad(out.sum(), x, retain_graph=True)
    assert seen == ["_ParametersGradientBackward"]  # autograd pruned it: nobody asked for the weights
    out.sum().backward()
    assert seen[-1] == "ran" and stage[0].weight.grad is not None


def test_a_result_does_not_depend_on_its_batch_or_the_thread_count() -> None:
    stage = _stage()
    x = _images(n=9)

    def pooled_and_grad(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xg = images.clone().requires_grad_(True)
        with fast_input_gradients(stage):
            out = stage(xg)
        return out.detach(), torch.autograd.grad(out.square().sum(), xg)[0]

    whole = pooled_and_grad(x)
    part = pooled_and_grad(x[4:7])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = pooled_and_grad(x)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(whole, part):
        assert torch.equal(a[4:7], b)
    for a, b in zip(whole, single):
        assert torch.equal(a, b)


def test_scope_restores_the_modules_and_reentry_fuses_once() -> None:
    model = SmallCNN().eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    with fast_input_gradients(model):
        assert "forward" in model.body.__dict__
        with fast_input_gradients(model):
            assert "forward" in model.body.__dict__
        assert "forward" in model.body.__dict__  # the inner block leaves the outer one's fusion alone
    assert "forward" not in model.body.__dict__ and fused._PAIRS not in model.body.__dict__


def _fused_calls(stage: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    with _counted_fusions() as calls, torch.no_grad(), fast_input_gradients(stage):
        out = stage(x)
    return len(calls), out


def test_no_fusion_for_a_hooked_layer_another_dtype_or_odd_sizes() -> None:
    stage = _stage()
    x = _images()
    with torch.no_grad():
        reference = stage(x)
    calls, out = _fused_calls(stage, x)
    assert calls == 1 and (out - reference).abs().max() <= 1e-5
    for images in (x[:, :, :11, :11], x[:, :, :, :7]):
        calls, out = _fused_calls(stage, images)
        with torch.no_grad():
            assert calls == 0 and torch.equal(out, stage(images))  # PyTorch's own layers: the same bits
    calls, out = _fused_calls(stage.double(), x.double())
    stage.float()
    assert calls == 0
    for hooked in (stage[0], stage[1]):
        handle = hooked.register_forward_hook(lambda *_: None)
        try:
            calls, out = _fused_calls(stage, x)
        finally:
            handle.remove()
        assert calls == 0 and torch.equal(out, reference)


def test_switched_off_or_without_a_compiler_pytorchs_layers_run(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: object) -> None:
    stage = _stage()
    x = _images()
    with torch.no_grad():
        reference = stage(x)
    monkeypatch.setenv(fused.SWITCH, "0")
    with torch.no_grad(), fast_input_gradients(stage):
        assert "forward" not in stage.__dict__
        assert torch.equal(stage(x), reference)
    monkeypatch.delenv(fused.SWITCH)
    # a fresh process with no compiler and an empty cache: no kernel, no warning, PyTorch's layers
    code = ("import warnings, torch; warnings.simplefilter('error');"
            "from advrepair.engine.fused_conv_pool import fused_conv_pool_available;"
            "print(fused_conv_pool_available())")
    env = {"PATH": "/nonexistent", "CC": "/nonexistent/cc", "ADVREPAIR_NATIVE_CACHE": str(tmp_path),
           "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_zoo_sized_repair_gradient_within_rounding_and_torchs_openmp_threads_used() -> None:
    torch.manual_seed(3)
    model = SmallCNN().eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))

    def input_grad(fast: bool) -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        with fast_input_gradients(model, enabled=fast):
            return torch.autograd.grad(F.cross_entropy(model(xg), y), xg)[0]

    plain, fast = input_grad(False), input_grad(True)
    assert (fast - plain).abs().max() <= 1e-5 * plain.abs().max()
    assert openmp_runtime() is not None  # this torch runs on OpenMP: the kernel shares its threads


def test_models_copied_inside_the_block_are_not_left_fused() -> None:
    model = SmallCNN().eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x = _images(n=2, size=28)
    with fast_input_gradients(model):
        clone = copy.deepcopy(model)
        with torch.no_grad():
            assert (clone(x) - model(x)).abs().max() <= 1e-5
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))  # outside the block: PyTorch's layers, the same bits


def test_no_graph_outlives_its_step_with_create_graph() -> None:
    """The unrolled repair differentiates through the fused layer with create_graph=True while the
    weights require grad; nothing the fused nodes keep may tie a step's graph into a cycle that
    outlives it (it did: 0.3 GB more per attack step until the demo's machine ran out)."""
    import gc
    import weakref

    stage = _stage()
    assert all(p.requires_grad for p in stage.parameters())
    x = _images().requires_grad_(True)
    with fast_input_gradients(stage):
        out = stage(x)
        (grad,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)  # the image's only
    alive = weakref.ref(out)
    del out, grad
    gc.collect()
    assert alive() is None
