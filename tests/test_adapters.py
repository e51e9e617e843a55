"""Model adapters: wrap_model, from_timm and from_robustbench with stand-in libraries.

Neither timm nor a working robustbench is needed: fake modules are put into sys.modules
(monkeypatch), so the tests never download anything.
"""
from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrepair.attacks.registry import make_attack
from advrepair.errors import InputError
from advrepair.models import registry as model_registry
from advrepair.models.adapters import (IMAGENET_MEAN, IMAGENET_STD, WrappedClassifier, WrappedFeatureClassifier,
                                       from_robustbench, from_timm, timm_architecture, wrap_model)
from advrepair.models.checkpoint import ModelCard, load_checkpoint, save_checkpoint

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyNet(nn.Module):
    """conv-relu-pool-fc on normalized images; any input size (global pooling)."""

    def __init__(self, in_chans: int = 3, num_classes: int = 5, width: int = 6, **_: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def pooled(self, z: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv(z))).flatten(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(z))

    def get_classifier(self) -> nn.Module:
        return self.fc


def _tiny(seed: int = 0, **kwargs) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**kwargs).eval()


def _normalized(x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


# ---------------------------------------------------------------- wrap_model

def test_wrap_model_normalizes_inside_and_infers_attributes():
    net = _tiny()
    model = wrap_model(net, MEAN, STD, feature_layer="pool")
    x = torch.rand(4, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(model(x), net(_normalized(x)), atol=1e-6)
        assert not torch.allclose(model(x), net(x), atol=1e-3), "normalization must change the logits"
    assert isinstance(model, WrappedFeatureClassifier)
    assert (model.num_classes, model.in_channels, model.feature_dim) == (5, 3, 6)
    assert model.input_size is None  # never guessed
    assert model.config["mean"] == list(MEAN) and model.config["num_classes"] == 5


def test_features_read_the_named_layer_and_are_differentiable():
    net = _tiny()
    model = wrap_model(net, MEAN, STD, input_size=12, feature_layer="pool")
    x = torch.rand(3, 3, 12, 12, requires_grad=True)
    feats = model.features(x)
    assert feats.shape == (3, 6)
    assert torch.allclose(feats, net.pooled(_normalized(x)), atol=1e-6)
    feats.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the input of the head is the same representation
    head_in = wrap_model(net, MEAN, STD, input_size=12, feature_layer="fc", feature_from="input")
    assert torch.allclose(head_in.features(x), feats, atol=1e-6)
    assert model.input_size == 12


def test_features_stop_the_forward_pass_at_the_layer():
    net = _tiny()
    model = wrap_model(net, MEAN, STD, feature_layer="conv")
    calls = []
    handle = net.fc.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = model.features(torch.rand(2, 3, 8, 8))
    finally:
        handle.remove()
    assert out.shape == (2, 6 * 8 * 8)
    assert calls == [], "the head must not run for a feature read"


def test_without_feature_layer_there_is_no_features_method():
    model = wrap_model(_tiny(), MEAN, STD)
    assert type(model) is WrappedClassifier
    assert not hasattr(model, "features") and model.feature_dim is None


def test_dry_run_leaves_mode_and_batchnorm_statistics_alone():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).train()
    before = net[1].running_mean.clone()
    model = wrap_model(net, [0.5], [0.5])
    assert net.training and model.training
    assert torch.equal(net[1].running_mean, before)
    assert model.in_channels == 1 and model.num_classes == 3


def test_input_size_is_needed_when_the_probe_sizes_do_not_fit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 10 * 10, 4))
    with pytest.raises(InputError, match="input_size"):
        wrap_model(net, MEAN, STD)
    model = wrap_model(net, MEAN, STD, input_size=10)
    assert model.num_classes == 4 and model.input_size == 10
    # (H, W) works and a non-square size is kept as a pair
    net2 = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 10, 2))
    assert wrap_model(net2, MEAN, STD, input_size=(6, 10)).input_size == (6, 10)


