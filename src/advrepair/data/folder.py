"""Images sorted into one sub-folder per class: ``root/<class>/*.png`` (or ``root/<split>/<class>/``)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from advrepair.data.dataset import ImageDataset
from advrepair.errors import DatasetError, InputError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
_MODES: dict[int, str] = {1: "L", 3: "RGB"}


def _class_dirs(base: Path) -> list[Path]:
    # hidden folders (.ipynb_checkpoints, .git) are not classes
    return sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.name,
    )


def load_folder(
    split: str = "test",
    root: str | os.PathLike[str] | None = None,
    channels: int = 3,
    size: tuple[int, int] | None = None,
) -> ImageDataset:
    """Load every image below ``root``, one class per sub-folder, classes sorted by name.

    Args:
        split: used only if ``root/<split>`` is a folder; otherwise ignored.
        channels: 1 (greyscale, PIL mode "L") or 3 (PIL mode "RGB").
        size: (H, W) to resize every image to; without it all images must share one size.

    Returns:
        ImageDataset named "folder" with images uint8 (N, channels, H, W) and labels int64 (N,).
    """
    if channels not in _MODES:
        raise InputError(f"channels must be 1 or 3, got {channels!r}")
    if size is not None:
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
            raise InputError(f"size must be (H, W) with two positive integers, got {size!r}")
        size = (int(size[0]), int(size[1]))
    if root is None:
        raise DatasetError(
            "a folder dataset needs its location: give --data-root pointing at a folder with one "
            f"sub-folder of images ({', '.join(IMAGE_EXTENSIONS)}) per class"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"image folder {root} does not exist; expected {root}/<class_name>/<image>"
            f"{'|'.join(IMAGE_EXTENSIONS)} (or {root}/<split>/<class_name>/...)"
        )
    base = root / split if isinstance(split, str) and split and (root / split).is_dir() else root
    class_dirs = _class_dirs(base)
    if not class_dirs:
        raise DatasetError(
            f"image folder {base} has no class sub-folders; expected {base}/<class_name>/<image> "
            f"with extensions {', '.join(IMAGE_EXTENSIONS)}"
        )
    from PIL import Image, UnidentifiedImageError

    # Image.Resampling appeared in Pillow 9.1
    _BILINEAR = getattr(Image, "Resampling", Image).BILINEAR
    mode = _MODES[channels]
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for label, class_dir in enumerate(class_dirs):
        files = _image_files(class_dir)
        if not files:
            # an empty class folder is more often a misplaced file or a typo than intended
            raise DatasetError(
                f"class folder {class_dir} holds no images with extensions {', '.join(IMAGE_EXTENSIONS)}"
            )
        for path in files:
            try:
                with Image.open(path) as img:
                    img = img.convert(mode)
                    if size is not None and img.size != (size[1], size[0]):
                        img = img.resize((size[1], size[0]), _BILINEAR)  # PIL takes (W, H)
                    array = np.asarray(img, dtype=np.uint8)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise DatasetError(f"cannot read image {path}: {exc}") from exc
            hw = (int(array.shape[0]), int(array.shape[1]))
            if first is None:
                first = (path, hw)
            elif hw != first[1]:
                raise DatasetError(
                    f"images differ in size: {first[0]} is {first[1][0]}x{first[1][1]} but {path} is "
                    f"{hw[0]}x{hw[1]} (HxW); pass size=(H, W) to resize them all"
                )
            arrays.append(array.reshape(hw[0], hw[1], channels))
            labels.append(label)
    images = np.stack(arrays).transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return ImageDataset(
        name="folder",
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=[d.name for d in class_dirs],
        split=split,
    )
