"""BIM, MI-FGSM, DI-FGSM, TI-FGSM, C&W and CW-PGD: agreement with torchattacks, budget
invariants, batch independence of the randomized ones, and error paths."""
import math

import pytest
import torch
import torchattacks
from torch import nn

from advrepair.attacks.bim import BIM
from advrepair.attacks.cw import CW, CWPGD
from advrepair.attacks.difgsm import DIFGSM, input_diversity
from advrepair.attacks.losses import margin
from advrepair.attacks.mifgsm import MIFGSM
from advrepair.attacks.tifgsm import TIFGSM, smoothing_kernel
from advrepair.errors import InputError

EPS = 0.16  # where the attacks bite on the fixture model (clean ~0.99, BIM-10 ~0.5)


def _batch(ds, n=48):
    return ds.tensors(torch.arange(n))


def _same_up_to_sign_zero(ours, theirs):
    # sign() of a gradient that is exactly zero may differ; everything else is the same arithmetic
    return (ours - theirs).abs().gt(1e-5).float().mean().item() < 0.01


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


class _Gray(nn.Module):
    """Three-channel front for the one-channel model: torchattacks' TIFGSM assumes RGB."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.mean(1, keepdim=True))


class _MarginAsTwoClasses(nn.Module):
    """Logits ``[0, margin]``: cross-entropy with label 0 is softplus(margin), whose gradient
    has the margin's sign, so torchattacks' CE-PGD takes exactly the steps of PGD on the margin."""

    def __init__(self, net, labels):
        super().__init__()
        self.net, self.labels = net, labels

    def forward(self, x):
        m = margin(self.net(x), self.labels)
        return torch.stack([torch.zeros_like(m), m], 1)


# -- exact agreement where no randomness is involved ------------------------------------
def test_bim_equals_torchattacks(trained_cnn, shapes_test):
    x, y = _batch(shapes_test)
    ours = BIM(trained_cnn, eps=EPS, alpha=0.02, steps=10)(x, y)
    theirs = torchattacks.BIM(trained_cnn, eps=EPS, alpha=0.02, steps=10)(x, y)
    assert _same_up_to_sign_zero(ours, theirs)
    assert _accuracy(trained_cnn, ours, y) < _accuracy(trained_cnn, x, y) - 0.2


def test_bim_steps_zero_uses_the_papers_heuristic(random_cnn):
    for eps in (4 / 255, 8 / 255, 16 / 255):
        assert BIM(random_cnn, eps=eps, steps=0).steps == torchattacks.BIM(random_cnn, eps=eps, steps=0).steps


def test_mifgsm_equals_torchattacks(trained_cnn, shapes_test):
    x, y = _batch(shapes_test)
    ours = MIFGSM(trained_cnn, eps=EPS, alpha=0.02, steps=10, decay=1.0)(x, y)
    theirs = torchattacks.MIFGSM(trained_cnn, eps=EPS, alpha=0.02, steps=10, decay=1.0)(x, y)
    assert _same_up_to_sign_zero(ours, theirs)


def test_difgsm_without_diversity_equals_torchattacks_dim(trained_cnn, shapes_test):
    x, y = _batch(shapes_test)
    ours = DIFGSM(trained_cnn, eps=EPS, alpha=0.02, steps=10, decay=1.0, diversity_prob=0.0)(x, y)
    theirs = torchattacks.DIFGSM(trained_cnn, eps=EPS, alpha=0.02, steps=10, decay=1.0,
                                 diversity_prob=0.0)(x, y)
    assert _same_up_to_sign_zero(ours, theirs)


@pytest.mark.parametrize("kernel", [dict(kernel_name="gaussian", len_kernel=15, nsig=3, decay=1.0),
                                    dict(kernel_name="linear", len_kernel=7, decay=0.0)])
def test_tifgsm_without_diversity_equals_torchattacks(trained_cnn, shapes_test, kernel):
    x, y = _batch(shapes_test, 24)
    model, x3 = _Gray(trained_cnn).eval(), x.repeat(1, 3, 1, 1)
    ours = TIFGSM(model, eps=EPS, alpha=0.02, steps=5, diversity_prob=0.0, random_start=False, **kernel)(x3, y)
    theirs = torchattacks.TIFGSM(model, eps=EPS, alpha=0.02, steps=5, diversity_prob=0.0,
                                 random_start=False, **kernel)(x3, y)
    assert _same_up_to_sign_zero(ours, theirs)


def test_cwpgd_equals_torchattacks_pgd_on_the_margin(trained_cnn, shapes_test):
    x, y = _batch(shapes_test)
    ours = CWPGD(trained_cnn, eps=EPS, alpha=0.02, steps=10, random_start=False)(x, y)
    theirs = torchattacks.PGD(_MarginAsTwoClasses(trained_cnn, y).eval(), eps=EPS, alpha=0.02, steps=10,
                              random_start=False)(x, torch.zeros_like(y))
    assert _same_up_to_sign_zero(ours, theirs)
    assert CWPGD(trained_cnn).params()["loss"] == "margin"


def test_smoothing_kernels_match_torchattacks(random_cnn):
    for name, n in (("gaussian", 15), ("linear", 7), ("uniform", 5)):
        theirs = torchattacks.TIFGSM(random_cnn, kernel_name=name, len_kernel=n, nsig=3).stacked_kernel[0, 0]
        assert torch.allclose(smoothing_kernel(name, n, 3.0), theirs, atol=1e-7)


# -- statistical agreement where randomness differs -------------------------------------
def test_difgsm_robust_accuracy_agrees_with_torchattacks(trained_cnn, shapes_test):
    x, y = shapes_test.tensors()
    ours = DIFGSM(trained_cnn, eps=EPS, alpha=0.04, steps=5, diversity_prob=0.5, seed=0)(x, y)
    torch.manual_seed(0)
    theirs = torchattacks.DIFGSM(trained_cnn, eps=EPS, alpha=0.04, steps=5, diversity_prob=0.5)(x, y)
    acc_ours, acc_theirs = _accuracy(trained_cnn, ours, y), _accuracy(trained_cnn, theirs, y)
    assert acc_ours < _accuracy(trained_cnn, x, y) - 0.2
    # 200 images; per-image vs per-batch transforms differ (s.e. of a difference ~3.5 points)
    assert abs(acc_ours - acc_theirs) <= 0.06


def test_cw_agrees_with_torchattacks(trained_cnn, shapes_test):
    x, y = shapes_test.tensors()
    ours = CW(trained_cnn, c=1.0, kappa=0.0, steps=15, lr=0.1)(x, y)
    theirs = torchattacks.CW(trained_cnn, c=1.0, kappa=0.0, steps=15, lr=0.1)(x, y)
    acc_ours, acc_theirs = _accuracy(trained_cnn, ours, y), _accuracy(trained_cnn, theirs, y)
    assert acc_ours < _accuracy(trained_cnn, x, y) - 0.1
    # differences: boundary pixels may move here, no batch-wide early stop, exact margin
    assert abs(acc_ours - acc_theirs) <= 0.06
    with torch.no_grad():
        fooled_ours, fooled_theirs = trained_cnn(ours).argmax(1) != y, trained_cnn(theirs).argmax(1) != y
    l2_ours = (ours - x).flatten(1).norm(dim=1)[fooled_ours].median().item()
    l2_theirs = (theirs - x).flatten(1).norm(dim=1)[fooled_theirs].median().item()
    assert abs(l2_ours - l2_theirs) <= 0.1 * l2_theirs


def test_cw_returns_the_smallest_successful_iterate_else_the_last(trained_cnn, shapes_test):
    x, y = _batch(shapes_test, 32)
    attack = CW(trained_cnn, c=5.0, steps=10, lr=0.1)
    adv = attack(x, y)
    assert attack.stats.per_image() == {"forward_per_image": 11.0, "backward_per_image": 10.0}
    # a longer run can only find successes at least as small: best-so-far is monotone
    longer = CW(trained_cnn, c=5.0, steps=20, lr=0.1)(x, y)
    with torch.no_grad():
        fooled, fooled_longer = trained_cnn(adv).argmax(1) != y, trained_cnn(longer).argmax(1) != y
    assert fooled.any() and (fooled_longer | ~fooled).all()
    d, d_longer = (adv - x).flatten(1).norm(dim=1), (longer - x).flatten(1).norm(dim=1)
    assert (d_longer[fooled] <= d[fooled] + 1e-5).all()
    # no steps: the one iterate is the (tanh round-tripped) clean image
    assert torch.allclose(CW(trained_cnn, steps=0)(x, y), x, atol=1e-5)


# -- invariants -------------------------------------------------------------------------
def _all_attacks(model, eps):
    return [
        BIM(model, eps=eps, alpha=eps / 4, steps=3),
        MIFGSM(model, eps=eps, alpha=eps / 4, steps=3),
        DIFGSM(model, eps=eps, alpha=eps / 4, steps=3, decay=1.0, diversity_prob=0.7, random_start=True),
        DIFGSM(model, eps=eps, alpha=eps / 4, steps=3, resize_rate=1.2, diversity_prob=1.0),
        TIFGSM(model, eps=eps, alpha=eps / 4, steps=3, len_kernel=5, diversity_prob=0.7, random_start=True),
        CWPGD(model, eps=eps, alpha=eps / 4, steps=3),
        CW(model, c=10.0, steps=3, lr=0.1, eps=eps, norm="Linf"),
    ]


def test_every_attack_stays_in_budget_and_box(random_cnn):
    torch.manual_seed(1)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for attack in _all_attacks(random_cnn, 0.05):
        adv = attack(x, y)
        assert adv.shape == x.shape
        assert (adv - x).abs().max() <= 0.05 + 1e-6, attack.name
        assert adv.min() >= 0 and adv.max() <= 1, attack.name
    cw = CW(random_cnn, c=10.0, steps=3, lr=0.1)
    assert cw.eps == math.inf and cw.params()["norm"] == "L2"
    adv = cw(x, y)  # an infinite L2 budget clips nothing but the box
    assert adv.min() >= 0 and adv.max() <= 1 and torch.isfinite(adv).all()
    clipped = CW(random_cnn, c=10.0, steps=3, lr=0.1, eps=0.3)(x, y)
    assert ((clipped - x).flatten(1).norm(dim=1) <= 0.3 + 1e-5).all()


def test_randomized_attacks_are_batch_independent_and_seeded(random_cnn):
    torch.manual_seed(2)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for attack in _all_attacks(random_cnn, 0.1)[2:5] + [CW(random_cnn, c=10.0, steps=3, lr=0.1)]:
        full = attack(x, y)
        halves = torch.cat([attack(x[:3], y[:3]), attack(x[3:], y[3:])])
        assert torch.allclose(full, halves, atol=1e-6), attack.name
    a = DIFGSM(random_cnn, eps=0.1, alpha=0.02, steps=3, diversity_prob=0.7, seed=5)(x, y)
    b = DIFGSM(random_cnn, eps=0.1, alpha=0.02, steps=3, diversity_prob=0.7, seed=6)(x, y)
    assert not torch.allclose(a, b)


def test_input_diversity_keeps_size_and_is_differentiable():
    torch.manual_seed(3)
    x = torch.rand(6, 2, 20, 16, requires_grad=True)
    u = torch.rand(6, 4)
    for rate in (0.8, 1.25):
        out = input_diversity(x, u, rate, 1.0)
        assert out.shape == x.shape and not torch.allclose(out, x)
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert grad.abs().sum() > 0
    assert torch.equal(input_diversity(x, u, 0.8, 0.0), x)
    # shrinking pads with zeros: every transformed image has a zero border row or column
    out = input_diversity(x, u, 0.8, 1.0).detach()
    border = torch.stack([out[:, :, 0].abs().sum((1, 2)), out[:, :, -1].abs().sum((1, 2)),
                          out[..., 0].abs().sum((1, 2)), out[..., -1].abs().sum((1, 2))], 1)
    assert (border.min(1).values == 0).all()


def test_params_record_every_argument(random_cnn):
    expected = {
        BIM: ("bim", {"alpha", "steps", "eps"}),
        MIFGSM: ("mifgsm", {"decay"}),
        DIFGSM: ("difgsm", {"decay", "resize_rate", "diversity_prob", "random_start"}),
        TIFGSM: ("tifgsm", {"kernel_name", "len_kernel", "nsig", "diversity_prob"}),
        CW: ("cw", {"c", "kappa", "steps", "lr", "eps", "norm"}),
        CWPGD: ("cw-pgd", {"restarts", "random_start", "loss"}),
    }
    for cls, (name, keys) in expected.items():
        params = cls(random_cnn).params()
        assert cls.name == name and params["name"] == name
        assert keys <= set(params), cls.__name__
    assert MIFGSM(random_cnn).decay == 1.0 and DIFGSM(random_cnn).decay == 0.0
    assert CWPGD(random_cnn).steps == 20 and CW(random_cnn).steps == 50


# -- error paths ------------------------------------------------------------------------
@pytest.mark.parametrize("make, match", [
    (lambda m: MIFGSM(m, decay=-1.0), "decay must be >= 0"),
    (lambda m: MIFGSM(m, decay=float("nan")), "decay must be a number"),
    (lambda m: DIFGSM(m, decay=float("inf")), "decay must be finite"),
    (lambda m: MIFGSM(m, steps=2.5), "steps"),
    (lambda m: BIM(m, steps=-1), "steps"),
    (lambda m: DIFGSM(m, diversity_prob=1.5), "diversity_prob"),
    (lambda m: DIFGSM(m, diversity_prob=-0.1), "diversity_prob"),
    (lambda m: DIFGSM(m, resize_rate=1.0), "resize_rate must differ from 1"),
    (lambda m: DIFGSM(m, resize_rate=0), "resize_rate must be > 0"),
    (lambda m: DIFGSM(m, random_start="yes"), "random_start"),
    (lambda m: TIFGSM(m, len_kernel=4), "len_kernel must be an odd integer"),
    (lambda m: TIFGSM(m, len_kernel=0), "len_kernel"),
    (lambda m: TIFGSM(m, len_kernel=7.5), "len_kernel"),
    (lambda m: TIFGSM(m, kernel_name="box"), "unknown kernel_name"),
    (lambda m: TIFGSM(m, nsig=0), "nsig must be > 0"),
    (lambda m: CW(m, c=0), "c must be > 0"),
    (lambda m: CW(m, kappa=-1), "kappa must be >= 0"),
    (lambda m: CW(m, lr=0), "lr must be > 0"),
    (lambda m: CW(m, c=float("inf")), "c must be finite"),
    (lambda m: CW(m, steps=-3), "steps"),
    (lambda m: CWPGD(m, alpha=-1), "alpha must be > 0"),
])
def test_bad_arguments_raise_input_errors(random_cnn, make, match):
    with pytest.raises(InputError, match=match):
        make(random_cnn)


def test_resize_rate_that_does_not_fit_the_images_fails_before_any_work(random_cnn):
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    attack = DIFGSM(random_cnn, resize_rate=1.01, diversity_prob=0.5)  # int(28 * 1.01) == 28
    with pytest.raises(InputError, match="resize_rate 1.01 leaves no room"):
        attack(x, y)
    assert attack.stats.forward == 0


def test_pgd_from_a_given_start_projects_it_onto_the_ball_and_keeps_the_default_record(random_cnn):
    from advrepair.attacks.pgd import PGD

    x = torch.rand(4, 1, 28, 28)
    y = torch.zeros(4, dtype=torch.long)
    far = PGD(random_cnn, eps=0.1, alpha=0.01, steps=0, start=lambda z: z + 0.5, start_name="x + 0.5")
    assert torch.equal(far(x, y), (x + 0.1).clamp(0, 1))  # zero steps: the start, projected
    near = PGD(random_cnn, eps=0.1, alpha=0.01, steps=0, start=lambda z: 1 - z)
    assert torch.equal(near(x, y), (1 - x).clamp(x - 0.1, x + 0.1).clamp(0, 1))
    assert far.params()["start"] == "x + 0.5" and far.params()["random_start"] is False
    assert near.params()["start"] == "custom"
    assert "start" not in PGD(random_cnn, eps=0.1).params()  # records of plain PGD keep their keys
    with pytest.raises(InputError, match="one start"):
        PGD(random_cnn, eps=0.1, restarts=2, start=lambda z: z)
    with pytest.raises(InputError, match="start must be a function"):
        PGD(random_cnn, eps=0.1, start=0.5)
