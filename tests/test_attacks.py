"""FGSM and PGD: budget invariants, error paths and agreement with torchattacks."""
import pytest
import torch
import torchattacks

from advrepair.attacks import FGSM, PGD, make_attack, parse_spec
from advrepair.errors import InputError


def _batch(ds, n=64):
    return ds.tensors(torch.arange(n))


def test_fgsm_equals_torchattacks(trained_cnn, shapes_test):
    x, y = _batch(shapes_test)
    ours = FGSM(trained_cnn, eps=0.1)(x, y)
    theirs = torchattacks.FGSM(trained_cnn, eps=0.1)(x, y)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_pgd_without_random_start_equals_torchattacks(trained_cnn, shapes_test):
    x, y = _batch(shapes_test)
    ours = PGD(trained_cnn, eps=0.1, alpha=0.02, steps=10, random_start=False)(x, y)
    theirs = torchattacks.PGD(trained_cnn, eps=0.1, alpha=0.02, steps=10, random_start=False)(x, y)
    # sign() of a gradient that is exactly zero may differ; everything else is the same arithmetic
    assert (ours - theirs).abs().gt(1e-5).float().mean() < 0.01


def test_pgd_robust_accuracy_agrees_with_torchattacks(trained_cnn, shapes_test):
    x, y = shapes_test.tensors()
    torch.manual_seed(0)
    ours = PGD(trained_cnn, eps=0.16, alpha=0.02, steps=20, seed=0)(x, y)
    theirs = torchattacks.PGD(trained_cnn, eps=0.16, alpha=0.02, steps=20)(x, y)
    with torch.no_grad():
        acc_ours = (trained_cnn(ours).argmax(1) == y).float().mean().item()
        acc_theirs = (trained_cnn(theirs).argmax(1) == y).float().mean().item()
        clean = (trained_cnn(x).argmax(1) == y).float().mean().item()
    assert clean > 0.8, "the fixture model should have learned the shapes"
    assert acc_ours < clean - 0.2, "PGD should hurt a standard model"
    assert abs(acc_ours - acc_theirs) <= 0.06  # 200 images; random starts differ (s.e. ~3.5 points)


@pytest.mark.parametrize("norm, eps", [("Linf", 0.05), ("L2", 1.0)])
def test_pgd_stays_in_budget_and_box(random_cnn, norm, eps):
    torch.manual_seed(1)
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    adv = PGD(random_cnn, eps=eps, alpha=eps / 4, steps=5, norm=norm, restarts=2)(x, y)
    d = (adv - x).flatten(1)
    size = d.abs().max(1).values if norm == "Linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1


def test_pgd_is_reproducible_and_batch_independent(random_cnn):
    torch.manual_seed(2)
    x = torch.rand(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    attack = PGD(random_cnn, eps=0.1, alpha=0.02, steps=3, seed=5)
    full = attack(x, y)
    halves = torch.cat([attack(x[:4], y[:4]), attack(x[4:], y[4:])])
    assert torch.allclose(full, halves, atol=1e-6)
    assert not torch.allclose(full, PGD(random_cnn, eps=0.1, alpha=0.02, steps=3, seed=6)(x, y))


def test_restarts_never_do_worse_than_one_run(trained_cnn, shapes_test):
    x, y = _batch(shapes_test, 128)
    one = PGD(trained_cnn, eps=0.05, alpha=0.01, steps=5, seed=0)(x, y)
    many = PGD(trained_cnn, eps=0.05, alpha=0.01, steps=5, restarts=3, seed=0)(x, y)
    with torch.no_grad():
        fooled_one = trained_cnn(one).argmax(1) != y
        fooled_many = trained_cnn(many).argmax(1) != y
    assert (fooled_many | ~fooled_one).all()


def test_attack_restores_model_mode_and_counts_passes(random_cnn):
    random_cnn.train()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    attack = PGD(random_cnn, eps=0.1, alpha=0.02, steps=7)
    attack(x, y)
    assert random_cnn.training
    assert attack.stats.per_image() == {"forward_per_image": 7.0, "backward_per_image": 7.0}


def test_bad_arguments_and_inputs(random_cnn):
    with pytest.raises(InputError, match="eps must be >= 0"):
        PGD(random_cnn, eps=-1)
    with pytest.raises(InputError, match="steps"):
        PGD(random_cnn, steps=2.5)
    with pytest.raises(InputError, match="unknown loss"):
        PGD(random_cnn, loss="hinge")
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(InputError, match="NaN"):
        FGSM(random_cnn)(x * float("nan"), torch.tensor([0, 1]))
    with pytest.raises(InputError, match="< 10"):
        FGSM(random_cnn)(x, torch.tensor([0, 12]))
    with pytest.raises(InputError, match="shape"):
        FGSM(random_cnn)(x, torch.tensor([0]))


def test_probability_outputs_warn(random_cnn):
    softmaxed = torch.nn.Sequential(random_cnn, torch.nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match="probabilities"):
        FGSM(softmaxed)(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))


def test_registry_parses_specs_and_rejects_unknowns(random_cnn):
    name, params = parse_spec("pgd:eps=8/255,steps=20,random_start=false")
    assert name == "pgd" and params == {"eps": 8 / 255, "steps": 20, "random_start": False}
    attack = make_attack(name, random_cnn, **params)
    assert attack.params()["steps"] == 20
    with pytest.raises(InputError, match="unknown attack"):
        make_attack("deepfool", random_cnn)
    with pytest.raises(InputError, match="no parameters"):
        make_attack("fgsm", random_cnn, steps=3)
    with pytest.raises(InputError, match="key=value"):
        parse_spec("pgd:eps")