@pytest.mark.parametrize("mean,std,match", [
    ((0.5, 0.5), STD, "one value per input channel"),
    (MEAN, (0.2, 0.2, 0.2, 0.2), "one value per input channel"),
    (MEAN, (0.2, 0.0, 0.3), "std must be > 0"),
    (MEAN, (0.2, -0.1, 0.3), "std must be > 0"),
    ((0.4, float("nan"), 0.6), STD, "finite"),
    ("abc", STD, "sequence of numbers"),
    ((), STD, "empty"),
])
def test_bad_mean_or_std_is_refused(mean, std, match):
    with pytest.raises(InputError, match=match):
        wrap_model(_tiny(), mean, std)


def test_other_bad_arguments_are_refused():
    net = _tiny()
    with pytest.raises(InputError, match="no submodule 'layer9'"):
        wrap_model(net, MEAN, STD, feature_layer="layer9")
    with pytest.raises(InputError, match="num_classes=7 but the module returns 5"):
        wrap_model(net, MEAN, STD, num_classes=7)
    with pytest.raises(InputError, match="feature_from"):
        wrap_model(net, MEAN, STD, feature_layer="pool", feature_from="middle")
    with pytest.raises(InputError, match="nn.Module"):
        wrap_model(lambda z: z, MEAN, STD)
    with pytest.raises(InputError, match="input_size"):
        wrap_model(net, MEAN, STD, input_size=(0, 4))
    with pytest.raises(InputError, match="in_channels"):
        wrap_model(net, MEAN, STD, in_channels=0)
    # a module that returns feature maps, not logits
    with pytest.raises(InputError, match=r"logits of shape \(B, classes\)"):
        wrap_model(nn.Conv2d(3, 2, 1), MEAN, STD)
    # a channel count that disagrees with the module: the dry run fails with a clear message
    with pytest.raises(InputError, match="dry run"):
        wrap_model(net, [0.5], [0.5], in_channels=1)


def test_probability_outputs_warn_but_logits_do_not():
    net = _tiny()
    with pytest.warns(UserWarning, match="probabilities"):
        wrap_model(nn.Sequential(net, nn.Softmax(dim=1)), MEAN, STD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrap_model(net, MEAN, STD)


def test_our_attacks_run_on_a_wrapped_model():
    model = wrap_model(_tiny(), MEAN, STD, input_size=12, feature_layer="pool")
    x = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    adv = make_attack("pgd", model, eps=0.1, alpha=0.02, steps=5)(x, y)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(x), y, reduction="none")
        adv_loss = F.cross_entropy(model(adv), y, reduction="none")
    assert (adv_loss > clean_loss).all(), "PGD must raise every image's loss on the wrapped model"
    # a label-free feature attack reads the wrapped model's features
    ssp = make_attack("ssp", model, eps=0.05, steps=2)(x, None)
    assert (ssp - x).abs().max() <= 0.05 + 1e-6 and not torch.equal(ssp, x)


# ---------------------------------------------------------------- timm

def _fake_timm(monkeypatch, cfg_attr: str | None = "pretrained_cfg", cfg: dict | None = None) -> list[dict]:
    calls: list[dict] = []

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3, **kwargs):
        calls.append(dict(name=name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs))
        net = _tiny(in_chans=in_chans, num_classes=num_classes)
        if cfg_attr is not None:
            setattr(net, cfg_attr, dict(cfg if cfg is not None else
                                        {"mean": MEAN, "std": STD, "input_size": (3, 16, 16),
                                         "num_classes": num_classes}))
        return net

    fake = types.ModuleType("timm")
    fake.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", fake)
    return calls


