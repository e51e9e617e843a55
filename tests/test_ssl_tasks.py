"""Rotation and inpainting tasks (lawhon multi-task SSL reversal), the task registry, and the
multi-task reverse attack built from them."""
from __future__ import annotations

import pytest
import torch

from advrepair.attacks.pgd import PGD
from advrepair.data import ImageDataset
from advrepair.defenses.reverse_attack import ReverseAttack
from advrepair.errors import CheckpointError, InputError
from advrepair.models.small_cnn import SmallCNN
from advrepair.models.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from advrepair.models.registry import available_architectures
from advrepair.ssl.inpainting import (InpaintingNet, InpaintingTask, center_mask, random_rect_mask)
from advrepair.ssl.registry import (TASK_NAMES, build_task, head_arch_builders, task_from_checkpoint_parts)
from advrepair.ssl.rotation import RotationHead, RotationTask, rotate_all, rotation_accuracy
from advrepair.training.loops import train_classifier, train_ssl_task
from advrepair.training.recipe import ClassifierRecipe, SSLRecipe
from conftest import make_shapes

# strokes (x0, x1, y0, y1) in [-1, 1] coordinates, y pointing down: upright glyphs with no
# rotational symmetry, so "which way is up" is learnable (the conftest bars are 180-degree
# symmetric and their class set is closed under 90-degree turns: rotation is not)
_GLYPHS = [
    [(-0.6, 0.6, -0.6, -0.35), (-0.12, 0.12, -0.6, 0.6)],                              # T
    [(-0.5, -0.25, -0.6, 0.6), (-0.5, 0.5, 0.35, 0.6)],                                # L
    [(-0.5, -0.25, -0.6, 0.6), (-0.5, 0.5, -0.6, -0.35), (-0.5, 0.2, -0.1, 0.12)],     # F
    [(0.25, 0.5, -0.6, 0.6), (-0.5, 0.5, 0.35, 0.6), (-0.5, -0.25, 0.1, 0.6)],         # J
]


