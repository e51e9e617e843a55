"""Targeted modes: given targets, random, least likely; cross-checked against torchattacks."""
import pytest
import torch
import torchattacks

from advrepair.attacks import BIM, FGSM, MIFGSM, PGD, SSP
from advrepair.errors import InputError


def _batch(ds, n=64):
    return ds.tensors(torch.arange(n))


def test_given_targets_equal_torchattacks_targeted_pgd(trained_cnn, shapes_test):
    x, y = _batch(shapes_test)
    targets = (y + 1) % 4
    ours = PGD(trained_cnn, eps=0.16, alpha=0.02, steps=10, random_start=False).set_target_mode("given")(x, y, targets)
    ref = torchattacks.PGD(trained_cnn, eps=0.16, alpha=0.02, steps=10, random_start=False)
    ref.set_mode_targeted_by_label(quiet=True)
    theirs = ref(x, targets)
    assert (ours - theirs).abs().gt(1e-5).float().mean() < 0.01


def test_least_likely_equals_torchattacks(trained_cnn, shapes_test):
    x, y = _batch(shapes_test)
    ours = FGSM(trained_cnn, eps=0.1).set_target_mode("least-likely")(x, y)
    ref = torchattacks.FGSM(trained_cnn, eps=0.1)
    ref.set_mode_targeted_least_likely(quiet=True)
    assert torch.allclose(ours, ref(x, y), atol=1e-6)


def test_random_targets_differ_from_labels_and_are_reached(trained_cnn, shapes_test):
    x, y = _batch(shapes_test, 128)
    attack = PGD(trained_cnn, eps=0.3, alpha=0.03, steps=20).set_target_mode("random")
    targets = attack._choose_targets(x, y, None, 4)
    assert (targets != y).all() and set(targets.tolist()) == {0, 1, 2, 3}
    adv = attack(x, y)
    with torch.no_grad():
        hit = (trained_cnn(adv).argmax(1) == targets).float().mean()
    assert hit > 0.5
    assert attack.params()["target"] == "random"


def test_targeted_restarts_and_momentum_modes(trained_cnn, shapes_test):
    x, y = _batch(shapes_test, 32)
    t = (y + 2) % 4
    for attack in (PGD(trained_cnn, eps=0.2, alpha=0.03, steps=5, restarts=2), BIM(trained_cnn, eps=0.2),
                   MIFGSM(trained_cnn, eps=0.2)):
        adv = attack.set_target_mode("given")(x, y, t)
        assert (adv - x).abs().max() <= 0.2 + 1e-6


def test_targeted_errors(trained_cnn, shapes_test):
    x, y = _batch(shapes_test, 4)
    with pytest.raises(InputError, match="needs targets"):
        PGD(trained_cnn).set_target_mode("given")(x, y)
    with pytest.raises(InputError, match="untargeted"):
        PGD(trained_cnn)(x, y, y)
    with pytest.raises(InputError, match="unknown target mode"):
        PGD(trained_cnn).set_target_mode("most-likely")
    with pytest.raises(InputError, match="no targeted mode"):
        SSP(trained_cnn).set_target_mode("random")
    with pytest.raises(InputError, match="< 4"):
        PGD(trained_cnn).set_target_mode("given")(x, y, torch.tensor([0, 1, 2, 7]))