def test_from_timm_uses_the_models_config(monkeypatch):
    calls = _fake_timm(monkeypatch)
    model = from_timm("tiny_net", num_classes=7, drop_rate=0.1)
    assert calls == [dict(name="tiny_net", pretrained=False, num_classes=7, in_chans=3, drop_rate=0.1)]
    assert (model.num_classes, model.in_channels, model.input_size) == (7, 3, 16)
    assert model.source == "timm:tiny_net" and model.arch == "timm"
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net(_normalized(x)), atol=1e-6)
    # features default to the input of the classifier head: the pooled representation
    assert model.feature_layer == "fc" and model.feature_dim == 6
    assert torch.allclose(model.features(x), model.net.pooled(_normalized(x)), atol=1e-6)


def test_from_timm_falls_back_to_default_cfg_then_imagenet(monkeypatch):
    _fake_timm(monkeypatch, cfg_attr="default_cfg")
    assert from_timm("old_timm").normalize.mean.flatten().tolist() == pytest.approx(MEAN)
    _fake_timm(monkeypatch, cfg_attr=None)
    model = from_timm("no_cfg", feature_layer="conv")
    assert model.normalize.mean.flatten().tolist() == pytest.approx(IMAGENET_MEAN)
    assert model.normalize.std.flatten().tolist() == pytest.approx(IMAGENET_STD)
    assert model.feature_layer == "conv" and model.feature_from == "output"


def test_from_timm_with_other_channel_counts_averages_mean_and_std(monkeypatch):
    _fake_timm(monkeypatch)
    model = from_timm("gray", in_chans=1, num_classes=3)
    assert model.in_channels == 1
    assert model.normalize.mean.flatten().tolist() == pytest.approx([sum(MEAN) / 3])
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 3)


def test_from_timm_without_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(InputError, match="pip install timm"):
        from_timm("resnet18")


def test_saved_timm_model_loads_back(monkeypatch, tmp_path):
    _fake_timm(monkeypatch)
    monkeypatch.setitem(model_registry._BUILDERS, "timm", timm_architecture)
    model = from_timm("tiny_net", num_classes=4)
    save_checkpoint(model, tmp_path / "tiny", ModelCard(kind="classifier", arch=model.arch, config=model.config))
    loaded, card = load_checkpoint(tmp_path / "tiny")
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert card.config["name"] == "tiny_net" and loaded.feature_dim == 6


# ---------------------------------------------------------------- RobustBench

def _fake_robustbench(monkeypatch, num_classes: int = 10) -> list[dict]:
    calls: list[dict] = []

    def load_model(model_name, model_dir="./models", dataset="cifar10", threat_model="Linf"):
        calls.append(dict(model_name=model_name, model_dir=model_dir, dataset=dataset, threat_model=threat_model))
        return _tiny(num_classes=num_classes)

    package = types.ModuleType("robustbench")
    utils = types.ModuleType("robustbench.utils")
    utils.load_model = load_model
    package.utils = utils
    monkeypatch.setitem(sys.modules, "robustbench", package)
    monkeypatch.setitem(sys.modules, "robustbench.utils", utils)
    return calls


def test_from_robustbench_keeps_the_models_own_normalization(monkeypatch, tmp_path):
    calls = _fake_robustbench(monkeypatch)
    model = from_robustbench("Standard", threat_model="l2", model_dir=str(tmp_path))
    assert calls == [dict(model_name="Standard", model_dir=str(tmp_path), dataset="cifar10", threat_model="L2")]
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model.net(x))  # mean 0, std 1: the identity
    assert (model.num_classes, model.input_size, model.in_channels) == (10, 32, 3)
    assert model.source == "robustbench:cifar10/L2/Standard"


def test_from_robustbench_errors(monkeypatch):
    _fake_robustbench(monkeypatch, num_classes=10)
    with pytest.raises(InputError, match="dataset"):
        from_robustbench("Standard", dataset="mnist")
    with pytest.raises(InputError, match="threat model"):
        from_robustbench("Standard", threat_model="L1")
    with pytest.raises(InputError, match="num_classes=100"):
        from_robustbench("Standard", dataset="cifar100")  # the loaded model has 10 classes
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    with pytest.raises(InputError, match="robustbench"):
        from_robustbench("Standard")
