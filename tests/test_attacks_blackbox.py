"""Square, FAB and HopSkipJump: agreement with torchattacks / ART, budget, no gradients, errors."""
import math

import numpy as np
import pytest
import torch
import torchattacks

from advrepair.attacks.fab import FAB, FABT, project_hyperplane_box
from advrepair.attacks.hopskipjump import HopSkipJump
from advrepair.attacks.square import Square
from advrepair.enums import Norm
from advrepair.errors import InputError


@pytest.fixture(autouse=True, scope="module")
def _one_thread(trained_cnn):
    # these attacks make many tiny forward passes; on a busy 2-core machine a second intra-op
    # thread costs far more in synchronisation than it gains (the model is trained first, so
    # it is the same model the other test files see)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _robust_acc(model, adv, y):
    with torch.no_grad():
        return (model(adv).argmax(1) == y).float().mean().item()


def _size(delta, norm):
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("a score/decision-based attack asked for a gradient")


class _GradientFree(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_NoBackward.apply(x))


# -- agreement with reference implementations ----------------------------------------------
def test_square_robust_accuracy_agrees_with_torchattacks(trained_cnn, shapes_test):
    x, y = shapes_test.tensors(torch.arange(120))
    ours = Square(trained_cnn, eps=0.16, n_queries=200, p_init=0.8, seed=0)(x, y)
    theirs = torchattacks.Square(trained_cnn, eps=0.16, n_queries=200, p_init=0.8, seed=0)(x, y)
    clean = _robust_acc(trained_cnn, x, y)
    acc_ours, acc_theirs = _robust_acc(trained_cnn, ours, y), _robust_acc(trained_cnn, theirs, y)
    assert acc_ours < clean - 0.1, "Square should bite at eps=0.16"
    # ours redraws a square whose sign would leave the image unchanged; on 1-channel images
    # torchattacks wastes such queries (about half once a window is uniform), so ours is a few
    # points stronger (5-7 over seeds 0-3), never weaker
    assert acc_ours <= acc_theirs + 0.03
    assert acc_theirs - acc_ours <= 0.12


def test_fab_t_robust_accuracy_agrees_with_torchattacks(trained_cnn, shapes_test):
    x, y = shapes_test.tensors(torch.arange(100))
    ours = FABT(trained_cnn, eps=0.16, steps=10, n_target_classes=9)(x, y)
    theirs = torchattacks.FAB(trained_cnn, eps=0.16, steps=10, multi_targeted=True, n_classes=4)(x, y)
    clean = _robust_acc(trained_cnn, x, y)
    acc_ours, acc_theirs = _robust_acc(trained_cnn, ours, y), _robust_acc(trained_cnn, theirs, y)
    assert acc_ours < clean - 0.2, "FAB-T should bite at eps=0.16"
    assert abs(acc_ours - acc_theirs) <= 0.03  # same algorithm, no randomness (equal in practice)


def test_hopskipjump_distances_match_art(trained_cnn, shapes_test):
    pytest.importorskip("art")
    from art.attacks.evasion import HopSkipJump as ArtHopSkipJump
    from art.estimators.classification import PyTorchClassifier

    class Float32(torch.nn.Module):  # ART feeds float64 noise
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x.float())

    x, y = shapes_test.tensors(torch.arange(6))
    # a huge eps so the base class's clipping leaves the minimal-norm result alone
    ours = HopSkipJump(trained_cnn, eps=100.0, norm="L2", steps=8, max_queries=10**6, seed=0)(x, y)
    clf = PyTorchClassifier(Float32(trained_cnn), loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=4, clip_values=(0.0, 1.0))
    np.random.seed(0)
    theirs = torch.from_numpy(ArtHopSkipJump(clf, norm=2, max_iter=8, max_eval=1000, init_eval=100,
                                             init_size=100, verbose=False).generate(x.numpy())).float()
    with torch.no_grad():
        ok_ours = trained_cnn(ours).argmax(1) != y
        ok_theirs = trained_cnn(theirs).argmax(1) != y
    assert ok_ours.sum() >= max(ok_theirs.sum() - 1, 1)
    med_ours = _size(ours - x, "L2")[ok_ours].median().item()
    med_theirs = _size(theirs - x, "L2")[ok_theirs].median().item()
    assert med_theirs / 2 <= med_ours <= med_theirs * 2, (med_ours, med_theirs)


# -- invariants -----------------------------------------------------------------------------
_SMALL = {
    "square": lambda m, norm, eps: Square(m, eps=eps, norm=norm, n_queries=20, seed=0),
    "fab": lambda m, norm, eps: FAB(m, eps=eps, norm=norm, steps=3),
    "fab-t": lambda m, norm, eps: FABT(m, eps=eps, norm=norm, steps=3, n_target_classes=2),
    "hopskipjump": lambda m, norm, eps: HopSkipJump(m, eps=eps, norm=norm, steps=2, init_num_evals=10,
                                                    max_queries=400),
}


