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


@pytest.fixture()
def small_defense(trained_cnn, shapes_train):
    from advrepair.ssl import ContrastiveHead, ContrastiveTask
    from advrepair.training import SSLRecipe, train_ssl_task

    torch.manual_seed(0)
    task = ContrastiveTask(ContrastiveHead(trained_cnn.feature_dim, 32, 16), n_views=2,
                           negatives=shapes_train.tensors(torch.arange(32))[0])
    train_ssl_task(task, trained_cnn, shapes_train.subset(torch.arange(512)), SSLRecipe(epochs=1), progress=False)
    return ReverseAttack(trained_cnn, task, eps_v=0.2, steps=3)


def test_defense_aware_pgd_with_lambda_zero_is_pgd(trained_cnn, shapes_test, small_defense):
    from advrepair.adaptive import DefenseAwarePGD

    x, y = shapes_test.tensors(torch.arange(32))
    plain = PGD(trained_cnn, eps=0.16, alpha=0.02, steps=5)(x, y)
    aware = DefenseAwarePGD(trained_cnn, small_defense, lambda_s=0.0, eps=0.16, alpha=0.02, steps=5)
    assert torch.equal(aware(x, y), plain)
    assert aware.params()["lambda_s"] == 0.0 and aware.params()["defense"] == "reverse-attack"


def test_defense_aware_pgd_keeps_the_ssl_loss_low(trained_cnn, shapes_test, small_defense):
    from advrepair.adaptive import DefenseAwarePGD

    x, y = shapes_test.tensors()  # 200 images: single-draw L_s values are noisy per image
    plain = DefenseAwarePGD(trained_cnn, small_defense, lambda_s=0.0, eps=0.16, alpha=0.02, steps=10)(x, y)
    aware = DefenseAwarePGD(trained_cnn, small_defense, lambda_s=1.0, eps=0.16, alpha=0.02, steps=10)(x, y)
    diff = small_defense.ssl_loss(plain) - small_defense.ssl_loss(aware)
    assert diff.mean() > 3 * diff.std() / len(diff) ** 0.5


def test_lambda_sweep_rows_and_figure(tmp_path, trained_cnn, shapes_test, small_defense):
    from advrepair.adaptive import lambda_sweep
    from advrepair.report.figures import lambda_sweep_figure

    x, y = shapes_test.tensors(torch.arange(24))
    rows = lambda_sweep(trained_cnn, small_defense, x, y, [0.0, 1.0], eps=0.16, alpha=0.04, steps=3)
    assert [r["lambda_s"] for r in rows] == [0.0, 1.0] and all(r["n_images"] == 24 for r in rows)
    assert all(0 <= r["accuracy_repaired"] <= 1 for r in rows)
    assert lambda_sweep_figure(rows, tmp_path / "fig4.png").stat().st_size > 1000


class RandomOutput(nn.Module):
    """A defended model with random output: the randomness flag must fire."""

    def __init__(self, model, noise=0.3):
        super().__init__()
        self.model, self.noise = model, noise

    def forward(self, x):
        return self.model((x + self.noise * torch.randn_like(x)).clamp(0, 1))


def test_randomness_flag_fires_only_on_a_random_model(random_cnn):
    from advrepair.adaptive import randomness_flag

    x = torch.rand(4, 1, 28, 28)
    assert randomness_flag(RandomOutput(random_cnn), x)["fired"]
    assert not randomness_flag(random_cnn, x)["fired"]


def test_gradient_flag_fires_on_a_zero_gradient_defense(random_cnn):
    from advrepair.adaptive import gradient_flag

    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    fired = gradient_flag(nn.Sequential(Quantize(), random_cnn), x, y)
    assert fired["fired"] and "4 of 4" in fired["detail"]
    assert not gradient_flag(random_cnn, x, y)["fired"]
    assert not gradient_flag(nn.Sequential(BPDA(Quantize()), random_cnn), x, y)["fired"]


def test_black_box_and_monotonicity_flags():
    from advrepair.adaptive import black_box_flag, monotonicity_flag

    assert black_box_flag({"pgd": 0.6, "apgd-ce": 0.55}, {"square": 0.40})["fired"]
    assert not black_box_flag({"pgd": 0.3}, {"square": 0.40})["fired"]
    assert monotonicity_flag([(10, 0.5), (20, 0.45), (40, 0.52)])["fired"]
    assert not monotonicity_flag([(10, 0.5), (20, 0.45), (40, 0.40)])["fired"]


def test_randomized_accuracy_any_draw_is_stricter(trained_cnn, shapes_test):
    from advrepair.adaptive import randomized_accuracy

    torch.manual_seed(0)
    x, y = shapes_test.tensors()
    scores = randomized_accuracy(RandomOutput(trained_cnn, noise=0.6), x, y, draws=8)
    assert scores["all_draws_accuracy"] < scores["mean_accuracy"] < 1.0
    fixed = randomized_accuracy(trained_cnn, x, y, draws=3)
    assert fixed["mean_accuracy"] == fixed["all_draws_accuracy"]
