import pytest
import torch

from advrepair.attacks.ssp import SSP, LayerFeatures
from advrepair.errors import InputError


def test_ssp_raises_feature_distortion_inside_its_budget(trained_cnn, shapes_test):
    x, _ = shapes_test.tensors(torch.arange(64))
    attack = SSP(trained_cnn, eps=0.1, alpha=0.01, steps=10, layer="body.3")
    adv = attack(x, None)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    noise = (x + 0.1 * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
    # the optimized perturbation distorts the features far more than random noise of the same size
    assert (attack.feature_distortion(x, adv) > 2 * attack.feature_distortion(x, noise)).float().mean() > 0.9
    assert attack.stats.per_image()["backward_per_image"] == 10


def test_ssp_is_label_free_and_hurts_the_classifier_more_than_noise(trained_cnn, shapes_test):
    x, y = shapes_test.tensors()
    adv = SSP(trained_cnn, eps=0.2, alpha=0.02, steps=20)(x, None)
    noise = (x + 0.2 * torch.sign(torch.randn_like(x))).clamp(0, 1)
    with torch.no_grad():
        noisy = (trained_cnn(noise).argmax(1) == y).float().mean()
        attacked = (trained_cnn(adv).argmax(1) == y).float().mean()
    assert attacked < noisy - 0.1, (attacked, noisy)


def test_layer_features_names_and_errors(trained_cnn):
    f = LayerFeatures(trained_cnn, "body.0")
    assert f(torch.rand(2, 1, 28, 28)).shape == (2, 8, 28, 28)
    with pytest.raises(InputError, match="no layer 'conv9'"):
        SSP(trained_cnn, layer="conv9")
    with pytest.raises(InputError, match="unknown distance"):
        SSP(trained_cnn, distance="wasserstein")