@pytest.mark.parametrize("name", sorted(_SMALL))
@pytest.mark.parametrize("norm, eps", [("Linf", 0.05), ("L2", 0.5)])
def test_budget_box_and_model_mode(random_cnn, name, norm, eps):
    torch.manual_seed(1)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    random_cnn.train()
    attack = _SMALL[name](random_cnn, norm, eps)
    adv = attack(x, y)
    assert random_cnn.training
    assert adv.shape == x.shape
    assert (_size(adv - x, norm) <= eps + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1
    assert attack.params()["name"] == name


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_square_and_hopskipjump_never_use_gradients(random_cnn, norm):
    model = _GradientFree(random_cnn)
    torch.manual_seed(2)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    for attack in (Square(model, eps=0.1, norm=norm, n_queries=15),
                   HopSkipJump(model, eps=0.5, norm=norm, steps=2, init_num_evals=10, max_queries=300)):
        attack(x, y)
        assert attack.stats.backward == 0


def test_square_spends_at_most_n_queries(random_cnn):
    torch.manual_seed(3)
    x, y = torch.rand(5, 1, 28, 28), torch.randint(0, 10, (5,))
    attack = Square(random_cnn, eps=0.05, n_queries=25, n_restarts=2)
    attack(x, y)
    assert attack.stats.forward <= 5 * 25 * 2


def test_hopskipjump_respects_max_queries_and_finds_something(trained_cnn, shapes_test):
    x, y = shapes_test.tensors(torch.arange(4))
    attack = HopSkipJump(trained_cnn, eps=10.0, norm="Linf", steps=50, max_queries=600)
    adv = attack(x, y)
    # the base class's label check is not counted; the attack's own passes are capped per image
    assert attack.stats.forward <= 4 * 600
    assert _robust_acc(trained_cnn, adv, y) < 1.0


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_square_is_batch_independent_and_seeded(random_cnn, norm):
    torch.manual_seed(4)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    attack = Square(random_cnn, eps=0.1 if norm == "Linf" else 1.0, norm=norm, n_queries=30, seed=3)
    full = attack(x, y)
    halves = torch.cat([attack(x[:3], y[:3]), attack(x[3:], y[3:])])
    assert torch.allclose(full, halves, atol=1e-6)
    other = Square(random_cnn, eps=0.1 if norm == "Linf" else 1.0, norm=norm, n_queries=30, seed=4)(x, y)
    assert not torch.allclose(full, other)


def test_fab_keeps_misclassified_and_unbroken_images_unchanged(trained_cnn, shapes_test):
    x, y = shapes_test.tensors(torch.arange(8))
    wrong = (y + 1) % 4  # the model is right on these, so every image is "misclassified"
    assert torch.equal(FABT(trained_cnn, eps=0.1, steps=2)(x, wrong), x)
    assert torch.equal(FABT(trained_cnn, eps=1e-4, steps=5)(x, y), x)  # nothing that close


def test_hyperplane_projection_is_exact_on_a_small_case():
    # w = (1, 2), value -1 at p = (0.5, 0.5): the hyperplane is d1 + 2 d2 = 1
    p, w, v = torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 2.0]]), torch.tensor([-1.0])
    d_inf = project_hyperplane_box(p, w, v, Norm.LINF)  # both coordinates move 1/3 (box not binding)
    assert torch.allclose(d_inf, torch.tensor([[1 / 3, 1 / 3]]))
    d_2 = project_hyperplane_box(p, w, v, Norm.L2)  # along w: (0.2, 0.4), within the box
    assert torch.allclose(d_2, torch.tensor([[0.2, 0.4]]))
    # the box caps d2 at 0.5 for L2 when value is -1.5: d = (0.5, 0.5) exactly reaches it
    d_box = project_hyperplane_box(p, w, torch.tensor([-1.5]), Norm.L2)
    assert torch.allclose(d_box, torch.tensor([[0.5, 0.5]]))
    assert math.isclose(float((w * d_box).sum()), 1.5, rel_tol=1e-6)


