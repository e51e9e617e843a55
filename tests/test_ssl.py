import pytest
import torch

from advrepair.attacks import PGD
from advrepair.defenses import ReverseAttack
from advrepair.ssl import (N_AUG_NUMBERS, AugmentConfig, ContrastiveHead, ContrastiveTask, augment,
                           augment_views, multiview_contrastive_loss, nt_xent)
from advrepair.training import SSLRecipe, train_ssl_task


@pytest.mark.parametrize("channels", [1, 3])
def test_augment_is_deterministic_in_range_and_differentiable(channels):
    torch.manual_seed(0)
    x = torch.rand(5, channels, 16, 16, requires_grad=True)
    u = torch.rand(5, N_AUG_NUMBERS)
    a, b = augment(x, u), augment(x, u)
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1
    (g,) = torch.autograd.grad(a.sum(), x)
    assert g.abs().sum() > 0
    assert not torch.allclose(augment(x, torch.rand(5, N_AUG_NUMBERS)), a)


def test_identity_numbers_give_nearly_the_identity():
    x = torch.rand(2, 1, 16, 16)
    u = torch.zeros(2, N_AUG_NUMBERS)
    u[:, 0] = 1.0            # full-area crop
    u[:, 1] = 0.5            # aspect ratio 1
    u[:, 5] = 1.0            # no color jitter
    cfg = AugmentConfig(crop_ratio=(1.0, 1.0))
    assert torch.allclose(augment(x, u, cfg), x, atol=1e-5)


def test_views_are_laid_out_image_major():
    x = torch.rand(3, 1, 8, 8)
    u = torch.rand(3, 2, N_AUG_NUMBERS)
    v = augment_views(x, u)
    assert torch.allclose(v[2:4], augment_views(x[1:2], u[1:2]))


def test_nt_xent_prefers_matching_pairs():
    torch.manual_seed(0)
    z = torch.randn(16, 8)
    assert nt_xent(z, z + 0.01 * torch.randn_like(z), 0.2) < nt_xent(z, torch.randn(16, 8), 0.2)


def test_multiview_loss_is_low_for_agreeing_views():
    torch.manual_seed(0)
    neg = torch.randn(32, 8)
    anchor = torch.randn(4, 1, 8)
    agree = anchor.expand(4, 3, 8) + 0.01 * torch.randn(4, 3, 8)
    disagree = torch.randn(4, 3, 8)
    assert (multiview_contrastive_loss(agree, neg, 0.2) < multiview_contrastive_loss(disagree, neg, 0.2)).all()


@pytest.fixture(scope="module")
def contrastive_task(trained_cnn, shapes_train):
    torch.manual_seed(0)
    negatives = shapes_train.tensors(torch.arange(64))[0]
    task = ContrastiveTask(ContrastiveHead(trained_cnn.feature_dim, 64, 32), negatives=negatives)
    history = train_ssl_task(task, trained_cnn, shapes_train, SSLRecipe(epochs=3, batch_size=128, lr=3e-3),
                             seed=0, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    return task


def test_attacks_raise_the_contrastive_loss_after_short_training(trained_cnn, contrastive_task, shapes_test):
    x, y = shapes_test.tensors()
    adv = PGD(trained_cnn, eps=0.16, alpha=0.02, steps=20)(x, y)
    probe = ReverseAttack(trained_cnn, contrastive_task, eps_v=0.0, steps=0)
    clean_loss, adv_loss = probe.ssl_loss(x), probe.ssl_loss(adv)
    diff = adv_loss - clean_loss
    # paired comparison: the mean rise must exceed 3 standard errors of the paired differences
    assert diff.mean() > 3 * diff.std() / len(diff) ** 0.5, (clean_loss.mean(), adv_loss.mean())


def test_training_leaves_the_classifier_untouched(trained_cnn, shapes_train):
    before = {k: v.clone() for k, v in trained_cnn.state_dict().items()}
    task = ContrastiveTask(ContrastiveHead(trained_cnn.feature_dim, 16, 8), negatives=torch.rand(8, 1, 28, 28))
    train_ssl_task(task, trained_cnn, shapes_train.subset(torch.arange(128)), SSLRecipe(epochs=1), progress=False)
    assert all(torch.equal(before[k], v) for k, v in trained_cnn.state_dict().items())
    assert all(p.requires_grad for p in trained_cnn.parameters())


def test_fewer_than_two_views_is_rejected():
    with pytest.raises(ValueError, match="n_views"):
        ContrastiveTask(ContrastiveHead(4), n_views=1)