def make_glyphs(n: int, seed: int = 0, size: int = 28) -> ImageDataset:
    """Four upright letter-like glyphs, randomly shifted, scaled and brightened, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(_GLYPHS)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    imgs = torch.zeros(n, size, size)
    shift = 0.25 * (torch.rand(n, 2, generator=g) - 0.5)
    scale = 0.8 + 0.3 * torch.rand(n, generator=g)
    bright = 0.6 + 0.4 * torch.rand(n, generator=g)
    for i in range(n):
        x = (xx - shift[i, 0]) / scale[i]
        y = (yy - shift[i, 1]) / scale[i]
        for x0, x1, y0, y1 in _GLYPHS[int(labels[i])]:
            inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
            imgs[i] = torch.where(inside, bright[i], imgs[i])
    imgs = (imgs + 0.05 * torch.randn(n, size, size, generator=g)).clamp(0, 1)
    return ImageDataset(name="glyphs", images=(imgs[:, None] * 255).round().to(torch.uint8), labels=labels,
                        classes=["T", "L", "F", "J"], split="train")


def _noisy(x: torch.Tensor, eps: float = 0.5, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + eps * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)


def _numbers(task, b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((b, *task.numbers_per_image), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def clf() -> SmallCNN:
    """A small classifier trained briefly on 512 conftest bars (cheaper than ``clf``)."""
    torch.manual_seed(0)
    model = SmallCNN(num_classes=4, width=8, feature_dim=32)
    train_classifier(model, make_shapes(512, seed=0), ClassifierRecipe(epochs=2, batch_size=64, lr=3e-3),
                     seed=0, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def shapes_small() -> ImageDataset:
    return make_shapes(256, seed=2)


@pytest.fixture(scope="module")
def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    return make_shapes(96, seed=1).tensors()


@pytest.fixture(scope="module")
def glyphs_train() -> ImageDataset:
    return make_glyphs(256, seed=0)


@pytest.fixture(scope="module")
def glyphs_test() -> torch.Tensor:
    return make_glyphs(96, seed=1).tensors()[0]


@pytest.fixture(scope="module")
def rotation_task(clf, glyphs_train) -> RotationTask:
    torch.manual_seed(0)
    task = build_task("rotation", clf, width=8)
    history = train_ssl_task(task, clf, glyphs_train, SSLRecipe(epochs=2, batch_size=8, lr=1e-2),
                             seed=0, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    return task


@pytest.fixture(scope="module")
def inpainting_tasks(clf, shapes_small) -> dict[str, InpaintingTask]:
    tasks = {}
    for mode in ("center", "random"):
        torch.manual_seed(0)
        task = build_task("inpainting", clf, mask=mode, width=8)
        history = train_ssl_task(task, clf, shapes_small, SSLRecipe(epochs=3, batch_size=32, lr=3e-3),
                                 seed=0, progress=False)
        assert history[-1]["loss"] < history[0]["loss"]
        tasks[mode] = task
    return tasks


@pytest.fixture(scope="module")
def contrastive_task(clf):
    torch.manual_seed(0)
    data = make_shapes(512, seed=0)
    task = build_task("contrastive", clf, negatives=data.tensors(torch.arange(64))[0], hidden_dim=32, out_dim=16)
    train_ssl_task(task, clf, data, SSLRecipe(epochs=4, batch_size=128, lr=3e-3), seed=0, progress=False)
    return task


@pytest.fixture(scope="module")
def all_tasks(rotation_task, inpainting_tasks, contrastive_task, glyphs_test, held_out):
    """name -> (task, held-out clean images of the kind it was trained on)."""
    shapes = held_out[0]
    return {"rotation": (rotation_task, glyphs_test),
            "inpainting-center": (inpainting_tasks["center"], shapes),
            "inpainting-random": (inpainting_tasks["random"], shapes),
            "contrastive": (contrastive_task, shapes)}


TASK_KEYS = ["rotation", "inpainting-center", "inpainting-random", "contrastive"]


# ---------------------------------------------------------------- rotation


def test_rotate_all_layout_and_labels():
    x = torch.rand(3, 2, 5, 5)
    r = rotate_all(x)
    assert r.shape == (12, 2, 5, 5)
    for i in range(3):
        for k in range(4):
            assert torch.equal(r[4 * i + k], torch.rot90(x[i], k, dims=(1, 2)))
    assert not torch.equal(r[1], r[0])


def test_rotation_head_beats_chance_on_held_out_images(clf, rotation_task, glyphs_test):
    acc = rotation_accuracy(clf, rotation_task, glyphs_test)
    assert acc > 0.6, acc   # chance is 0.25
    # a head that learned which way is up finds glyphs turned by 90 degrees "wrong": higher L_r
    task_loss = rotation_task.per_image_loss(clf, glyphs_test, _numbers(rotation_task, len(glyphs_test)), None)
    turned = torch.rot90(glyphs_test, 1, dims=(2, 3))
    turned_loss = rotation_task.per_image_loss(clf, turned, _numbers(rotation_task, len(glyphs_test)), None)
    assert turned_loss.mean() > task_loss.mean() + 0.5, (task_loss.mean(), turned_loss.mean())


def test_rotation_on_classifier_features_trains(clf, glyphs_train):
    torch.manual_seed(0)
    task = build_task("rotation", clf, source="features", hidden_dim=32)
    assert task.head.config == {"source": "features", "in_dim": clf.feature_dim, "hidden_dim": 32}
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    history = train_ssl_task(task, clf, glyphs_train.subset(torch.arange(256)),
                             SSLRecipe(epochs=2, batch_size=64, lr=3e-3), seed=0, progress=False)
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())


def test_rotation_task_is_deterministic_with_no_numbers(clf, rotation_task, glyphs_test):
    assert rotation_task.numbers_per_image == (0,)
    a = rotation_task.per_image_loss(clf, glyphs_test[:4], torch.empty(4, 0), None)
    b = rotation_task.per_image_loss(clf, glyphs_test[:4], torch.empty(4, 0), None)
    assert torch.equal(a, b) and a.shape == (4,) and (a > 0).all()


# ---------------------------------------------------------------- inpainting


def test_center_mask_is_the_central_half_side_square():
    m = center_mask(2, 28, 28, 0.5)
    assert m.shape == (2, 1, 28, 28) and m.sum() == 2 * 14 * 14
    assert m[0, 0, 7:21, 7:21].min() == 1 and m[0, 0, 6].sum() == 0 and m[0, 0, :, 21].sum() == 0


def test_random_masks_follow_their_numbers_only():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(6, 2, 4, generator=g)
    m = random_rect_mask(u, 28, 28, (0.2, 0.35))
    assert m.shape == (6, 1, 28, 28)
    area = m.flatten(1).sum(1)
    assert (area >= 6 * 6).all() and (area <= 2 * 10 * 10).all()
    assert torch.equal(random_rect_mask(u[2:3], 28, 28, (0.2, 0.35)), m[2:3])
    assert not torch.equal(m[0], m[1])
    # extreme numbers keep the rectangle inside the image
    edge = random_rect_mask(torch.full((1, 1, 4), 0.999999), 28, 28, (0.5, 0.5))
    assert edge.sum() == 14 * 14 and edge[0, 0, 27, 27] == 1


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (2, 32)])
def test_inpainting_net_fits_its_sizes(channels, size):
    torch.manual_seed(0)
    net = InpaintingNet(channels, size, width=4)
    out = net(torch.rand(2, channels, size, size), torch.zeros(2, 1, size, size))
    assert out.shape == (2, channels, size, size) and out.min() > 0 and out.max() < 1
    with pytest.raises(InputError, match="built for"):
        net(torch.rand(2, channels, size + 4, size + 4), torch.zeros(2, 1, size + 4, size + 4))


def test_inpainting_loss_reads_only_the_masked_pixels(clf, inpainting_tasks, held_out):
    task = inpainting_tasks["center"]
    x = held_out[0][:4]
    u = _numbers(task, 4)
    y = x.clone()
    y[:, :, 7:21, 7:21] = torch.rand(4, 1, 14, 14)        # change only the hole: the target moves
    z = x.clone()
    z[:, :, :3, :] = 1.0                                  # change the context: the prediction moves
    base = task.per_image_loss(clf, x, u, None)
    assert not torch.allclose(task.per_image_loss(clf, y, u, None), base)
    assert not torch.allclose(task.per_image_loss(clf, z, u, None), base)
    pred, mask = task.reconstruct(x, u)
    manual = ((mask * (x - pred)) ** 2).flatten(1).sum(1) / mask.flatten(1).sum(1)
    assert torch.allclose(base, manual)


# ---------------------------------------------------------------- all tasks


@pytest.mark.parametrize("key", TASK_KEYS)
def test_loss_is_lower_on_clean_than_on_perturbed_images(key, clf, all_tasks, held_out):
    """Paired: the same random numbers (masks, views) for an image and its perturbed copy.

    Rotation and inpainting: uniform noise of eps 0.5. Contrastive: a PGD attack on the
    classifier (mao2021's premise); uniform noise *lowers* its loss here (noisy views look
    alike and unlike the clean negative bank), so noise is not the right probe for it.
    """
    task, x = all_tasks[key]
    if key == "contrastive":
        bad = PGD(clf, eps=0.16, alpha=0.03, steps=10)(x, held_out[1])
    else:
        bad = _noisy(x)
    u = _numbers(task, len(x))
    ctx = task.context(clf)
    with torch.no_grad():
        clean, perturbed = task.per_image_loss(clf, x, u, ctx), task.per_image_loss(clf, bad, u, ctx)
    diff = perturbed - clean
    assert diff.mean() > 3 * diff.std() / len(diff) ** 0.5, (key, clean.mean(), perturbed.mean())


@pytest.mark.parametrize("key", TASK_KEYS)
def test_per_image_loss_does_not_depend_on_the_batch(key, clf, all_tasks):
    """Equal up to float rounding: on CPU, oneDNN convolutions take another code path for a
    batch of one, which moves the last bits (the sign-step repair stays bit-identical)."""
    task, x = all_tasks[key]
    x = x[:6]
    u = _numbers(task, 6)
    ctx = task.context(clf)
    strangers = torch.rand(4, *x.shape[1:], generator=torch.Generator().manual_seed(5))
    u_strangers = torch.rand(4, *u.shape[1:], generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        batch = task.per_image_loss(clf, x, u, ctx)
        alone = torch.cat([task.per_image_loss(clf, x[i:i + 1], u[i:i + 1], ctx) for i in range(6)])
        mixed = task.per_image_loss(clf, torch.cat([strangers[:2], x, strangers[2:]]),
                                    torch.cat([u_strangers[:2], u, u_strangers[2:]]), ctx)[2:8]
    assert torch.allclose(alone, batch, rtol=1e-5, atol=1e-7)
    assert torch.allclose(mixed, batch, rtol=1e-5, atol=1e-7)
    assert batch.unique().numel() == 6


@pytest.mark.parametrize("key", TASK_KEYS)
def test_gradients_wrt_images_are_finite_and_nonzero(key, clf, all_tasks):
    task, x = all_tasks[key]
    x = x[:4].clone().requires_grad_(True)
    loss = task.per_image_loss(clf, x, _numbers(task, 4), task.context(clf))
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(g).all()
    assert (g.flatten(1).abs().sum(1) > 0).all()


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (1.0, 50.0, 10.0)])
def test_multi_task_reverse_attack(weights, clf, rotation_task, inpainting_tasks, contrastive_task,
                                   held_out):
    tasks = [contrastive_task, rotation_task, inpainting_tasks["random"]]
    defense = ReverseAttack(clf, list(zip(tasks, weights)), eps_v=0.1, steps=4, seed=0)
    x = _noisy(held_out[0][:5], eps=0.3)
    out = defense(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert (out - x).abs().max() <= 0.1 + 1e-6
    assert (out - x).abs().max() > 0.02
    alone = defense(x[3:4])
    assert torch.equal(alone, out[3:4])
    others = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(9))
    assert torch.equal(defense(torch.cat([others[:2], x[3:4], others[2:]]))[2:3], alone)
    assert [t["task"] for t in defense.params()["tasks"]] == ["contrastive", "rotation", "inpainting"]
    assert [t["weight"] for t in defense.params()["tasks"]] == list(weights)
    # the repair descends L_m = sum_k alpha_k L_k
    trace = defense.last_trace
    assert trace is not None and trace.mean_loss[-1] < trace.mean_loss[0]


def test_reverse_attack_weights_deterministic_tasks_exactly(clf, rotation_task, inpainting_tasks, held_out):
    """Tasks without random numbers go through ReverseAttack's zero-size draws; L_m is the weighted sum."""
    x = held_out[0][:4]
    center = inpainting_tasks["center"]
    probe = ReverseAttack(clf, [(rotation_task, 2.0), (center, 3.0)], eps_v=0.0, steps=0, seed=0)
    none = torch.empty(4, 0)
    with torch.no_grad():
        expected = (2 * rotation_task.per_image_loss(clf, x, none, None)
                    + 3 * center.per_image_loss(clf, x, none, None))
    assert torch.allclose(probe.ssl_loss(x), expected, rtol=1e-6)
    assert probe.ssl_loss(x).shape == (4,)


