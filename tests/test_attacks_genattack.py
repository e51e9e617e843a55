"""GenAttack (issue 17): close to PGD on the zoo's standard CNN within 10,000 queries, the query
budget it promises, its targeted mode, and the errors of its parameters. Budget, box, seeding
and batch independence are checked for every attack in test_properties."""
from __future__ import annotations

import pytest
import torch

from advrepair import zoo
from advrepair.attacks import PGD, GenAttack, make_attack
from advrepair.attacks.genattack import log_odds_fitness
from advrepair.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def standard_and_images():
    """The zoo's standard CNN and 16 real Fashion-MNIST images it classifies correctly (from
    the shipped negative bank: real images without test data on disk)."""
    model, _ = zoo.load("fmnist-cnn-standard")
    images = zoo.load_negatives()[::16][:16]
    with torch.no_grad():
        labels = model(images).argmax(1)
    return model, images, labels


def test_genattack_comes_close_to_pgd_within_10000_queries(standard_and_images):
    model, x, y = standard_and_images
    pgd = PGD(model, eps=0.1, alpha=0.0125, steps=20)(x, y)
    attack = GenAttack(model, eps=0.1, n_queries=10000)
    adv = attack(x, y)
    with torch.no_grad():
        acc_pgd = (model(pgd).argmax(1) == y).float().mean().item()
        acc_gen = (model(adv).argmax(1) == y).float().mean().item()
    assert acc_gen <= acc_pgd + 0.15, (acc_gen, acc_pgd)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert attack.stats.backward == 0 and 0 < attack.stats.forward <= 10000 * len(x)


def test_genattack_never_spends_more_than_its_queries_and_stops_when_fooled(standard_and_images):
    model, x, y = standard_and_images
    attack = GenAttack(model, eps=0.02, n_queries=50, population=4)  # too small a budget to fool them all
    attack(x, y)
    assert attack.stats.forward <= 50 * len(x)
    easy = GenAttack(model, eps=0.3, n_queries=10000, population=4)
    easy(x, y)
    assert easy.stats.forward < 0.05 * 10000 * len(x)  # each image stops at its first success


def test_genattack_targeted_and_l2(standard_and_images):
    model, x, y = standard_and_images
    targets = (y + 1) % 10
    attack = GenAttack(model, eps=0.2, n_queries=3000).set_target_mode("given")
    adv = attack(x[:6], y[:6], targets[:6])
    with torch.no_grad():
        hit = (model(adv).argmax(1) == targets[:6]).float().mean().item()
    assert hit >= 0.5
    l2 = make_attack("genattack", model, eps=2.0, norm="L2", n_queries=2000)(x[:6], y[:6])
    assert ((l2 - x[:6]).flatten(1).norm(dim=1) <= 2.0 + 1e-5).all()
    with torch.no_grad():
        assert (model(l2).argmax(1) != y[:6]).float().mean() >= 0.5


def test_fitness_is_positive_exactly_when_misclassified():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 0.5]])
    fit = log_odds_fitness(logits, torch.tensor([0, 0]))
    assert fit[0] < 0 < fit[1]


@pytest.mark.parametrize("bad", [dict(population=1), dict(n_queries=3, population=6), dict(mutation_rate=0),
                                 dict(mutation_rate=1.5), dict(alpha=0), dict(temperature=0), dict(plateau=0)])
def test_genattack_parameter_errors_name_the_problem(bad, standard_and_images):
    with pytest.raises(InputError):
        GenAttack(standard_and_images[0], eps=0.1, **bad)
