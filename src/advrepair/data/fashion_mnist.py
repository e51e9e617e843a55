"""Fashion-MNIST from its four IDX files (as shipped by Debian's dataset-fashion-mnist)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from advrepair.data.dataset import ImageDataset, normalize_split
from advrepair.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx
from advrepair.errors import DatasetError

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "ADVREPAIR_FASHION_MNIST"

FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# torchvision and hand-made layouts put the files one or two levels down
_SUBDIRS: tuple[tuple[str, ...], ...] = ((), ("fashion-mnist",), ("FashionMNIST", "raw"))


def fashion_mnist_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder to read Fashion-MNIST from: ``root`` if given, else $ADVREPAIR_FASHION_MNIST, else the Debian path."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(FASHION_MNIST_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path(DEFAULT_FASHION_MNIST_DIR)


def _find(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, preferring the uncompressed file."""
    for name in (stem, stem + ".gz"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _missing_message(base: Path, split: str, searched: list[Path]) -> str:
    images, labels = FASHION_MNIST_FILES[split]
    return (
        f"Fashion-MNIST ({split} split) not found: expected {images}[.gz] and {labels}[.gz] "
        f"in {base} (looked in: {', '.join(str(p) for p in searched)}). "
        "Install it with `apt-get install dataset-fashion-mnist` (Debian, as root; the files land in "
        f"{DEFAULT_FASHION_MNIST_DIR}), or download the four IDX files "
        "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz) from https://github.com/zalandoresearch/fashion-mnist "
        f"and point --data-root or the {FASHION_MNIST_ENV} environment variable at their folder."
    )


def load_fashion_mnist(split: str = "test", root: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Load one split of Fashion-MNIST.

    Returns:
        ImageDataset with images uint8 (N, 1, 28, 28) and labels int64 (N,) in [0, 9];
        N is 60000 for ``"train"`` and 10000 for ``"test"`` in the official files.

    Raises:
        DatasetError: files missing or malformed (see ``read_idx``), or image and
            label counts that disagree.
    """
    split = normalize_split(split, tuple(FASHION_MNIST_FILES), "fashion-mnist")
    base = fashion_mnist_dir(root)
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    searched = [base.joinpath(*sub) for sub in _SUBDIRS]
    for folder in searched:
        image_path, label_path = _find(folder, image_stem), _find(folder, label_stem)
        if image_path is not None and label_path is not None:
            break
    else:
        raise DatasetError(_missing_message(base, split, searched))

    images = read_idx(image_path, IDX_IMAGES_MAGIC)
    labels = read_idx(label_path, IDX_LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DatasetError(
            f"Fashion-MNIST images in {image_path} are {images.shape[1]}x{images.shape[2]}, expected 28x28"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"Fashion-MNIST {split} split disagrees with itself: {image_path} holds {images.shape[0]} images "
            f"but {label_path} holds {labels.shape[0]} labels; download both files again"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(
            f"Fashion-MNIST labels in {label_path} go up to {int(labels.max())}, expected 0..9"
        )
    return ImageDataset(
        name="fashion-mnist",
        images=torch.from_numpy(images).unsqueeze(1),
        labels=torch.from_numpy(labels.astype("int64")),
        classes=list(FASHION_MNIST_CLASSES),
        split=split,
    )
