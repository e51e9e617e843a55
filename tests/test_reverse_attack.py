import pytest
import torch
import torchattacks
from torch import nn

import advrepair.defenses.reverse_attack as reverse_attack_module
from advrepair.attacks import PGD
from advrepair.defenses import ReverseAttack
from advrepair.errors import InputError
from advrepair.models import PreActResNet18
from advrepair.ssl import ContrastiveHead, ContrastiveTask


def _defense(model, eps_v=0.2, steps=5, seed=0, n_views=3):
    torch.manual_seed(0)
    negatives = torch.rand(16, model.in_channels, model.input_size, model.input_size)
    task = ContrastiveTask(ContrastiveHead(model.feature_dim, 32, 16), n_views=n_views, negatives=negatives)
    return ReverseAttack(model, task, eps_v=eps_v, steps=steps, seed=seed)


def test_repair_does_not_depend_on_batch_mates(random_cnn):
    torch.manual_seed(1)
    images = torch.rand(6, 1, 28, 28)
    others = torch.rand(9, 1, 28, 28)
    defense = _defense(random_cnn)
    alone = defense(images[2:3])
    in_batch = defense(images)[2:3]
    with_strangers = defense(torch.cat([others[:4], images[2:3], others[4:]]))[4:5]
    assert torch.equal(alone, in_batch)
    assert torch.equal(alone, with_strangers)


def test_repair_is_seeded(random_cnn):
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(_defense(random_cnn, seed=4)(x), _defense(random_cnn, seed=4)(x))
    assert not torch.equal(_defense(random_cnn, seed=4)(x), _defense(random_cnn, seed=5)(x))
    unseeded = _defense(random_cnn, seed=None)
    assert not torch.equal(unseeded(x), unseeded(x))


def test_repair_stays_in_the_eps_v_ball_and_box(random_cnn):
    x = torch.rand(4, 1, 28, 28)
    out = _defense(random_cnn, eps_v=0.05)(x)
    assert (out - x).abs().max() <= 0.05 + 1e-6
    assert out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().max() > 0.01


def test_repair_lowers_the_self_supervised_loss(random_cnn):
    torch.manual_seed(3)
    x = torch.rand(8, 1, 28, 28)
    defense = _defense(random_cnn, eps_v=0.2, steps=20)
    defense(x)
    losses = defense.last_trace.mean_loss
    assert losses[-1] < losses[0]


def test_networks_are_in_eval_mode_during_repair_and_modes_restored():
    model = PreActResNet18(num_classes=10)
    defense = _defense(model, steps=2, n_views=2)
    model.train()
    stats = model.bn.running_mean.clone()
    defense(torch.rand(2, 3, 32, 32))
    assert torch.equal(model.bn.running_mean, stats), "BatchNorm statistics changed during the repair"
    assert model.training


def test_defended_model_is_an_ordinary_module_for_attack_libraries(random_cnn):
    defended = nn.Sequential(_defense(random_cnn, steps=2), random_cnn)
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([1, 2])
    assert defended(x).shape == (2, 10)
    # an attack library can run against it (its gradient is the unrolled sign-PGD's: zero
    # almost everywhere, which is why the adaptive protocol uses BPDA)
    torchattacks.FGSM(defended, eps=0.1)(x, y)
    PGD(defended, eps=0.1, alpha=0.05, steps=1)(x, y)


def test_bad_inputs_are_rejected(random_cnn):
    defense = _defense(random_cnn)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        defense(torch.full((1, 1, 28, 28), 2.0))
    with pytest.raises(InputError, match="eps_v"):
        _defense(random_cnn, eps_v=-0.1)
    with pytest.raises(ValueError, match="negative bank"):
        ReverseAttack(random_cnn, ContrastiveTask(ContrastiveHead(32)), eps_v=0.1, steps=1)(torch.rand(1, 1, 28, 28))


def test_gradient_through_the_repair_is_the_exact_derivative_of_the_sign_loop(random_cnn):
    # sign steps are piecewise constant, so d repaired / d x is the identity for pixels the
    # box [0, 1] never clamps (the ball's clamp moves with x), and zero once the box clamps
    torch.manual_seed(0)
    x = (0.35 + 0.3 * torch.rand(2, 1, 28, 28)).requires_grad_(True)
    (g,) = torch.autograd.grad(_defense(random_cnn, eps_v=0.3, steps=4)(x).sum(), x)
    assert torch.equal(g, torch.ones_like(g))
    y = torch.rand(2, 1, 28, 28).requires_grad_(True)
    out = _defense(random_cnn, eps_v=0.3, steps=4)(y)
    (g,) = torch.autograd.grad(out.sum(), y)
    assert set(g.unique().tolist()) == {0.0, 1.0}
    assert (g[(out == 0) | (out == 1)] == 0).all()


def test_chunk_size_changes_speed_not_the_repair(random_cnn):
    torch.manual_seed(5)
    x = torch.rand(7, 1, 28, 28)
    one_pass = _defense(random_cnn)
    one_pass.chunk_size = 7
    chunked = _defense(random_cnn)
    chunked.chunk_size = 3
    assert torch.equal(one_pass(x), chunked(x))
    assert len(chunked.last_trace.per_image_loss[0]) == 7


def test_the_automatic_chunk_follows_the_activation_budget(random_cnn, monkeypatch):
    x = torch.rand(9, 1, 28, 28)
    auto = _defense(random_cnn)
    auto.chunk_size = None
    per_image = auto._activation_bytes(x[:1], None)
    monkeypatch.setattr(reverse_attack_module, "AUTO_CHUNK_BYTES", 4 * per_image)
    assert auto.chunk_for(x) == 4
    assert list(auto._auto_chunks.values()) == [4]  # measured once for this image shape
    fixed = _defense(random_cnn)
    fixed.chunk_size = 9
    assert torch.equal(auto(x), fixed(x))
    monkeypatch.setattr(reverse_attack_module, "AUTO_CHUNK_BYTES", 1)
    auto._auto_chunks.clear()
    assert auto.chunk_for(x) == 1
    with pytest.raises(ValueError, match="chunk_size must be >= 1 or None"):
        ReverseAttack(random_cnn, auto.task_list[0], eps_v=0.1, chunk_size=0)


def test_surrogate_changes_the_gradient_not_the_repair(random_cnn):
    from advrepair.engine import tanh_surrogate

    torch.manual_seed(0)
    x = (0.35 + 0.3 * torch.rand(2, 1, 28, 28)).requires_grad_(True)
    exact = _defense(random_cnn, eps_v=0.3, steps=3)
    smooth = _defense(random_cnn, eps_v=0.3, steps=3)
    smooth.surrogate = tanh_surrogate(1e-3)
    out_exact, out_smooth = exact(x), smooth(x)
    assert torch.equal(out_exact, out_smooth)
    (g_exact,) = torch.autograd.grad(out_exact.sum(), x)
    (g_smooth,) = torch.autograd.grad(out_smooth.sum(), x)
    assert torch.equal(g_exact, torch.ones_like(g_exact))
    assert torch.isfinite(g_smooth).all() and not torch.allclose(g_smooth, g_exact)
    with torch.no_grad():  # without gradient tracking the surrogate costs nothing
        assert torch.equal(smooth(x.detach()), out_exact.detach())
