"""Device placement without a GPU: what runs on the images' device stays there.

This machine has no CUDA, so three kinds of checks stand in for it:

- representative attacks, defenses and the evaluation harness run on CPU inputs and must
  return on the inputs' device (a stray ``.cpu()`` or a CPU-only result shows up here);
- spies check that the evaluation entry points place the defenses' own modules (heads,
  f_b, JPEG tables) on the evaluation device, not only the classifier;
- the pure tensor code of a few defenses runs on "meta" tensors (shapes, dtypes and a
  device, no data) with the modules left on the CPU: PyTorch's device checks fire there as
  they do on a GPU. Code that reads values (validation, ``.item()``) cannot run there.

The GPU versions of these paths are the ``cuda_only`` tests in test_runtime.py.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

import advrepair
from advrepair.attacks.registry import make_attack
from advrepair.defenses import (DifferentiableJPEG, JPEGCompression, MedianFilter, NRPDefense, RandomResizePad,
                                ReverseAttack, TotalVariation)
from advrepair.evaluation import AttackSpec, ModelEntry, ResultsStore, evaluate_matrix
from advrepair.evaluation.adaptive import AdaptiveConfig, DefenseUnderTest, run_adaptive
from advrepair.models.purifier import Purifier
from advrepair.models.small_cnn import SmallCNN
from advrepair.runtime import prepare_images, prepare_module
from advrepair.ssl import ContrastiveHead, ContrastiveTask
from conftest import make_shapes

SRC = Path(advrepair.__file__).resolve().parent


def _cnn(channels: int = 1, classes: int = 4) -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(in_channels=channels, num_classes=classes, width=8, feature_dim=16,
                    mean=(0.3,) * channels, std=(0.3,) * channels).eval()


def _batch(n: int = 4, channels: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, 28, 28, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------ results stay on the inputs' device

# one of each family: sign steps from a random start, momentum + input diversity, APGD's
# bookkeeping, score-based and decision-based search over per-image CPU generators
ATTACKS = {
    "pgd": {"steps": 2}, "difgsm": {"steps": 2}, "apgd-ce": {"steps": 2}, "square": {"n_queries": 4},
    "hopskipjump": {"steps": 1, "max_queries": 120, "init_num_evals": 4, "init_size": 4},
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_return_on_the_images_device(name):
    model, x = _cnn(), _batch()
    y = model(x).argmax(1)
    adv = make_attack(name, model, eps=0.1, **ATTACKS[name])(x, y)
    assert adv.device == x.device and adv.dtype == x.dtype and adv.shape == x.shape


def test_defenses_return_on_the_images_device():
    model, x = _cnn(), _batch()
    task = ContrastiveTask(ContrastiveHead(16, 8, 8), n_views=2, negatives=_batch(6))
    defenses = [ReverseAttack(model, task, eps_v=0.1, steps=2), DifferentiableJPEG(75), JPEGCompression(75),
                TotalVariation(0.1, solver="bregman", keep_prob=0.5, max_iter=5), MedianFilter(3),
                RandomResizePad(seed=0), NRPDefense(Purifier(1, width=4, dense_blocks=1, dense_layers=1),
                                                    dynamic=True)]
    for defense in defenses:
        out = defense(x)
        assert out.device == x.device and out.shape == x.shape, type(defense).__name__


def test_fab_runs_on_a_channels_last_model():
    """Channels-last weights give channels-last input gradients (on the CPU as on CUDA);
    FAB used to ``view`` them flat, which needs the default layout."""
    model = prepare_module(_cnn(channels=3), "cpu", channels_last=True)
    x = prepare_images(_batch(channels=3), "cpu", channels_last=True)
    y = model(x).argmax(1)
    adv = make_attack("fab", model, eps=0.1, steps=2)(x, y)
    assert adv.device == x.device and (adv - x).abs().max() <= 0.1 + 1e-6


# ------------------------------------------------------------------ the entry points place the defenses

class _Spy(nn.Module):
    """An identity defense with a buffer that records where ``.to`` sends it."""

    def __init__(self, with_surrogate: bool = False) -> None:
        super().__init__()
        self.register_buffer("one", torch.ones(()))
        self.moved_to: list[torch.device] = []
        self.surrogate = _Spy() if with_surrogate else None

    def to(self, *args, **kwargs):  # type: ignore[override]
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            self.moved_to.append(device)
            if self.surrogate is not None:
                self.surrogate.moved_to.append(device)
        return super().to(*args, **kwargs)

    def bpda_surrogate(self) -> nn.Module:
        assert self.surrogate is not None
        return self.surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.one  # fails if the buffer and the images are on different devices

    def params(self) -> dict:
        return {"name": "spy"}


def test_evaluate_matrix_places_the_defenses_on_its_device(tmp_path):
    data = make_shapes(6, seed=2)
    spy = _Spy()
    entry = ModelEntry("cnn", _cnn(), card={"weights_sha256": "x"}, defenses={"spy": spy})
    records = evaluate_matrix(data, [entry], [AttackSpec("clean"), AttackSpec("fgsm", {"eps": 0.1})],
                              ResultsStore(tmp_path), batch_size=4, device="auto", progress=False)
    assert len(records) == 4
    here = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert spy.moved_to and all(d.type == here.type for d in spy.moved_to)
    assert spy.one.device.type == here.type


def test_adaptive_protocol_resolves_auto_and_places_every_variant(tmp_path):
    data = make_shapes(6, seed=3)
    spy = _Spy(with_surrogate=True)
    config = AdaptiveConfig(eps=0.1, steps=1, unroll_steps=1, lambdas=(), square_queries=2, randomized_draws=1)
    target = DefenseUnderTest.build("spy", spy, config)
    assert target.unrolled is spy.surrogate
    summary = run_adaptive(data, ModelEntry("cnn", _cnn()), target, config, ResultsStore(tmp_path),
                           batch_size=6, device="auto", progress=False)  # "auto" used to reach torch.device()
    assert {"clean", "static", "bpda", "full-gradient", "square"} <= set(summary["rows"])
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert spy.moved_to and spy.surrogate.moved_to
    assert {d.type for d in spy.moved_to + spy.surrogate.moved_to} == {here}


# ------------------------------------------------------------------ a second device without a GPU

@pytest.fixture()
def other_device(monkeypatch):
    """``make(*shape)``: a tensor on the "meta" device, our stand-in for CUDA.

    Meta tensors have shapes, dtypes and a device but no data. PyTorch's device checks treat
    them as CUDA tensors are treated: mixing in a CPU tensor with dimensions raises, a 0-dim
    CPU tensor is allowed. Nothing can read their values, so the input validation (which
    checks the [0, 1] range) is bypassed here.
    """
    for module in ("advrepair.defenses.jpeg", "advrepair.ssl.augment"):
        monkeypatch.setattr(importlib.import_module(module), "check_images", lambda images, name="images": images)

    def make(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device="meta")

    return make


def test_the_stand_in_device_catches_a_cpu_table():
    """The premise of the tests below: mixing a CPU (8, 8) table into data elsewhere raises."""
    x = torch.empty(2, 8, 8, device="meta")
    with pytest.raises(RuntimeError, match="device"):
        x / torch.ones(8, 8)
    assert (x / torch.tensor(2.0)).device.type == "meta"  # as on CUDA, a CPU scalar is fine


@pytest.mark.parametrize("channels", [1, 3])
def test_differentiable_jpeg_follows_the_images_not_its_buffers(other_device, channels):
    """The quantization tables are CPU buffers until someone moves the module; the JPEG
    surrogate of the adaptive protocol (``jpeg.bpda_surrogate()``) used to be moved by no
    caller, so it must bring its tables to the images."""
    jpeg = DifferentiableJPEG(50)
    assert jpeg.luma_q.device.type == "cpu"
    out = jpeg(other_device(2, channels, 20, 20))
    assert out.device.type == "meta" and out.shape == (2, channels, 20, 20)


def test_augmentations_take_uniforms_from_the_cpu(other_device):
    """Tasks take their random numbers from the caller (the inpainting example draws them
    on the CPU); the contrastive views must move them to the images as inpainting does."""
    from advrepair.ssl import N_AUG_NUMBERS, augment

    u = torch.rand(3, N_AUG_NUMBERS, generator=torch.Generator().manual_seed(0))
    out = augment(other_device(3, 1, 28, 28), u)
    assert out.device.type == "meta" and out.shape == (3, 1, 28, 28)


# ------------------------------------------------------------------ source patterns that broke

def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield node


def test_no_flat_view_of_a_gradient():
    """An input gradient has the layout autograd chose (channels-last under channels-last
    weights): reshape it, never ``view`` it across C, H and W."""
    offenders = [f"{p.relative_to(SRC)}:{c.lineno}" for p in SRC.rglob("*.py") for c in _calls(p)
                 if c.func.attr == "view" and isinstance(c.func.value, ast.Name)
                 and c.func.value.id in ("grad", "grads")]
    assert not offenders, f".view() on a gradient (use .reshape): {offenders}"


def test_evaluation_resolves_device_names():
    """Evaluation entry points accept "auto" (resolve_device); torch.device() does not."""
    offenders = [f"{p.relative_to(SRC)}:{c.lineno}" for p in (SRC / "evaluation").rglob("*.py") for c in _calls(p)
                 if c.func.attr == "device" and isinstance(c.func.value, ast.Name) and c.func.value.id == "torch"
                 and not all(isinstance(a, ast.Constant) for a in c.args)]
    assert not offenders, f"torch.device(<argument>) in evaluation (use runtime.resolve_device): {offenders}"


def test_training_takes_auto_and_refuses_unknown_devices():
    from conftest import make_shapes

    from advrepair.errors import InputError
    from advrepair.models import SmallCNN
    from advrepair.training import ClassifierRecipe, train_classifier

    model = SmallCNN(num_classes=4, width=4, feature_dim=8)
    history = train_classifier(model, make_shapes(16), ClassifierRecipe(epochs=1, batch_size=8), device="auto",
                               progress=False)
    assert len(history) == 1 and next(model.parameters()).device.type in ("cpu", "cuda")
    with pytest.raises(InputError, match="unknown device"):
        train_classifier(model, make_shapes(8), ClassifierRecipe(epochs=1, batch_size=8), device="gpu-please",
                         progress=False)
