"""Shared fixtures: a small generated image dataset and briefly trained models on it."""
from __future__ import annotations

import math

import pytest
import torch

from advrepair.data import ImageDataset
from advrepair.models import SmallCNN
from advrepair.training import ClassifierRecipe, train_classifier

torch.set_num_threads(2)


def make_shapes(n: int, seed: int = 0, size: int = 28, classes: int = 4) -> ImageDataset:
    """Class k is a bar at angle k*pi/classes with random offset, width, brightness and noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    angle = labels.float() * math.pi / classes + 0.15 * torch.randn(n, generator=g)
    offset = 0.4 * (torch.rand(n, generator=g) - 0.5)
    width = 0.12 + 0.1 * torch.rand(n, generator=g)
    bright = 0.6 + 0.4 * torch.rand(n, generator=g)
    dist = (xx[None] * torch.sin(angle)[:, None, None] - yy[None] * torch.cos(angle)[:, None, None]
            - offset[:, None, None]).abs()
    img = bright[:, None, None] * torch.exp(-(dist / width[:, None, None]) ** 2)
    img = (img + 0.05 * torch.randn(n, size, size, generator=g)).clamp(0, 1)
    return ImageDataset(name="shapes", images=(img[:, None] * 255).round().to(torch.uint8), labels=labels,
                        classes=[f"bar{k}" for k in range(classes)], split="train")


@pytest.fixture(scope="session")
def shapes_train() -> ImageDataset:
    return make_shapes(2000, seed=0)


@pytest.fixture(scope="session")
def shapes_test() -> ImageDataset:
    ds = make_shapes(200, seed=1)
    ds.split = "test"
    return ds


@pytest.fixture(scope="session")
def trained_cnn(shapes_train: ImageDataset) -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=4, width=8, feature_dim=32)
    train_classifier(model, shapes_train, ClassifierRecipe(epochs=2, batch_size=64, lr=3e-3), seed=0,
                     progress=False)
    return model.eval()


@pytest.fixture()
def random_cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(num_classes=10, width=8, feature_dim=32).eval()


@pytest.fixture
def one_thread():
    """Torch on one thread for the test: on tiny tensors thread hand-offs cost more than they
    save on 2 cores. Files opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread_module():
    """``one_thread`` for a whole module (its module-scoped fixtures train under it too);
    files opt in with ``pytestmark = pytest.mark.usefixtures("one_thread_module")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
