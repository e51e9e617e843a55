"""SPSA: its gradient estimate on a linear model, agreement with torchattacks, budget and box,
per-image seeding, the query count it documents, early stopping, targets, and parameter errors.
Budget, box and batch independence on random images are also checked for every attack in
test_properties."""
from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from advrepair.attacks import SPSA, make_attack
from advrepair.attacks.losses import margin
from advrepair.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _linear(channels: int = 3, size: int = 8, classes: int = 4, seed: int = 0) -> nn.Module:
    """A logistic-regression-like model; classes 2.. sit far below, so the runner-up of
    label 0 is always class 1 and the margin is linear near the test points."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, classes))
    with torch.no_grad():
        model[1].weight.mul_(0.5)
        model[1].bias.copy_(torch.tensor([0.0, 0.0] + [-50.0] * (classes - 2)))
    return model.eval()


def _interior(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.25 + 0.5 * torch.rand(n, 3, 8, 8, generator=g)  # queries at +-delta never hit the box


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


class _Constant(nn.Module):
    """Logits that never change: the label-0 images are never fooled and the margin is flat."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([3.0, 0.0, -1.0]).expand(x.shape[0], 3) + 0 * x.flatten(1)[:, :1]


def test_gradient_estimate_points_along_the_true_margin_gradient():
    model = _linear()
    x = _interior(4)
    y = torch.zeros(4, dtype=torch.long)
    xg = x.clone().requires_grad_(True)
    margin(model(xg), y).sum().backward()
    true = xg.grad
    attack = SPSA(model, eps=0.1, delta=0.01, samples=4096, seed=0)
    est = attack.estimate_gradient(x, y)
    cos = nn.functional.cosine_similarity(est.flatten(1), true.flatten(1), dim=1)
    assert (cos > 0.9).all(), cos  # ~0.98 expected: 1 / sqrt(1 + d / samples) with d = 192
    assert attack.stats.forward == 4 * 2 * 4096 and attack.stats.backward == 0
    # the estimate is unbiased, so its scale matches too (a few percent of noise)
    ratio = est.flatten(1).norm(dim=1) / true.flatten(1).norm(dim=1)
    assert ((ratio > 0.9) & (ratio < 1.2)).all(), ratio


def test_robust_accuracy_agrees_with_torchattacks(trained_cnn, shapes_test):
    x, y = shapes_test.tensors(torch.arange(64))
    # this model shrugs off eps=0.1 (PGD-20 leaves ~94%), so both run at eps=0.3 where
    # SPSA bites; the same settings, torchattacks' max_batch_size=8 keeps its passes at 512
    kw = dict(eps=0.3, delta=0.01, lr=0.08)
    ours = SPSA(trained_cnn, steps=5, samples=128, seed=0, **kw)(x, y)
    torch.manual_seed(0)  # torchattacks draws from the global generator
    theirs = torchattacks.SPSA(trained_cnn, nb_iter=5, nb_sample=128, max_batch_size=8, **kw)(x, y)
    clean, acc_ours, acc_theirs = _acc(trained_cnn, x, y), _acc(trained_cnn, ours, y), _acc(trained_cnn, theirs, y)
    assert acc_ours <= clean - 0.15 and acc_theirs <= clean - 0.15, (clean, acc_ours, acc_theirs)
    # ours stops each image at its first success (never weaker), theirs returns the last iterate
    assert abs(acc_ours - acc_theirs) <= 0.15, (acc_ours, acc_theirs)
    assert (ours - x).abs().max() <= 0.3 + 1e-6 and ours.min() >= 0 and ours.max() <= 1


def test_result_stays_in_budget_and_box_and_ignores_batch_mates(trained_cnn, shapes_test):
    x, y = shapes_test.tensors(torch.arange(8))
    attack = SPSA(trained_cnn, eps=0.2, lr=0.05, steps=3, samples=16, seed=3)
    full = attack(x, y)
    assert full.shape == x.shape and full.dtype == x.dtype
    assert (full - x).abs().max() <= 0.2 + 1e-6 and full.min() >= 0 and full.max() <= 1
    assert (full != x).any()
    alone = attack(x[:3], y[:3])
    assert torch.equal(full[:3], alone), (full[:3] - alone).abs().max()
    assert torch.equal(SPSA(trained_cnn, eps=0.2, lr=0.05, steps=3, samples=16, seed=3)(x, y), full)
    other = SPSA(trained_cnn, eps=0.2, lr=0.05, steps=3, samples=16, seed=4)(x, y)
    assert not torch.equal(other, full)
    # seed=None draws from torch's global generator: reproducible only through it
    torch.manual_seed(5)
    free = SPSA(trained_cnn, eps=0.2, lr=0.05, steps=3, samples=16, seed=None)(x, y)
    torch.manual_seed(5)
    assert torch.equal(SPSA(trained_cnn, eps=0.2, lr=0.05, steps=3, samples=16, seed=None)(x, y), free)


@pytest.mark.parametrize("max_batch", [2, 7, 512])
def test_query_count_matches_the_documented_count(max_batch):
    x = torch.rand(5, 1, 6, 6)
    y = torch.zeros(5, dtype=torch.long)
    attack = SPSA(_Constant(), eps=0.1, steps=3, samples=6, max_batch=max_batch)
    adv = attack(x, y)
    assert attack.queries_per_image() == 3 * (2 * 6 + 1)
    assert attack.stats.forward == 5 * attack.queries_per_image() and attack.stats.backward == 0
    assert attack.stats.images == 5
    assert torch.equal(adv, x)  # a flat margin gives a zero gradient and Adam stays put


def test_an_image_stops_at_its_first_misclassified_iterate():
    model = _linear()
    x = _interior(6)
    with torch.no_grad():
        y = model(x).argmax(1)
    attack = SPSA(model, eps=0.5, lr=0.5, steps=10, samples=256)  # one full step fools a linear model
    adv = attack(x, y)
    assert (model(adv).argmax(1) != y).all()
    assert attack.stats.forward == 6 * (2 * 256 + 1)  # one step each, then no more queries
    # and against a target
    targeted = SPSA(model, eps=0.5, lr=0.5, steps=10, samples=256).set_target_mode("given")
    targets = (y + 1) % 2
    hit = targeted(x, y, targets)
    assert (model(hit).argmax(1) == targets).all()


def test_registered_with_every_setting_in_params(trained_cnn):
    attack = make_attack("spsa", trained_cnn, eps=0.1, delta=0.02, lr=0.03, steps=4, samples=8, max_batch=64,
                         seed=7)
    assert isinstance(attack, SPSA)
    assert attack.params() == dict(name="spsa", eps=0.1, norm="Linf", seed=7, delta=0.02, lr=0.03, steps=4,
                                   samples=8, max_batch=64)


@pytest.mark.parametrize("bad, message", [
    (dict(eps=-0.1), "eps must be >= 0"),
    (dict(delta=0.0), "delta must be > 0"),
    (dict(delta=-0.01), "delta must be > 0"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(samples=0), "samples must be an integer >= 1"),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(steps=2.5), "steps must be an integer >= 1"),
    (dict(max_batch=1), "max_batch must be an integer >= 2"),
    (dict(norm="L2"), "SPSA is an L-inf attack"),
])
def test_parameter_errors_name_the_problem(bad, message):
    with pytest.raises(InputError, match=message):
        SPSA(_linear(), **{"eps": 0.1, **bad})