# ---------------------------------------------------------------- registry and checkpoints


def test_registry_builds_every_task_and_registers_heads(clf):
    negatives = torch.rand(4, 1, 28, 28)
    for name in TASK_NAMES:
        cfg = {"negatives": negatives} if name == "contrastive" else {}
        task = build_task(name, clf, **cfg)
        assert task.name == name and task.head.arch in head_arch_builders
    assert set(head_arch_builders) <= set(available_architectures())


@pytest.mark.parametrize("name,cfg", [("rotation", {"width": 4}),
                                      ("rotation", {"source": "features", "hidden_dim": 8}),
                                      ("inpainting", {"width": 4, "mask": "random", "n_rects": 3,
                                                      "rect_frac": (0.1, 0.3)})])
def test_saved_head_rebuilds_the_same_task(name, cfg, clf, tmp_path):
    torch.manual_seed(0)
    task = build_task(name, clf, **cfg).eval()
    save_checkpoint(task.head, tmp_path / name, ModelCard(kind=f"ssl-{name}", arch=task.head.arch,
                                                          config=task.head.config, parent={"task": task.config()}))
    head, card = load_checkpoint(tmp_path / name, expected_kind=f"ssl-{name}")
    again = task_from_checkpoint_parts(name, head, card.parent["task"])
    assert again.config() == task.config() and again.numbers_per_image == task.numbers_per_image
    x = torch.rand(3, 1, 28, 28)
    u = _numbers(task, 3)
    assert torch.equal(again.per_image_loss(clf, x, u, None), task.per_image_loss(clf, x, u, None))