def _plain_projection(points, w, value, norm):
    """project_hyperplane_box as first written: zero rooms for zero weights, torch's sort."""
    direction = torch.sign(-value)[:, None] * torch.sign(w)
    room = torch.where(direction > 0, 1 - points, points).clamp_min(0)
    room = torch.where(direction == 0, torch.zeros_like(room), room)
    absw = w.abs()
    weight, cap = (absw, room) if norm is Norm.LINF else (absw * absw, torch.where(
        absw > 0, room / absw.clamp_min(1e-30), torch.zeros_like(room)))
    target = value.abs()[:, None]
    cap_sorted, order = cap.sort(dim=1, stable=True)
    weight_sorted = weight.gather(1, order)
    before = torch.cumsum(weight_sorted * cap_sorted, 1) - weight_sorted * cap_sorted
    after = weight_sorted.flip(1).cumsum(1).flip(1)
    at_break = before + cap_sorted * after
    k = torch.searchsorted(at_break, target).clamp(max=cap.shape[1] - 1)
    t = (target - before.gather(1, k)) / after.gather(1, k).clamp_min(1e-30)
    t = torch.where(at_break[:, -1:] >= target, t, cap_sorted[:, -1:])
    step = torch.minimum(t, cap)
    return direction * (step * absw if norm is Norm.L2 else step)


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_hyperplane_projection_equals_the_plain_one(norm):
    # FAB-like rows: black and white backgrounds (rooms 0 and 1), zero weights, values from
    # reachable to far beyond the box. The fast path reorders zero-weight coordinates, which
    # moves the blocks of torch's cumsum: equal up to float32 rounding, not bit for bit.
    gen = torch.Generator().manual_seed(1)
    points = torch.rand(96, 784, generator=gen) * (torch.rand(96, 784, generator=gen) > 0.5)
    points[:, :100], points[:, 100:150] = 0.0, 1.0
    w = torch.randn(96, 784, generator=gen) * (torch.rand(96, 784, generator=gen) > 0.3)
    value = torch.randn(96, generator=gen) * torch.logspace(-2, 3, 96)
    fast, plain = project_hyperplane_box(points, w, value, norm), _plain_projection(points, w, value, norm)
    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast.sign(), plain.sign())


@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_hyperplane_projection_at_its_edge_cases_equals_the_plain_one(norm):
    # Newton's method stops on the piece holding the solution; these rows put the solution on
    # a breakpoint, exactly at the box's reach, at zero, or give it no weight at all
    d = 64
    points = torch.full((6, d), 0.5)
    points[:, : d // 2] = 0.75  # rooms 0.25 and 0.5 toward +: breakpoints at 0.25 and 0.5
    w = torch.ones(6, d)
    w[4] = 0.0  # no weight: nothing can move
    w[5, ::2] = 0.0
    reach = float((w[0] * (1 - points[0])).sum())
    value = torch.tensor([-0.25 * d, -reach, -2 * reach, 0.0, -1.0, -3.0])  # on a breakpoint, just, beyond, zero
    if norm is Norm.L2:
        value[0] = -float((torch.minimum(1 - points[0], torch.tensor(0.25)) * w[0]).sum())
    fast, plain = project_hyperplane_box(points, w, value, norm), _plain_projection(points, w, value, norm)
    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast[3], torch.zeros(d)) and torch.equal(fast[4], torch.zeros(d))
    assert torch.allclose(fast[2], 1 - points[2])  # unreachable: every coordinate to its bound


# -- error paths ------------------------------------------------------------------------------
def test_bad_arguments(random_cnn):
    with pytest.raises(InputError, match="n_queries"):
        Square(random_cnn, n_queries=0)
    with pytest.raises(InputError, match="n_queries"):
        Square(random_cnn, n_queries=2.5)
    with pytest.raises(InputError, match="p_init"):
        Square(random_cnn, p_init=0)
    with pytest.raises(InputError, match="p_init"):
        Square(random_cnn, p_init=1.5)
    with pytest.raises(InputError, match="n_restarts"):
        Square(random_cnn, n_restarts=0)
    with pytest.raises(InputError, match="unknown loss"):
        Square(random_cnn, loss="hinge")
    with pytest.raises(InputError, match="unknown norm"):
        Square(random_cnn, norm="L1")
    with pytest.raises(InputError, match="steps"):
        FABT(random_cnn, steps=0)
    with pytest.raises(InputError, match="beta"):
        FAB(random_cnn, beta=1.0)
    with pytest.raises(InputError, match="eta"):
        FAB(random_cnn, eta=0.5)
    with pytest.raises(InputError, match="n_target_classes"):
        FABT(random_cnn, n_target_classes=0)
    with pytest.raises(InputError, match="max_queries"):
        HopSkipJump(random_cnn, max_queries=0)
    with pytest.raises(InputError, match="max_num_evals"):
        HopSkipJump(random_cnn, init_num_evals=100, max_num_evals=10)
    with pytest.raises(InputError, match="eps must be >= 0"):
        HopSkipJump(random_cnn, eps=-1.0)
