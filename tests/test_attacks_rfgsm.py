"""R+FGSM: equal to torchattacks' RFGSM (one step, alpha = eps / 2) given the same random
signs; seeded per image; budget, box and error paths."""
import pytest
import torch
import torchattacks

from advrepair.attacks import RFGSM, make_attack
from advrepair.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_equals_torchattacks_rfgsm_given_the_same_random_signs(trained_cnn, shapes_test, monkeypatch):
    x, y = shapes_test.tensors(range(32))
    ours = RFGSM(trained_cnn, eps=0.1, seed=3)
    signs = ours.random_signs(x)
    # torchattacks draws sign(randn): hand it our signs, and both compute the same steps
    monkeypatch.setattr(torchattacks.attacks.rfgsm.torch, "randn_like", lambda t: signs.clone())
    theirs = torchattacks.RFGSM(trained_cnn, eps=0.1, alpha=0.05, steps=1)(x, y)
    adv = ours(x, y)
    assert torch.equal(adv, theirs)
    clean = (trained_cnn(x).argmax(1) == y).float().mean()
    assert (trained_cnn(adv).argmax(1) == y).float().mean() < clean


def test_seeded_per_image_in_budget_and_box(trained_cnn, shapes_test):
    x, y = shapes_test.tensors(range(8))
    attack = RFGSM(trained_cnn, eps=0.1, alpha=0.03, seed=0)
    adv = attack(x, y)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert torch.equal(attack(x[:3], y[:3]), adv[:3])
    assert not torch.equal(RFGSM(trained_cnn, eps=0.1, alpha=0.03, seed=1)(x, y), adv)
    signs = attack.random_signs(x)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    assert make_attack("rfgsm", trained_cnn, eps=0.1).params() == {
        "name": "rfgsm", "eps": 0.1, "norm": "Linf", "seed": 0, "alpha": 0.05, "steps": 1}


@pytest.mark.parametrize("kw, match", [(dict(eps=0.1, alpha=0.1), "below eps"), (dict(eps=0.1, alpha=0.0), "alpha"),
                                       (dict(eps=-0.1), "eps")])
def test_bad_arguments_raise_input_errors(random_cnn, kw, match):
    with pytest.raises(InputError, match=match):
        RFGSM(random_cnn, **kw)