def test_contrastive_rebuild_needs_negatives(clf):
    task = build_task("contrastive", clf, negatives=torch.rand(4, 1, 28, 28))
    with pytest.raises(InputError, match="negatives"):
        task_from_checkpoint_parts("contrastive", task.head, task.config())
    again = task_from_checkpoint_parts("contrastive", task.head, task.config(), negatives=torch.rand(4, 1, 28, 28))
    assert again.n_views == task.n_views and again.tau == task.tau


def test_registry_errors(clf):
    with pytest.raises(InputError, match="contrastive.*rotation.*inpainting"):
        build_task("jigsaw", clf)
    with pytest.raises(InputError, match="jigsaw"):
        task_from_checkpoint_parts("jigsaw", RotationHead(), {})
    with pytest.raises(InputError, match="negatives"):
        build_task("contrastive", clf)
    with pytest.raises(InputError, match="does not take.*tau"):
        build_task("rotation", clf, tau=0.2)
    with pytest.raises(CheckpointError, match="RotationHead"):
        task_from_checkpoint_parts("rotation", InpaintingNet(1, 28, 4), {})


def test_bad_arguments_raise_input_errors(clf, rotation_task):
    net = InpaintingNet(1, 28, 4)
    with pytest.raises(InputError, match="mask mode.*center.*random"):
        InpaintingTask(net, mask="diamond")
    with pytest.raises(InputError, match="mask_frac"):
        InpaintingTask(net, mask_frac=1.5)
    with pytest.raises(InputError, match="rect_frac"):
        InpaintingTask(net, rect_frac=(0.5, 0.2))
    with pytest.raises(InputError, match="rect_frac"):
        InpaintingTask(net, rect_frac=0.3)
    with pytest.raises(InputError, match="n_rects"):
        InpaintingTask(net, mask="random", n_rects=0)
    with pytest.raises(InputError, match="InpaintingNet"):
        InpaintingTask(RotationHead(), mask="center")
    with pytest.raises(InputError, match="u of shape"):
        InpaintingTask(net, mask="random").per_image_loss(clf, torch.rand(2, 1, 28, 28),
                                                           torch.rand(2, 4), None)
    with pytest.raises(InputError, match="source"):
        RotationHead("pixels")
    with pytest.raises(InputError, match="in_dim"):
        RotationHead("features")
    with pytest.raises(InputError, match="RotationHead"):
        RotationTask(net)
    with pytest.raises(InputError, match="square"):
        rotation_task.per_image_loss(clf, torch.rand(2, 1, 28, 24), torch.empty(2, 0), None)
    with pytest.raises(InputError, match="range|\\[0, 1\\]"):
        rotation_accuracy(clf, rotation_task, 2 * torch.ones(2, 1, 28, 28))
    with pytest.raises(InputError, match="in_channels"):
        InpaintingNet(0, 28)
