"""NRP (naseer2020): purifier and critic, Algorithm 2 training, the defense and its checkpoints."""
import json

import pytest
import torch
from torch import nn

from advrepair.attacks.ssp import DISTANCES, SSP, LayerFeatures
from advrepair.defenses.purifier import NRPDefense, load_purifier, save_purifier, state_dict_sha256
from advrepair.errors import CheckpointError, InputError
from advrepair.models.checkpoint import ModelCard, save_checkpoint
from advrepair.models.purifier import Critic, Purifier
from advrepair.training.purifier import (PurifierRecipe, pixel_loss, random_crops, relativistic_loss,
                                         train_purifier)
from conftest import make_shapes

LAYER = "body.3"  # the small CNN's second convolution block (after its ReLU), a mid-level layer
TINY = dict(width=8, growth=4, dense_blocks=1, dense_layers=3)
EPS = 0.1


def _tiny_purifier(seed: int = 0, **kw) -> Purifier:
    torch.manual_seed(seed)
    return Purifier(1, **{**TINY, **kw})


@pytest.fixture(scope="module")
def trained(trained_cnn):
    """A tiny purifier trained by Algorithm 2 for 64 steps (32 images, batch 8, 16 epochs, SSP-3)."""
    untrained = _tiny_purifier()
    purifier = _tiny_purifier()
    torch.manual_seed(0)
    critic = Critic(1, input_size=28, width=8, blocks=2)
    recipe = PurifierRecipe(epochs=16, batch_size=8, lr=3e-3, critic_lr=1e-3, ssp_eps=EPS, ssp_alpha=0.04,
                            ssp_steps=3, layer=LAYER)
    history = train_purifier(purifier, critic, trained_cnn, None, make_shapes(32, seed=5), recipe,
                             progress=False)
    return purifier, untrained, critic, history, recipe


def test_ssp_with_the_training_distance_raises_feature_distortion_inside_its_budget(trained_cnn, shapes_test):
    x, _ = shapes_test.tensors(torch.arange(32))
    attack = SSP(trained_cnn, eps=EPS, alpha=0.02, steps=5, layer=LAYER, distance="mae", seed=3)
    adv = attack(x, None)
    assert (adv - x).abs().max() <= EPS + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    noise = (x + EPS * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))).clamp(0, 1)
    ssp_d, noise_d = attack.feature_distortion(x, adv), attack.feature_distortion(x, noise)
    assert (ssp_d > 1.5 * noise_d).float().mean() > 0.9, (ssp_d.mean(), noise_d.mean())


def test_training_makes_the_purifier_undo_ssp_better_than_identity(trained, trained_cnn, shapes_test):
    purifier, untrained, _critic, history, _recipe = trained
    # held-out images, attacked with another seed than any training batch
    x, _ = shapes_test.tensors(torch.arange(64))
    adv = SSP(trained_cnn, eps=EPS, alpha=0.02, steps=10, layer=LAYER, distance="mae", seed=12345)(x, None)
    features, d = LayerFeatures(trained_cnn, LAYER), DISTANCES["mae"]
    with torch.no_grad():
        f_clean = features(x)
        identity = (pixel_loss(adv, x).mean(), d(features(adv), f_clean).mean())
        purified = purifier(adv)
        ours = (pixel_loss(purified, x).mean(), d(features(purified), f_clean).mean())
        raw = untrained(adv)
        before = (pixel_loss(raw, x).mean(), d(features(raw), f_clean).mean())
    # the paper's claim: P(x') is closer to x than x' itself, in pixels (Eq. 6) and in features (Eq. 5)
    assert ours[0] < 0.95 * identity[0], (ours, identity)
    assert ours[1] < 0.6 * identity[1], (ours, identity)
    # the untrained purifier is far worse than doing nothing, so the comparison above can fail
    assert before[0] > 2 * identity[0] and before[1] > identity[1], (before, identity)


