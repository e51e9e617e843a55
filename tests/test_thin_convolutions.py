"""The input gradient of thin convolutions by taps (engine/thin_convolutions.py) against
PyTorch's own convolution backward: values, weight gradients, second derivatives, scope."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrepair.attacks import PGD
from advrepair.engine import fast_input_gradients, is_thin_convolution, tap_input_gradients_enabled
from advrepair.models import SmallCNN

GEOMETRIES = [
    dict(in_channels=1, kernel_size=3, padding=1),
    dict(in_channels=3, kernel_size=3, padding=1, bias=False),
    dict(in_channels=1, kernel_size=5, padding=2, stride=2),
    dict(in_channels=3, kernel_size=3, padding=0, stride=2),
    dict(in_channels=2, kernel_size=(3, 1), padding=(1, 0)),
    dict(in_channels=1, kernel_size=3, padding=2, dilation=2),
    dict(in_channels=3, kernel_size=3, padding=1, stride=(1, 2), dilation=(2, 1)),
]


def _input_and_param_grads(conv: nn.Conv2d, x: torch.Tensor, fast: bool) -> tuple[torch.Tensor, ...]:
    conv.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    with fast_input_gradients(conv) if fast else torch.enable_grad():
        out = conv(xg)
        assert (type(out.grad_fn).__name__ == "_TapInputGradientBackward") == fast  # the path under test ran
        (out.square().sum() + out.sum()).backward()
    bias = conv.bias.grad if conv.bias is not None else torch.zeros(())
    assert xg.grad is not None and conv.weight.grad is not None and bias is not None
    return out.detach(), xg.grad, conv.weight.grad, bias


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: ",".join(f"{k}={v}" for k, v in g.items()))
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_equal_pytorchs_convolution_backward(geometry: dict, channels_last: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(out_channels=32, **geometry).double()
    x = torch.randn(3, geometry["in_channels"], 11, 10, dtype=torch.float64)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x = x.contiguous(memory_format=torch.channels_last)
    assert is_thin_convolution(conv)
    plain = _input_and_param_grads(conv, x, fast=False)
    fast = _input_and_param_grads(conv, x, fast=True)
    assert torch.equal(plain[0], fast[0])  # the forward is the same convolution
    for what, a, b in zip(["input", "weight", "bias"], plain[1:], fast[1:]):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), what


def test_float32_input_gradient_within_rounding_on_a_zoo_sized_cnn() -> None:
    torch.manual_seed(1)
    model = SmallCNN().eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))

    def input_grad() -> torch.Tensor:
        xg = x.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(xg), y), xg)[0]

    plain = input_grad()
    with fast_input_gradients(model) as covered:
        fast = input_grad()
    assert covered == 1  # the 1-channel first layer; the 32-channel second is left to oneDNN
    assert (fast - plain).abs().max() <= 1e-5 * plain.abs().max()
    assert torch.equal(fast.sign(), plain.sign()) or (fast.sign() != plain.sign()).float().mean() < 1e-3


def test_second_derivatives_stay_exact() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 18, 3, padding=1).double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)

    def gradient_norm(inputs: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(torch.tanh(conv(inputs)).sum(), inputs, create_graph=True)
        return g.square().sum()

    (plain,) = torch.autograd.grad(gradient_norm(x), x)
    with fast_input_gradients(conv):
        (fast,) = torch.autograd.grad(gradient_norm(x), x)
        assert torch.autograd.gradgradcheck(lambda z: conv(z), (x,))
    assert torch.allclose(plain, fast, rtol=1e-12, atol=1e-12)


def test_only_asking_for_the_input_gradient_leaves_parameters_alone() -> None:
    conv = nn.Conv2d(1, 9, 3, padding=1)
    x = torch.rand(2, 1, 6, 6, requires_grad=True)
    with fast_input_gradients(conv):
        torch.autograd.grad(conv(x).sum(), x)
    assert conv.weight.grad is None and conv.bias is not None and conv.bias.grad is None


@pytest.mark.parametrize("conv", [
    nn.Conv2d(8, 128, 3),                              # 72 taps: oneDNN's own kernel is faster
    nn.Conv2d(3, 16, 3),                               # fewer outputs than taps: likewise
    nn.Conv2d(2, 32, 3, groups=2),
    nn.Conv2d(1, 32, 3, padding=1, padding_mode="reflect"),
    nn.Conv2d(1, 32, 3, padding="same"),
    nn.Conv1d(1, 4, 3),
], ids=["many-taps", "few-outputs", "grouped", "reflect-padding", "string-padding", "conv1d"])
def test_layers_it_does_not_cover(conv: nn.Module) -> None:
    assert not is_thin_convolution(conv)
    with fast_input_gradients(conv) as covered:
        assert covered == 0


def test_subclasses_with_their_own_forward_are_left_alone() -> None:
    class Standardized(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = self.weight - self.weight.mean()
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    class Plain(nn.Conv2d):
        pass

    assert not is_thin_convolution(Standardized(1, 16, 3))
    assert is_thin_convolution(Plain(1, 16, 3))


def test_non_modules_pass_through() -> None:
    with fast_input_gradients(lambda x: x) as covered:
        assert covered == 0


def test_reentrant_and_leaves_no_trace_behind() -> None:
    model = SmallCNN()
    first = model.body[0]
    with fast_input_gradients(model) as outer:
        with fast_input_gradients(model) as inner:
            assert (outer, inner) == (1, 0)
        assert len(first._forward_pre_hooks) == 1  # the inner block left the outer's cover alone
        model(torch.rand(2, 1, 28, 28, requires_grad=True)).sum().backward()
    assert not first._forward_pre_hooks and not first._forward_hooks
    assert not [k for k in vars(first) if k.startswith("_advrepair")]


def test_a_failing_forward_keeps_no_input_alive() -> None:
    class Failing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x, "unexpected")

    model = Failing()
    with pytest.raises(TypeError), fast_input_gradients(model):
        model(torch.rand(1, 1, 5, 5, requires_grad=True))
    assert not [k for k in vars(model.conv) if k.startswith("_advrepair")]


def _double_first_weight(model: nn.Module) -> None:
    with torch.no_grad():
        next(model.parameters()).mul_(2)


def test_a_copy_made_inside_the_block_computes_its_own_gradients() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 9, 3, padding=1), nn.Tanh())
    with fast_input_gradients(model):
        twin = copy.deepcopy(model)
    _double_first_weight(twin)
    x = torch.rand(2, 1, 5, 5, requires_grad=True)
    (fast,) = torch.autograd.grad(twin(x).sum(), x)
    reference = copy.deepcopy(model)
    _double_first_weight(reference)
    (plain,) = torch.autograd.grad(reference(x).sum(), x)
    assert torch.allclose(fast, plain, atol=1e-6)


def test_attacks_run_with_it() -> None:
    seen: list[int] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 16, 3, padding=1)
            self.head = nn.Linear(16 * 8 * 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(self.conv._forward_pre_hooks))
            return self.head(self.conv(x).flatten(1))

    model = Probe()
    PGD(model, eps=0.1, alpha=0.05, steps=2)(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    assert seen and all(n == 1 for n in seen)
    assert not model.conv._forward_pre_hooks


def test_the_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADVREPAIR_TAP_INPUT_GRADIENTS", "0")
    assert not tap_input_gradients_enabled()
    with fast_input_gradients(nn.Conv2d(1, 16, 3)) as covered:
        assert covered == 0
    monkeypatch.delenv("ADVREPAIR_TAP_INPUT_GRADIENTS")
    assert tap_input_gradients_enabled()


def test_autocast_passes_keep_pytorchs_own_backward() -> None:
    conv = nn.Conv2d(1, 16, 3, padding=1)
    x = torch.rand(2, 1, 6, 6, requires_grad=True)
    with fast_input_gradients(conv), torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16 and type(out.grad_fn).__name__ != "_TapInputGradientBackward"
    (grad,) = torch.autograd.grad(out.float().sum(), x)
    assert grad.dtype == torch.float32
