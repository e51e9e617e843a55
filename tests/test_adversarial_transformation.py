"""xiao2020 adversarial transformation: g, its BPDA surrogate (Eq. 5), the selection
statistic (Table 1), training on g (Eq. 1) with its cost, the imitator h, and small-vgg."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advrepair.adaptive.bpda import BPDA
from advrepair.defenses.adversarial_transformation import (AdversarialTransformation, BPDASurrogate,
                                                           eq5_project, eq5_projection_derivative,
                                                           selection_statistic)
from advrepair.errors import InputError
from advrepair.models import ModelCard, SmallCNN, load_checkpoint, register_architecture, save_checkpoint
from advrepair.models.vgg import SmallVGG
from advrepair.training import ClassifierRecipe, train_classifier
from advrepair.training.adversarial_transformation import (PassCounter, Reparameterization, compare_training_cost,
                                                           fit_imitator, imitation_error, train_on_transformation)
from conftest import make_shapes


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def f_b() -> SmallCNN:
    """A briefly trained f_b on the shapes task (98% test accuracy)."""
    torch.manual_seed(0)
    model = SmallCNN(num_classes=4, width=8, feature_dim=32)
    train_classifier(model, make_shapes(600, seed=0), ClassifierRecipe(epochs=2, batch_size=64, lr=3e-3),
                     seed=0, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return make_shapes(16, seed=1).tensors()[0]


def _untrained(seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(num_classes=4, width=8, feature_dim=32).eval()


# -- g -------------------------------------------------------------------------------------
def test_g_stays_inside_the_delta_ball_and_the_unit_box(images: torch.Tensor) -> None:
    x = images[:8].clone()
    x[:, :, :3] = 0.0  # saturated pixels: the box clip must act
    x[:, :, -3:] = 1.0
    g = AdversarialTransformation(_untrained(0), delta=0.2, steps=5, seed=0)
    out = g(x)
    assert out.shape == x.shape
    assert float((out - x).abs().max()) <= 0.2 + 1e-6
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((out - x).abs().max()) > 0.15  # it is not the identity
    assert g.last_trace is not None and g.last_trace.gradient_evaluations == 5


def test_least_likely_targeting_lowers_f_b_confidence_in_its_top_class(f_b: SmallCNN,
                                                                        images: torch.Tensor) -> None:
    g = AdversarialTransformation(f_b, delta=0.2, steps=13, seed=0)
    with torch.no_grad():
        p_clean = F.softmax(f_b(images), 1)
        top, least = p_clean.argmax(1), p_clean.argmin(1)
        p_g = F.softmax(f_b(g(images)), 1)
    assert torch.equal(g.targets(images), least)
    conf_clean = p_clean.gather(1, top[:, None]).squeeze(1)
    conf_g = p_g.gather(1, top[:, None]).squeeze(1)
    assert float(conf_clean.mean()) > 0.8
    assert float(conf_g.mean()) < float(conf_clean.mean()) - 0.3
    assert float((conf_g < conf_clean).float().mean()) >= 0.9
    # the least-likely class gains, and the engine's loss (CE to y_L) went down
    assert float(p_g.gather(1, least[:, None]).mean()) > float(p_clean.gather(1, least[:, None]).mean())
    assert g.last_trace.mean_loss[-1] < g.last_trace.mean_loss[0]
    # untargeted mode ascends the loss of f_b's own prediction
    untargeted = AdversarialTransformation(f_b, delta=0.2, steps=13, seed=0, target="untargeted")
    with torch.no_grad():
        conf_u = F.softmax(f_b(untargeted(images)), 1).gather(1, top[:, None]).squeeze(1)
    assert float(conf_u.mean()) < float(conf_clean.mean()) - 0.3


def test_g_is_batch_independent_and_seeded(images: torch.Tensor) -> None:
    g = AdversarialTransformation(_untrained(1), delta=0.2, steps=3, seed=5)
    full = g(images[:8])
    assert torch.equal(g(images[2:5]), full[2:5])
    assert torch.equal(g(images[:8]), full)
    other_seed = AdversarialTransformation(g.f_b, delta=0.2, steps=3, seed=6)(images[:8])
    assert not torch.equal(other_seed, full)
    # several draws through the engine at once equal one draw at a time
    drawn = g.sample(images[:4], draws=3)
    assert drawn.shape == (3, 4, *images.shape[1:])
    assert torch.equal(drawn[0], full[:4])
    assert torch.allclose(drawn[2], g.transform(images[:4], draw=2), atol=1e-6)
    assert not torch.equal(drawn[1], drawn[0])


def test_params_names_the_paper_settings(f_b: SmallCNN) -> None:
    p = AdversarialTransformation(f_b).params()
    assert p["name"] == "adversarial-transformation"
    assert (p["delta"], p["steps"], p["target"]) == (0.2, 13, "least-likely")
    assert p["step_size"] == pytest.approx(0.2 / 6)
    assert p["f_b"]["arch"] == "small-cnn" and len(p["f_b"]["weights_sha1"]) == 16


# -- Eq. 5 BPDA ------------------------------------------------------------------------------
def test_eq5_projection_derivative_is_the_papers_formula() -> None:
    u = torch.tensor([-0.5, -0.25, -0.1, 0.0, 0.19, 0.3])
    d = eq5_projection_derivative(u, 0.2)
    expected = torch.tensor([1 / 1.5**2, 1 / 1.25**2, 1.0, 1.0, 1.0, 1 / 1.3**2])
    assert torch.allclose(d, expected)
    # through eq5_project: d out / d x = Eq. 5, d out / d center = 1 - Eq. 5 (no box clip here)
    center = torch.full((1, 1, 1, 6), 0.5)
    x = (center + u.view(1, 1, 1, 6)).requires_grad_(True)
    c = center.clone().requires_grad_(True)
    out = eq5_project(x, c, 0.2)
    assert torch.allclose(out.detach(), 0.5 + u.clamp(-0.2, 0.2).view(1, 1, 1, 6))
    gx, gc = torch.autograd.grad(out.sum(), (x, c))
    assert torch.allclose(gx.flatten(), expected, atol=1e-6)
    assert torch.allclose(gc.flatten(), 1 - expected, atol=1e-6)


def _linear_case(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    lin = nn.Linear(9, 3)
    with torch.no_grad():
        lin.weight.mul_(3.0)
    f = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.35 + 0.3 * torch.rand(1, 1, 3, 3)
    with torch.no_grad():
        p = F.softmax(f(x), 1)[0]
    y_l = int(p.argmin())
    w = lin.weight.detach()
    grad = w.T @ (p - F.one_hot(torch.tensor(y_l), 3).float())          # dl/dx for CE(Wx + b, y_L)
    hess = w.T @ (torch.diag(p) - torch.outer(p, p)) @ w                # d2l/dx2
    return f, x, grad, hess


@pytest.mark.parametrize("kind", ["tanh", "softsign"])
@pytest.mark.parametrize("delta,step", [(0.2, 0.05), (0.05, 0.1)])
def test_bpda_surrogate_one_step_jacobian_matches_the_hand_formula(kind: str, delta: float, step: float) -> None:
    # one LL-PGD step, no random start: x1 = x + clip(-eps * sgn(grad l(x))), center x.
    # BPDA: d x1 / d x = I - eps * diag(P'(u) * s'(grad)) H, with u = -eps * sgn(grad),
    # P' from Eq. 5 (1 inside the ball, 1/(1+|u|)^2 outside) and s' the surrogate's derivative.
    f, x, grad, hess = _linear_case()
    t = 0.7
    g = AdversarialTransformation(f, delta=delta, steps=1, step_size=step, random_start=False, seed=0)
    surrogate = g.bpda_surrogate(kind, temperature=t)
    with torch.no_grad():
        assert torch.allclose(surrogate(x), g(x))
    jac = torch.autograd.functional.jacobian(lambda z: surrogate(z.view(1, 1, 3, 3)).flatten(), x.flatten())
    if kind == "tanh":
        s_prime = (1 - torch.tanh(grad / t) ** 2) / t
    else:
        s_prime = t / (grad.abs() + t) ** 2
    p_prime = eq5_projection_derivative(torch.full((9,), step), delta)
    expected = torch.eye(9) - step * torch.diag(p_prime * s_prime) @ hess
    assert torch.allclose(jac, expected, atol=1e-5)
    assert not torch.allclose(jac, torch.eye(9), atol=1e-3)  # the surrogate is not the identity


def test_bpda_surrogate_replays_g_and_gives_gradients_through_bpda(images: torch.Tensor) -> None:
    f_a = _untrained(3)
    g = AdversarialTransformation(_untrained(2), delta=0.2, steps=4, seed=0)
    x = images[:4]
    labels = torch.arange(4)
    surrogate = g.bpda_surrogate("tanh", temperature=1.0)
    assert isinstance(surrogate, BPDASurrogate)
    with torch.no_grad():
        assert torch.allclose(surrogate(x), g(x), atol=1e-6)
    grads = []
    for model in (nn.Sequential(BPDA(g, surrogate), f_a), nn.Sequential(BPDA(g), f_a)):
        xr = x.clone().requires_grad_(True)
        out = model(xr)
        with torch.no_grad():
            assert torch.allclose(out, f_a(g(x)), atol=1e-5)  # forward is the real defense
        (gr,) = torch.autograd.grad(F.cross_entropy(out, labels), xr)
        grads.append(gr)
    assert float(grads[0].abs().sum()) > 0
    assert not torch.allclose(grads[0], grads[1])  # differs from BPDA with the identity
    assert surrogate.params()["projection"] == "eq5"


# -- selection statistic (Sec. 3.4, Table 1) -----------------------------------------------
def test_selection_statistic_on_constructed_cases() -> None:
    # two classes, linear f_b: the gradient's sign never changes, so every draw ends at
    # x - Delta * sign(w0 - w1) (13 steps of Delta/6 cross the ball): ||x - E g||_inf = Delta.
    lin = nn.Linear(9, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.linspace(-1, 1, 9).add(0.05), torch.zeros(9)]))
        lin.bias.zero_()
    f = nn.Sequential(nn.Flatten(), lin).eval()
    x = 0.3 + 0.4 * torch.rand(3, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    d, se = selection_statistic(f, x, samples=8, return_stderr=True)
    assert torch.allclose(d, torch.full((3,), 0.2), atol=1e-6)
    assert float(se.max()) < 1e-6
    assert torch.allclose(selection_statistic(f, x, samples=8, norm="mean-abs"), torch.full((3,), 0.2), atol=1e-6)
    # no steps: g is the random start, E g = x, the estimate is only sampling noise
    noise = AdversarialTransformation(f, delta=0.2, steps=0, seed=0)
    d0, se0 = selection_statistic(noise, x, samples=64, return_stderr=True)
    assert float(d0.max()) < 0.1 and float(d0.min()) > 0
    assert float(se0.mean()) == pytest.approx(0.2 / (3 * 64) ** 0.5, rel=0.3)


def test_selection_statistic_grows_with_training_of_f_b(f_b: SmallCNN, images: torch.Tensor) -> None:
    # Table 1: a trained f_b moves E[g(x)] farther from x than an untrained one. On small
    # networks the L-inf version saturates at Delta, so the mean absolute gap is compared.
    x = images[:8]
    trained = selection_statistic(f_b, x, samples=16, norm="mean-abs")
    for seed in (0, 1):
        untrained = selection_statistic(_untrained(seed), x, samples=16, norm="mean-abs")
        assert float(trained.mean()) > 1.25 * float(untrained.mean())


# -- training (Eq. 1), cost, imitator ---------------------------------------------------------
def test_training_on_g_and_its_cost_against_pgd_training(f_b: SmallCNN) -> None:
    data = make_shapes(64, seed=3)
    g = AdversarialTransformation(f_b, delta=0.2, steps=3, seed=0)
    before_b = [p.detach().clone() for p in f_b.parameters()]

    def make_f_a() -> SmallCNN:
        torch.manual_seed(1)
        return SmallCNN(num_classes=4, width=4, feature_dim=16)

    initial = [p.detach().clone() for p in make_f_a().parameters()]
    costs = compare_training_cost(make_f_a, g, data, ClassifierRecipe(epochs=1, batch_size=32),
                                  ClassifierRecipe(epochs=1, batch_size=32, adversarial=True, eps=0.1, alpha=0.05,
                                                   steps=2), seed=0)
    ours, pgd = costs["transformation"], costs["pgd-at"]
    # per image: f_b gets 1 forward for y_L and N forward/backward steps; f_a one of each
    assert ours.passes == {"f_a": {"forward": 64, "backward": 64}, "f_b": {"forward": 4 * 64, "backward": 3 * 64}}
    # PGD-2 adversarial training: 2 attack steps and the update, all on f_a
    assert pgd.passes == {"f_a": {"forward": 3 * 64, "backward": 3 * 64}}
    assert ours.seconds > 0 and pgd.seconds > 0 and "result" not in ours.to_dict()
    f_a, history = ours.result
    assert len(history) == 1 and history[0]["loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(initial, f_a.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before_b, f_b.parameters()))  # f_b stays fixed
    assert all(p.requires_grad for p in f_b.parameters())  # and is handed back as it came


def test_fit_imitator_learns_to_imitate_g(f_b: SmallCNN) -> None:
    data = make_shapes(64, seed=4)
    g = AdversarialTransformation(f_b, delta=0.2, steps=2, seed=0)
    h = fit_imitator(g, data, net=Reparameterization(channels=1, delta=0.2, width=8, depth=3), epochs=4,
                     batch_size=32, lr=3e-3, seed=0, progress=False)
    assert h.history[-1]["loss"] < h.history[0]["loss"]
    x = data.tensors()[0][:8]
    with torch.no_grad():
        out = h(x)
    assert out.shape == x.shape and float((out - x).abs().max()) <= 0.2 + 1e-6
    assert imitation_error(h, g, x) < imitation_error(nn.Identity(), g, x)  # better than h = identity


def test_pass_counter_counts_forward_and_backward_images() -> None:
    net = nn.Linear(3, 2)
    with PassCounter({"net": net}) as counter:
        with torch.no_grad():
            net(torch.zeros(5, 3))
        net(torch.zeros(4, 3)).sum().backward()
    assert counter.passes == {"net": {"forward": 9, "backward": 4}}
    net(torch.zeros(2, 3))  # hooks are removed on exit
    assert counter.passes["net"]["forward"] == 9


# -- small-vgg ----------------------------------------------------------------------------------
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_small_vgg_shapes_and_checkpoint(channels: int, size: int, tmp_path) -> None:
    model = SmallVGG(in_channels=channels, num_classes=10, input_size=size, width=4, feature_dim=16,
                     mean=[0.5] * channels, std=[0.25] * channels).eval()
    x = torch.rand(2, channels, size, size)
    assert model(x).shape == (2, 10) and model.features(x).shape == (2, 16)
    register_architecture(SmallVGG.arch, SmallVGG)
    save_checkpoint(model, tmp_path / "vgg", ModelCard(kind="classifier", arch=model.arch, config=model.config))
    loaded, _card = load_checkpoint(tmp_path / "vgg")
    assert isinstance(loaded, SmallVGG) and torch.equal(loaded(x), model(x))


# -- bad arguments ------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [dict(delta=-0.1), dict(steps=1.5), dict(steps=-1), dict(step_size=0.0),
                                    dict(target="most-likely"), dict(random_start="yes"), dict(seed="a"),
                                    dict(surrogate=3)])
def test_bad_transformation_arguments_raise_input_error(kwargs: dict) -> None:
    with pytest.raises(InputError):
        AdversarialTransformation(_untrained(0), **kwargs)


def test_bad_inputs_raise_input_error(f_b: SmallCNN, images: torch.Tensor) -> None:
    g = AdversarialTransformation(f_b, steps=1)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        g(images * 2)
    with pytest.raises(InputError, match="NCHW"):
        g(images[0])
    with pytest.raises(InputError):
        AdversarialTransformation(lambda x: x)  # f_b must be a module
    with pytest.raises(InputError, match="kind"):
        g.bpda_surrogate("relu")
    with pytest.raises(InputError, match="temperature"):
        g.bpda_surrogate("tanh", temperature=0.0)
    with pytest.raises(InputError, match="samples"):
        selection_statistic(f_b, images[:2], samples=0)
    with pytest.raises(InputError, match="norm"):
        selection_statistic(f_b, images[:2], samples=1, norm="l2")
    data = make_shapes(8, seed=5)
    with pytest.raises(InputError, match="adversarial"):
        train_on_transformation(_untrained(0), g, data, ClassifierRecipe(adversarial=True))
    with pytest.raises(InputError, match="different"):
        train_on_transformation(f_b, g, data, ClassifierRecipe())
    with pytest.raises(InputError, match="adversarial=True"):
        compare_training_cost(lambda: _untrained(0), g, data, ClassifierRecipe(), ClassifierRecipe())
    with pytest.raises(InputError):
        fit_imitator(f_b, data)  # not a transformation
    with pytest.raises(InputError):
        PassCounter({})
    with pytest.raises(InputError, match="width"):
        SmallVGG(width=0)
    with pytest.raises(InputError, match="stages"):
        SmallVGG(input_size=8, stages=4)