def test_training_history_records_the_losses_and_they_fall(trained):
    *_, history, recipe = trained
    assert len(history) == recipe.epochs
    keys = {"epoch", "pixel", "feature", "adv", "total", "critic", "ssp_pixel", "ssp_feature"}
    assert set(history[0]) == keys
    first, last = history[0], history[-1]
    assert last["feature"] < 0.5 * first["feature"] and last["pixel"] < 0.5 * first["pixel"]
    assert last["feature"] < last["ssp_feature"] and last["pixel"] < last["ssp_pixel"]
    # the SSP baseline really is an attack: within eps (||.||_2 <= eps * sqrt(784) = 2.8) and nonzero
    assert 0.5 < last["ssp_pixel"] <= EPS * 28 + 1e-4
    # Eq. 8 with the paper's weights
    for row in history:
        expected = recipe.alpha * row["adv"] + recipe.gamma * row["pixel"] + recipe.lam * row["feature"]
        assert row["total"] == pytest.approx(expected, rel=1e-4)


def test_training_is_reproducible_from_the_seed(trained_cnn):
    data = make_shapes(8, seed=9)
    recipe = PurifierRecipe(epochs=1, batch_size=4, lr=1e-3, ssp_eps=EPS, ssp_alpha=0.05, ssp_steps=1, layer=LAYER)
    runs = []
    for _ in range(2):
        p = _tiny_purifier(seed=1)
        torch.manual_seed(1)
        c = Critic(1, input_size=28, width=4, blocks=1)
        train_purifier(p, c, trained_cnn, None, data, recipe, progress=False)
        runs.append(p)
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(a, b)
    assert all(p.requires_grad for p in trained_cnn.parameters())  # the extractor is unfrozen afterwards


@pytest.mark.parametrize("output", ["sigmoid", "clamp"])
def test_purifier_outputs_are_images_for_any_input(output):
    g = torch.Generator().manual_seed(0)
    cases = [(0.0, 0.0), (1.0, 0.5), (1e4, 0.0), (10.0, -1e3), (10.0, 1e3)]
    cases += [(float(10 ** (8 * torch.rand(1, generator=g)) - 1), float(2e3 * torch.rand(1, generator=g) - 1e3))
              for _ in range(10)]
    for k, (scale, shift) in enumerate(cases):
        p = _tiny_purifier(seed=k % 3, output=output)
        if k % 2:  # large weights push the pre-output far outside [0, 1]
            with torch.no_grad():
                p.tail[-1].weight.mul_(100)
        x = scale * torch.randn(2, 1, 12, 12, generator=g) + shift
        with torch.no_grad():
            y = p(x)
        assert y.shape == x.shape and torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1, (scale, shift)
        assert k > 0 or y.min() < y.max()  # not a constant output


def test_purifier_sizes_and_channels():
    p = Purifier(3, width=8, growth=4, dense_blocks=1)
    for side in (28, 32):
        assert p(torch.rand(2, 3, side, side)).shape == (2, 3, side, side)
    assert Purifier().config["in_channels"] == 1 and Purifier().config["dense_layers"] == 5


def test_purifier_has_no_input_to_output_skip():
    x = torch.rand(4, 1, 28, 28)
    for part in ("tail", "head"):  # zero the last or the first convolution: the input must vanish
        p = _tiny_purifier(seed=2)
        conv = p.tail[-1] if part == "tail" else p.head
        with torch.no_grad():
            conv.weight.zero_()
            if part == "head":
                conv.bias.zero_()
            y = p(x)
        assert torch.allclose(y, y[:1].expand_as(y), atol=1e-7), part
        assert not torch.allclose(y, x, atol=0.1)
    # control: the intact network does depend on its input
    p = _tiny_purifier(seed=2)
    with torch.no_grad():
        y = p(x)
    assert not torch.allclose(y, y[:1].expand_as(y), atol=1e-5)


