"""BPDA and EOT: the gradients they promise."""
import pytest
import torch
from torch import nn

from advrepair.adaptive import BPDA, EOT
from advrepair.attacks import PGD
from advrepair.defenses import ReverseAttack
from advrepair.errors import InputError
from advrepair.ssl import ContrastiveHead, ContrastiveTask


class Quantize(nn.Module):
    """A non-differentiable toy defense (zero gradient almost everywhere)."""

    def forward(self, x):
        return torch.round(x * 4) / 4


class Smooth(nn.Module):
    def forward(self, x):
        return torch.sigmoid(8 * (x - 0.5))


def _grad(module, x, weights):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((module(x) * weights).sum(), x)
    return g


def test_bpda_forward_is_the_defense_and_gradient_is_the_surrogates():
    torch.manual_seed(0)
    x, w = torch.rand(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    assert torch.equal(BPDA(Quantize())(x), Quantize()(x))
    assert torch.equal(_grad(BPDA(Quantize()), x, w), w)  # identity surrogate
    assert torch.allclose(_grad(BPDA(Quantize(), Smooth()), x, w), _grad(Smooth(), x, w))
    assert torch.equal(_grad(Quantize(), x, w), torch.zeros_like(w))  # why BPDA is needed


def test_bpda_makes_a_reverse_attack_attackable(random_cnn):
    torch.manual_seed(0)
    task = ContrastiveTask(ContrastiveHead(32, 16, 8), n_views=2, negatives=torch.rand(8, 1, 28, 28))
    defense = ReverseAttack(random_cnn, task, eps_v=0.1, steps=2)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    adv = PGD(nn.Sequential(BPDA(defense), random_cnn), eps=0.05, alpha=0.02, steps=2)(x, y)
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and not torch.equal(adv, x)
    assert BPDA(defense).params()["defense"]["name"] == "reverse-attack"


def test_eot_with_one_draw_equals_the_plain_model_and_its_gradient(random_cnn):
    torch.manual_seed(0)
    x, w = torch.rand(3, 1, 28, 28), torch.randn(3, 10)
    assert torch.allclose(EOT(random_cnn, draws=1)(x), random_cnn(x))
    assert torch.allclose(_grad(EOT(random_cnn, draws=1), x, w), _grad(random_cnn, x, w))


def test_eot_averages_the_gradient_over_batched_draws():
    class Noisy(nn.Module):
        """y = x * s with a random sign s per call and image: E[dy/dx] = 0, one draw is +-1."""

        def forward(self, x):
            s = torch.where(torch.rand(x.shape[0], 1, 1, 1) < 0.5, -1.0, 1.0)
            return (x * s).flatten(1)

    torch.manual_seed(0)
    x = torch.rand(2, 1, 2, 2)
    one = _grad(Noisy(), x, torch.ones(2, 4)).abs()
    many = _grad(EOT(Noisy(), draws=400), x, torch.ones(2, 4)).abs()
    assert torch.equal(one, torch.ones_like(one))
    assert many.max() < 0.2  # ~ 1/sqrt(400) * 2 standard deviations
    with pytest.raises(InputError, match="draws"):
        EOT(Noisy(), draws=0)
