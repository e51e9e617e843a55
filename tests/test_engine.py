import torch

from advrepair.engine import MomentumSignStep, project, projected_gradient, random_start, random_start_numbers
from advrepair.enums import Norm


def test_linf_projection_is_inside_ball_and_box():
    torch.manual_seed(0)
    c = torch.rand(4, 1, 5, 5)
    x = c + torch.randn_like(c)
    p = project(x, c, 0.1, Norm.LINF)
    assert (p - c).abs().max() <= 0.1 + 1e-6
    assert p.min() >= 0 and p.max() <= 1


def test_l2_projection_is_inside_ball_and_box_and_idempotent_inside():
    torch.manual_seed(0)
    c = torch.rand(4, 3, 5, 5)
    x = c + torch.randn_like(c)
    p = project(x, c, 0.5, Norm.L2)
    assert ((p - c).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert p.min() >= 0 and p.max() <= 1
    inside = project(c + 0.001 * torch.randn_like(c), c, 0.5, Norm.L2)
    assert torch.allclose(project(inside, c, 0.5, Norm.L2), inside)


def test_random_starts_fill_the_ball():
    c = torch.full((64, 1, 4, 4), 0.5)
    for norm, eps in ((Norm.LINF, 0.2), (Norm.L2, 0.3)):
        u = torch.rand(64, *random_start_numbers(c, norm))
        s = random_start(c, eps, norm, u)
        d = (s - c).flatten(1)
        size = d.abs().max(1).values if norm is Norm.LINF else d.norm(dim=1)
        assert (size <= eps + 1e-5).all() and size.max() > 0.5 * eps


def test_loop_ascends_and_descends_a_quadratic():
    target = torch.full((2, 1, 3, 3), 0.8)
    x0 = torch.full((2, 1, 3, 3), 0.5)

    def loss(x, _k):
        return ((x - target) ** 2).flatten(1).sum(1)

    down = projected_gradient(x0, loss, center=x0, eps=0.2, step_size=0.05, steps=10, maximize=False)
    assert torch.allclose(down, torch.full_like(x0, 0.7))  # stops at the ball's edge toward the target
    up = projected_gradient(x0, loss, center=x0, eps=0.2, step_size=0.05, steps=10, maximize=True)
    assert torch.allclose(up, torch.full_like(x0, 0.3))


def test_momentum_accumulates_normalized_gradients():
    rule = MomentumSignStep(decay=1.0)
    g1 = torch.tensor([[[[1.0, -3.0]]]])
    g2 = torch.tensor([[[[-2.0, 0.1]]]])
    rule.direction(g1)
    d = rule.direction(g2)
    # velocity = g1/4 + g2/2.1 = [0.25 - 0.952, -0.75 + 0.0476]
    assert torch.equal(d, torch.tensor([[[[-1.0, -1.0]]]]))


def test_surrogate_keeps_the_sign_step_and_differentiates_through_tanh():
    from advrepair.engine import tanh_surrogate

    # one descent step on L = sum(w x^2): x1 = x0 - eta * sign(2 w x0); with the surrogate,
    # d x1 / d x0 = 1 - eta * (1 - tanh(2 w x0 / t)^2) * 2 w / t (inside the ball and box)
    torch.manual_seed(0)
    w = torch.rand(1, 1, 4, 4) + 0.5
    x0 = (0.3 + 0.4 * torch.rand(1, 1, 4, 4)).requires_grad_(True)
    eta, t = 0.01, 0.5

    def loss(x, _k):
        return (w * x**2).flatten(1).sum(1)

    x1 = projected_gradient(x0, loss, center=x0.detach(), eps=0.5, step_size=eta, steps=1, maximize=False,
                            surrogate=tanh_surrogate(t))
    assert torch.allclose(x1, x0 - eta * torch.sign(2 * w * x0))
    (g,) = torch.autograd.grad(x1.sum(), x0)
    expected = 1 - eta * (1 - torch.tanh(2 * w * x0 / t) ** 2) * 2 * w / t
    assert torch.allclose(g, expected.detach(), atol=1e-6)
    plain = projected_gradient(x0, loss, center=x0.detach(), eps=0.5, step_size=eta, steps=1, maximize=False)
    (g_plain,) = torch.autograd.grad(plain.sum(), x0)
    assert torch.equal(g_plain, torch.ones_like(g_plain))  # sign' = 0: only the identity path