def test_critic_structure_and_relativistic_losses():
    c = Critic(3, input_size=32, width=4, blocks=3)
    assert c(torch.rand(5, 3, 32, 32)).shape == (5,)
    kinds = {type(m) for m in c.modules()}
    assert {nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU, nn.Linear} <= kinds and c.linear.out_features == 1
    real, fake = torch.full((4,), 5.0), torch.full((4,), -5.0)
    # the critic is happy when real looks more real than fake; the purifier is happy when it's reversed
    assert relativistic_loss(real, fake, for_critic=True) < 0.01 < relativistic_loss(fake, real, for_critic=True)
    assert relativistic_loss(fake, real, for_critic=False) < 0.01 < relativistic_loss(real, fake, for_critic=False)
    assert relativistic_loss(real, real, for_critic=True) == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_random_crops_are_windows_of_the_padded_image():
    x = torch.rand(6, 1, 28, 28)
    crops = random_crops(x, 28, 2, torch.Generator().manual_seed(0))
    again = random_crops(x, 28, 2, torch.Generator().manual_seed(0))
    assert crops.shape == x.shape and torch.equal(crops, again)
    padded = nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        windows = padded[i, 0].unfold(0, 28, 1).unfold(1, 28, 1)  # (5, 5, 28, 28)
        assert (windows == crops[i, 0]).flatten(2).all(2).any()
    small = random_crops(x, 16, 0, torch.Generator().manual_seed(0))
    assert small.shape == (6, 1, 16, 16)
    with pytest.raises(InputError, match="exceeds"):
        random_crops(x, 40, 2, torch.Generator())


def test_dynamic_defense_is_batch_independent_and_inside_its_ball(trained):
    purifier = trained[0]
    x, _ = make_shapes(6, seed=4).tensors()
    defense = NRPDefense(purifier, dynamic=True, eps=16 / 255, sigma=0.05, seed=7)
    noisy = defense.noisy(x)
    assert (noisy - x).abs().max() <= 16 / 255 + 1e-6 and noisy.min() >= 0 and noisy.max() <= 1
    assert (noisy - x).abs().max() > 0.05
    with torch.no_grad():
        full = defense(x)
        alone = torch.cat([defense(x[i:i + 1]) for i in range(6)])
        perm = torch.tensor([3, 0, 5, 1, 4, 2])
        mixed = defense(torch.cat([x[perm], make_shapes(3, seed=11).tensors()[0]]))[:6]
        plain = NRPDefense(purifier)(x)
        other_seed = NRPDefense(purifier, dynamic=True, seed=8)(x)
    assert torch.allclose(full, alone, atol=1e-6) and torch.allclose(full[perm], mixed, atol=1e-6)
    assert torch.equal(defense.noisy(x[perm]), noisy[perm])
    assert not torch.allclose(full, plain, atol=1e-4) and not torch.allclose(full, other_seed, atol=1e-4)
    unseeded = NRPDefense(purifier, dynamic=True, seed=None)
    assert not torch.equal(unseeded.noisy(x), unseeded.noisy(x))
    assert defense.params()["sigma"] == 0.05 and "sigma" not in NRPDefense(purifier).params()
    json.dumps(defense.params())


