"""Runtime helpers: device names, autocast precision, channels-last layout."""
from __future__ import annotations

import pytest
import torch

from advrepair.attacks.registry import make_attack
from advrepair.errors import InputError
from advrepair.models.small_cnn import SmallCNN
from advrepair.runtime import (PRECISIONS, AutocastModule, autocast_context, parse_precision, prepare_images,
                               prepare_module, resolve_device)

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per op): on this CNN the logits move
# by 0.4-0.6 % of their largest magnitude (measured on 3 seeds); we allow 2 %.
BF16_RELATIVE_TOLERANCE = 0.02


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cnn(seed: int = 0, channels: int = 1) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(in_channels=channels, num_classes=10, width=8, feature_dim=32,
                    mean=(0.3,) * channels, std=(0.3,) * channels).eval()


def _images(n: int = 16, channels: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, 28, 28, generator=torch.Generator().manual_seed(seed))


def _relative_gap(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).abs().max() / ref.abs().max())


# ---------------------------------------------------------------- devices

def test_auto_picks_cuda_only_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device(" AUTO ") == torch.device("cuda")


def test_explicit_devices_are_checked(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(InputError, match="1 CUDA device"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "meta", 3, None])
def test_unknown_devices_are_refused(name):
    with pytest.raises(InputError):
        resolve_device(name)


def test_mps_is_refused_where_missing(monkeypatch):
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)
    with pytest.raises(InputError, match="MPS"):
        resolve_device("mps")


# ---------------------------------------------------------------- precision

def test_precision_names_and_aliases():
    assert PRECISIONS == ("fp32", "bf16", "fp16")
    assert [parse_precision(p) for p in ("FP32", "float32", "bfloat16", "bf16", "half", "float16")] == \
        ["fp32", "fp32", "bf16", "bf16", "fp16", "fp16"]


@pytest.mark.parametrize("bad", ["fp8", "int8", "", "bf-16", None, 16.0])
def test_bad_precision_names_are_refused(bad):
    with pytest.raises(InputError, match="precision"):
        parse_precision(bad)
    with pytest.raises(InputError, match="precision"):
        autocast_context("cpu", bad)


def test_fp16_is_refused_on_the_cpu():
    with pytest.raises(InputError, match="fp16.*CUDA"):
        autocast_context("cpu", "fp16")
    with pytest.raises(InputError, match="fp16.*CUDA"):
        AutocastModule(_cnn(), "cpu", "fp16")


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    model, x = _cnn(), _images()
    with torch.no_grad():
        ref = model(x)
        with autocast_context("cpu", "bf16"):
            low = model(x)
    assert low.dtype == torch.bfloat16, "the forward pass must really run in bf16"
    gap = _relative_gap(low, ref)
    assert 0 < gap <= BF16_RELATIVE_TOLERANCE


def test_fp32_switches_off_an_enclosing_autocast():
    model, x = _cnn(), _images(4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with autocast_context("cpu", "fp32"):
            out = model(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, model(x), atol=1e-6)


def test_autocast_module_returns_float32_and_is_attackable():
    model = _cnn()
    fast = AutocastModule(model, "cpu", "bf16")
    x = _images(8)
    with torch.no_grad():
        out, ref = fast(x), model(x)
    assert out.dtype == torch.float32
    assert 0 < _relative_gap(out, ref) <= BF16_RELATIVE_TOLERANCE
    assert fast.num_classes == 10 and fast.features(x).shape == (8, 32)  # the model's attributes show through
    y = ref.argmax(1)
    adv = make_attack("pgd", fast, eps=0.05, alpha=0.01, steps=3)(x, y)
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.dtype == torch.float32
    with torch.no_grad():
        assert torch.nn.functional.cross_entropy(model(adv), y) > torch.nn.functional.cross_entropy(ref, y)


# ---------------------------------------------------------------- channels last

def test_channels_last_gives_the_same_outputs():
    ref_model, model = _cnn(channels=3), _cnn(channels=3)
    x = _images(8, channels=3)
    prepared = prepare_module(model, "cpu", channels_last=True)
    assert prepared is model
    conv = model.body[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert model.head.weight.is_contiguous()  # 2-D parameters keep their layout
    xl = prepare_images(x, "cpu", channels_last=True)
    assert xl.is_contiguous(memory_format=torch.channels_last) and torch.equal(xl, x)
    with torch.no_grad():
        torch.testing.assert_close(model(xl), ref_model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x), ref_model(x), atol=1e-5, rtol=1e-5)


def test_prepare_without_channels_last_keeps_the_layout_and_refuses_non_modules():
    model = prepare_module(_cnn(), "cpu", channels_last=False)
    assert model.body[0].weight.is_contiguous()
    with pytest.raises(InputError, match="nn.Module"):
        prepare_module(lambda z: z, "cpu")
    with pytest.raises(InputError, match="4-D"):
        prepare_images(torch.rand(3, 8, 8), "cpu")
    with pytest.raises(InputError):
        prepare_module(_cnn(), "tpu")


# ---------------------------------------------------------------- CUDA (run where a GPU is lent)

@cuda_only
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_cuda_is_close_to_fp32(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = prepare_module(_cnn(channels=3), "cuda", channels_last=True)
    x = prepare_images(_images(16, channels=3), "cuda", channels_last=True)
    with torch.no_grad():
        with autocast_context("cuda", "fp32"):
            ref = model(x)
        low = AutocastModule(model, "cuda", precision)(x)
    assert low.dtype == torch.float32 and low.device.type == "cuda"
    assert _relative_gap(low, ref) <= BF16_RELATIVE_TOLERANCE


@cuda_only
def test_channels_last_on_cuda_matches_cpu():
    cpu_model, x = _cnn(channels=3), _images(8, channels=3)
    gpu_model = prepare_module(_cnn(channels=3), "cuda", channels_last=True)
    with torch.no_grad(), autocast_context("cuda", "fp32"):
        out = gpu_model(prepare_images(x, "cuda", channels_last=True)).cpu()
    # TF32 convolutions (if enabled) round to 10 mantissa bits
    torch.testing.assert_close(out, cpu_model(x), atol=2e-3, rtol=2e-3)