def test_defense_composes_with_a_classifier_and_keeps_gradients(trained, trained_cnn):
    defended = nn.Sequential(NRPDefense(trained[0], dynamic=True, seed=0), trained_cnn)
    x = make_shapes(4, seed=2).tensors()[0].requires_grad_(True)
    defended(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_save_load_round_trip(tmp_path, trained, trained_cnn):
    purifier, *_, recipe = trained
    save_purifier(purifier, tmp_path / "nrp", feature_model=trained_cnn, layer=LAYER, recipe=recipe.to_dict(),
                  dataset="shapes", seed=0)
    loaded, card = load_purifier(tmp_path / "nrp", feature_model=trained_cnn)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), purifier(x))
    assert card.kind == "purifier" and card.arch == "nrp-purifier" and card.recipe["lam"] == 1.0
    assert card.parent == {"feature_model_sha256": state_dict_sha256(trained_cnn),
                           "feature_model_sha256_of": "state_dict", "layer": LAYER}
    defense = NRPDefense.from_checkpoint(tmp_path / "nrp", dynamic=True, seed=1)
    assert defense.params()["layer"] == LAYER and defense.params()["weights_sha256"] == card.weights_sha256
    # another extractor, another kind of checkpoint, a card without the extractor: refused
    torch.manual_seed(5)
    from advrepair.models import SmallCNN
    other = SmallCNN(num_classes=4, width=8, feature_dim=32)
    with pytest.raises(CheckpointError, match="another feature extractor"):
        load_purifier(tmp_path / "nrp", feature_model=other)
    save_checkpoint(other, tmp_path / "cnn", ModelCard(kind="classifier", arch=other.arch, config=other.config))
    with pytest.raises(CheckpointError, match="expected 'purifier'"):
        load_purifier(tmp_path / "cnn")
    save_checkpoint(purifier, tmp_path / "bare", ModelCard(kind="purifier", arch=purifier.arch,
                                                           config=purifier.config))
    with pytest.raises(CheckpointError, match="feature extractor"):
        load_purifier(tmp_path / "bare")
    # a checkpoint SHA-256 works as the extractor's identity too
    save_purifier(purifier, tmp_path / "by-sha", feature_model="ab" * 32, layer=None)
    assert load_purifier(tmp_path / "by-sha", feature_model="AB" * 32)[1].parent["layer"] is None


def test_bad_arguments_raise_input_error(trained_cnn):
    p = _tiny_purifier()
    bad_recipes = [dict(alpha=-1.0), dict(gamma=float("nan")), dict(epochs=0), dict(batch_size=1),
                   dict(ssp_steps=-1), dict(distance="wasserstein"), dict(crop_size=0), dict(lr=0.0)]
    for kw in bad_recipes:
        with pytest.raises(InputError):
            PurifierRecipe(**kw)
    with pytest.raises(InputError, match="output"):
        Purifier(output="tanh")
    with pytest.raises(InputError, match="in_channels"):
        Purifier(in_channels=0)
    with pytest.raises(InputError, match=r"\(B, 1, H, W\)"):
        p(torch.rand(2, 3, 28, 28))
    with pytest.raises(InputError, match="critic takes"):
        Critic(1, input_size=28)(torch.rand(2, 1, 32, 32))
    data = make_shapes(4, seed=0)
    recipe = PurifierRecipe(epochs=1, batch_size=2, layer=LAYER)
    with pytest.raises(InputError, match="input_size=28"):
        train_purifier(p, Critic(1, input_size=32), trained_cnn, None, data, recipe, progress=False)
    with pytest.raises(InputError, match="conflicts with recipe.layer"):
        train_purifier(p, Critic(1), trained_cnn, "body.0", data, recipe, progress=False)
    with pytest.raises(InputError, match="channels"):
        train_purifier(Purifier(3, **TINY), Critic(3), trained_cnn, None, data, recipe, progress=False)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        train_purifier(p, Critic(1), trained_cnn, None, torch.rand(4, 1, 28, 28) * 2, recipe, progress=False)
    with pytest.raises(InputError, match="no layer"):
        train_purifier(p, Critic(1), trained_cnn, None, data, PurifierRecipe(layer="conv9"), progress=False)
    with pytest.raises(InputError, match="PurifierRecipe"):
        train_purifier(p, Critic(1), trained_cnn, None, data, {"epochs": 1}, progress=False)
    for kw in (dict(sigma=-0.1), dict(eps=-1.0), dict(seed=-1), dict(dynamic="yes")):
        with pytest.raises(InputError):
            NRPDefense(p, **kw)
    with pytest.raises(InputError, match="Purifier"):
        NRPDefense(nn.Identity())
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        NRPDefense(p)(torch.rand(2, 1, 28, 28) + 1)
    with pytest.raises(InputError, match="SHA-256"):
        save_purifier(p, "unused", feature_model="not-a-hash", layer=None)
