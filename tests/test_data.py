"""Tests of advrepair.data: every format round-trips tiny files written here, malformed files fail clearly."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from advrepair.data import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    ImageDataset,
    balanced_subset,
    fashion_mnist_dir,
    first_n,
    load_dataset,
    per_class,
)
from advrepair.enums import DatasetName
from advrepair.errors import DatasetError, InputError

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------- writers

def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, split: str = "test", n: int = 6, gz: bool = False,
                 n_labels: int | None = None, image_magic: int = 0x803, cut: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Write one split of a fake Fashion-MNIST; returns the images (N, 28, 28) and labels written."""
    folder.mkdir(parents=True, exist_ok=True)
    images = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n_labels if n_labels is not None else n) % 10).astype(np.uint8)
    prefix = "t10k" if split == "test" else "train"
    suffix = ".gz" if gz else ""
    blobs = {
        f"{prefix}-images-idx3-ubyte{suffix}": _idx_bytes(images, image_magic),
        f"{prefix}-labels-idx1-ubyte{suffix}": _idx_bytes(labels, 0x801),
    }
    for name, blob in blobs.items():
        if cut and "images" in name:
            blob = blob[:-cut]
        (folder / name).write_bytes(gzip.compress(blob) if gz else blob)
    return images, labels


def cifar_arrays(n: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = RNG.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = (np.arange(n) * 7 % num_classes).astype(np.int64)
    return images, labels


def write_cifar_bin(folder: Path, variant: str, train: list[tuple[np.ndarray, np.ndarray]],
                    test: tuple[np.ndarray, np.ndarray], classes: list[str]) -> None:
    folder.mkdir(parents=True)

    def records(images: np.ndarray, labels: np.ndarray) -> bytes:
        flat = images.reshape(len(images), -1)
        if variant == "cifar10":
            head = labels.reshape(-1, 1)
        else:  # coarse label first, then fine; coarse set to a different value on purpose
            head = np.stack([(labels + 1) % 20, labels], axis=1)
        return np.concatenate([head.astype(np.uint8), flat], axis=1).tobytes()

    if variant == "cifar10":
        for i, part in enumerate(train, start=1):
            (folder / f"data_batch_{i}.bin").write_bytes(records(*part))
        (folder / "test_batch.bin").write_bytes(records(*test))
        (folder / "batches.meta.txt").write_text("\n".join(classes) + "\n\n")
    else:
        (folder / "train.bin").write_bytes(records(*train[0]))
        (folder / "test.bin").write_bytes(records(*test))
        (folder / "fine_label_names.txt").write_text("\n".join(classes) + "\n")


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings (BINSTRING), as in the original CIFAR python files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string


def write_cifar_py(folder: Path, variant: str, train: list[tuple[np.ndarray, np.ndarray]],
                   test: tuple[np.ndarray, np.ndarray], classes: list[str], style: str = "py2") -> None:
    """Pickled batches like the python distribution.

    style "py2": Python 2 byte strings and numpy 1.x global names, like the published files;
    style "py3": protocol 3 with str keys and this numpy's global names.
    """
    folder.mkdir(parents=True)
    label_key = "labels" if variant == "cifar10" else "fine_labels"

    def dump(path: Path, obj: dict) -> None:
        if style == "py2":
            buf = io.BytesIO()
            Py2Pickler(buf, protocol=2).dump(obj)
            blob = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
        else:
            blob = pickle.dumps(obj, protocol=3)
        path.write_bytes(blob)

    def batch(images: np.ndarray, labels: np.ndarray) -> dict:
        out = {"batch_label": "batch", "data": images.reshape(len(images), -1),
               label_key: [int(v) for v in labels], "filenames": ["x.png"] * len(labels)}
        if variant == "cifar100":
            out["coarse_labels"] = [int(v) % 20 for v in labels]
        return out

    if variant == "cifar10":
        for i, part in enumerate(train, start=1):
            dump(folder / f"data_batch_{i}", batch(*part))
        dump(folder / "test_batch", batch(*test))
        dump(folder / "batches.meta", {"label_names": list(classes), "num_vis": 3072})
    else:
        dump(folder / "train", batch(*train[0]))
        dump(folder / "test", batch(*test))
        dump(folder / "meta", {"fine_label_names": list(classes), "coarse_label_names": ["c"] * 20})


# ---------------------------------------------------------------- ImageDataset

def test_image_dataset_tensors_subset_batches() -> None:
    images = torch.arange(5 * 1 * 2 * 2, dtype=torch.uint8).reshape(5, 1, 2, 2)
    ds = ImageDataset("toy", images, torch.tensor([0, 1, 0, 1, 1]), ["a", "b"])
    assert len(ds) == 5 and ds.num_classes == 2 and ds.image_shape == (1, 2, 2)
    x, y = ds.tensors()
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, images.float() / 255)
    x2, y2 = ds.tensors([4, 0])
    torch.testing.assert_close(x2, x[[4, 0]])
    assert y2.tolist() == [1, 0]
    sub = ds.subset([1, 3])
    assert sub.labels.tolist() == [1, 1] and sub.classes == ["a", "b"] and sub.split == "test"
    assert torch.equal(sub.images, images[[1, 3]])
    batches = list(ds.batches(2))
    assert [len(b[1]) for b in batches] == [2, 2, 1]
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), x)
    assert ds.images.dtype == torch.uint8  # tensors() must not convert in place


def test_image_dataset_rejects_bad_contents() -> None:
    good = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(InputError, match="uint8 or float32"):
        ImageDataset("toy", good.double(), torch.tensor([0, 1]), ["a", "b"])
    with pytest.raises(InputError, match=r"lie in \[0, 1\]"):
        ImageDataset("toy", good.float() + 2, torch.tensor([0, 1]), ["a", "b"])
    floats = torch.rand(2, 1, 2, 2)
    kept = ImageDataset("toy", floats, torch.tensor([0, 1]), ["a", "b"])  # float images stay exactly as given
    assert torch.equal(kept.tensors()[0], floats) and torch.equal(next(kept.batches(2))[0], floats)
    with pytest.raises(InputError, match="labels must lie"):
        ImageDataset("toy", good, torch.tensor([0, 2]), ["a", "b"])
    ds = ImageDataset("toy", good, torch.tensor([0, 1]), ["a", "b"])
    with pytest.raises(InputError, match="indices"):
        ds.subset([2])
    with pytest.raises(InputError, match="batch_size"):
        next(ds.batches(0))


# ---------------------------------------------------------------- Fashion-MNIST (IDX)

@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    images, labels = write_fmnist(tmp_path, "test", n=7, gz=gz)
    train_images, train_labels = write_fmnist(tmp_path, "train", n=12, gz=gz)
    ds = load_dataset("fashion-mnist", split="test", root=tmp_path)
    assert ds.name == "fashion-mnist" and ds.split == "test"
    assert ds.images.shape == (7, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert np.array_equal(ds.images[:, 0].numpy(), images)
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
    assert ds.classes == FASHION_MNIST_CLASSES
    train = load_dataset(DatasetName.FASHION_MNIST, split="train", root=tmp_path)
    assert np.array_equal(train.images[:, 0].numpy(), train_images)
    assert train.labels.tolist() == train_labels.tolist()


def test_idx_wrong_magic(tmp_path: Path) -> None:
    write_fmnist(tmp_path, image_magic=0x801)
    with pytest.raises(DatasetError, match="magic number 0x00000801, expected 0x00000803"):
        load_dataset("fashion-mnist", root=tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path: Path, gz: bool) -> None:
    write_fmnist(tmp_path, cut=10, gz=gz)
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    write_fmnist(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])  # cut inside the compressed stream
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    write_fmnist(tmp_path, n=5, n_labels=4)
    with pytest.raises(DatasetError, match="5 images but .* 4 labels"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_fashion_mnist_missing_names_files_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", split="train", root=tmp_path)
    message = str(info.value)
    for needle in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", str(tmp_path),
                   "apt-get install dataset-fashion-mnist", "--data-root", FASHION_MNIST_ENV):
        assert needle in message


def test_fashion_mnist_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    assert fashion_mnist_dir() == Path(DEFAULT_FASHION_MNIST_DIR)
    env_dir = tmp_path / "from_env"
    monkeypatch.setenv(FASHION_MNIST_ENV, str(env_dir))
    assert fashion_mnist_dir() == env_dir
    assert fashion_mnist_dir(tmp_path / "arg") == tmp_path / "arg"
    images, _ = write_fmnist(env_dir, n=3, gz=True)
    ds = load_dataset("fashion-mnist")  # no root: the environment variable decides
    assert np.array_equal(ds.images[:, 0].numpy(), images)


@pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(), reason="Debian's Fashion-MNIST is not installed")
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    for split, n in (("train", 60000), ("test", 10000)):
        ds = load_dataset("fashion-mnist", split=split)
        assert ds.images.shape == (n, 1, 28, 28)
        assert ds.labels.shape == (n,)
        assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
        assert torch.bincount(ds.labels).tolist() == [n // 10] * 10


# ---------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("dist", ["bin", "py"])
@pytest.mark.parametrize("give_parent", [False, True])
def test_cifar10_round_trip(tmp_path: Path, dist: str, give_parent: bool) -> None:
    classes = [f"class{i}" for i in range(10)]
    train = [cifar_arrays(3, 10) for _ in range(5)]
    test = cifar_arrays(4, 10)
    folder = tmp_path / f"cifar-10-batches-{dist}"
    (write_cifar_bin if dist == "bin" else write_cifar_py)(folder, "cifar10", train, test, classes)
    root = tmp_path if give_parent else folder
    if dist == "py":  # written like the published Python 2 files, numpy 1.x names included
        assert b"numpy.core.multiarray\n_reconstruct" in (folder / "test_batch").read_bytes()
    ds = load_dataset("cifar10", split="test", root=root)
    assert ds.images.shape == (4, 3, 32, 32) and ds.image_shape == (3, 32, 32)
    assert np.array_equal(ds.images.numpy(), test[0])
    assert ds.labels.tolist() == test[1].tolist() and ds.classes == classes
    tr = load_dataset("cifar-10", split="train", root=root)
    assert np.array_equal(tr.images.numpy(), np.concatenate([t[0] for t in train]))
    assert tr.labels.tolist() == np.concatenate([t[1] for t in train]).tolist()


@pytest.mark.parametrize("dist", ["bin", "py"])
def test_cifar100_round_trip_uses_fine_labels(tmp_path: Path, dist: str) -> None:
    classes = [f"fine{i}" for i in range(100)]
    train, test = [cifar_arrays(5, 100)], cifar_arrays(6, 100)
    folder = tmp_path / ("cifar-100-binary" if dist == "bin" else "cifar-100-python")
    (write_cifar_bin if dist == "bin" else write_cifar_py)(folder, "cifar100", train, test, classes)
    for root in (tmp_path, folder):
        ds = load_dataset("cifar100", split="test", root=root)
        assert np.array_equal(ds.images.numpy(), test[0])
        assert ds.labels.tolist() == test[1].tolist()
        assert ds.classes == classes and ds.num_classes == 100
    tr = load_dataset("cifar100", split="train", root=folder)
    assert tr.labels.tolist() == train[0][1].tolist()


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_python3_pickles_with_str_keys(tmp_path: Path, variant: str) -> None:
    num_classes = 10 if variant == "cifar10" else 100
    classes = [f"c{i}" for i in range(num_classes)]
    test = cifar_arrays(3, num_classes)
    folder = tmp_path / "extracted"
    write_cifar_py(folder, variant, [cifar_arrays(1, num_classes)] * 5, test, classes, style="py3")
    ds = load_dataset(variant, root=folder, distribution="py")
    assert np.array_equal(ds.images.numpy(), test[0]) and ds.classes == classes


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the payload a hostile pickle would carry
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("file_name", ["test_batch", "batches.meta"])
def test_cifar_malicious_pickle_is_refused_without_running(tmp_path: Path, file_name: str) -> None:
    classes = [f"c{i}" for i in range(10)]
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_py(folder, "cifar10", [cifar_arrays(1, 10)] * 5, cifar_arrays(2, 10), classes)
    marker = tmp_path / "pwned"
    (folder / file_name).write_bytes(pickle.dumps({b"data": _Evil(marker)}, protocol=3))
    with pytest.raises(DatasetError, match=r"(os|posix|nt)\.system") as info:
        load_dataset("cifar10", root=tmp_path)
    assert file_name in str(info.value)
    assert not marker.exists()


def test_cifar_missing_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", root=tmp_path)
    assert "test_batch.bin" in str(info.value) and "--data-root" in str(info.value)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(DatasetError, match="--data-root"):
        load_dataset("cifar100")
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar_bin(folder, "cifar10", [cifar_arrays(2, 10)] * 5, cifar_arrays(2, 10), [str(i) for i in range(10)])
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DatasetError, match="missing data_batch_3.bin"):
        load_dataset("cifar10", split="train", root=tmp_path)
    blob = (folder / "test_batch.bin").read_bytes()
    (folder / "test_batch.bin").write_bytes(blob[:-1])
    with pytest.raises(DatasetError, match="3073-byte"):
        load_dataset("cifar10", root=folder)


# ---------------------------------------------------------------- SVHN

def test_svhn_round_trip(tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    images = RNG.integers(0, 256, size=(5, 3, 32, 32), dtype=np.uint8)
    digits = np.array([0, 1, 9, 0, 5])
    x = np.transpose(images, (2, 3, 1, 0))  # (N, C, H, W) -> (H, W, C, N) as in the official files
    y = np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8)
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    ds = load_dataset("svhn", split="test", root=tmp_path)
    assert ds.images.shape == (5, 3, 32, 32)
    assert np.array_equal(ds.images.numpy(), images)
    assert ds.labels.tolist() == digits.tolist()
    assert ds.classes == [str(d) for d in range(10)]
    with pytest.raises(DatasetError) as info:
        load_dataset("svhn", split="train", root=tmp_path)
    assert "train_32x32.mat" in str(info.value) and "--data-root" in str(info.value)
    (tmp_path / "extra_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="extra_32x32.mat"):
        load_dataset("svhn", split="extra", root=tmp_path)


# ---------------------------------------------------------------- folder

def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_round_trip(tmp_path: Path) -> None:
    rgb = {("cat", "a.png"): RNG.integers(0, 256, size=(4, 5, 3), dtype=np.uint8),
           ("cat", "b.png"): RNG.integers(0, 256, size=(4, 5, 3), dtype=np.uint8),
           ("ant", "z.png"): RNG.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)}
    for (cls, name), array in rgb.items():
        _save_png(tmp_path / cls / name, array)
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    ds = load_dataset("folder", root=tmp_path)
    assert ds.classes == ["ant", "cat"] and ds.labels.tolist() == [0, 1, 1]
    assert ds.images.shape == (3, 3, 4, 5)
    expected = np.stack([rgb[("ant", "z.png")], rgb[("cat", "a.png")], rgb[("cat", "b.png")]])
    assert np.array_equal(ds.images.numpy(), expected.transpose(0, 3, 1, 2))
    grey = load_dataset("folder", root=tmp_path, channels=1)
    assert grey.images.shape == (3, 1, 4, 5)
    resized = load_dataset("folder", root=tmp_path, size=(8, 6))
    assert resized.images.shape == (3, 3, 8, 6)


def test_folder_split_subfolder(tmp_path: Path) -> None:
    _save_png(tmp_path / "test" / "b" / "1.png", np.full((2, 2), 7, dtype=np.uint8))
    _save_png(tmp_path / "test" / "a" / "1.png", np.full((2, 2), 9, dtype=np.uint8))
    ds = load_dataset("folder", split="test", root=tmp_path, channels=1)
    assert ds.classes == ["a", "b"]
    assert ds.images[:, 0, 0, 0].tolist() == [9, 7]


def test_folder_mixed_sizes_and_empty(tmp_path: Path) -> None:
    _save_png(tmp_path / "a" / "1.png", np.zeros((4, 4, 3), dtype=np.uint8))
    _save_png(tmp_path / "b" / "2.png", np.zeros((5, 4, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match="size=\\(H, W\\)"):
        load_dataset("folder", root=tmp_path)
    assert load_dataset("folder", root=tmp_path, size=(4, 4)).images.shape == (2, 3, 4, 4)
    with pytest.raises(InputError, match="channels"):
        load_dataset("folder", root=tmp_path, channels=2)
    with pytest.raises(DatasetError, match="no class sub-folders"):
        load_dataset("folder", root=tmp_path / "a")


# ---------------------------------------------------------------- registry

def test_unknown_name_split_and_option(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_dataset("imagenet")
    for name in ("fashion-mnist", "cifar10", "cifar100", "svhn", "folder"):
        assert name in str(info.value)
    with pytest.raises(InputError, match="unknown split 'valid'"):
        load_dataset("fashion-mnist", split="valid", root=tmp_path)
    with pytest.raises(InputError, match="does not take"):
        load_dataset("svhn", root=tmp_path, channels=1)


# ---------------------------------------------------------------- subsets

def _toy(labels: list[int], num_classes: int = 3) -> ImageDataset:
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1)
    return ImageDataset("toy", images, torch.tensor(labels), [str(i) for i in range(num_classes)])


def test_first_n() -> None:
    ds = _toy([0, 1, 2, 0, 1])
    assert first_n(ds, 3).images.reshape(-1).tolist() == [0, 1, 2]
    assert len(first_n(ds, 0)) == 0
    with pytest.raises(InputError, match="only 5"):
        first_n(ds, 6)


def test_per_class_deterministic_and_exact() -> None:
    labels = [i % 3 for i in range(60)]
    ds = _toy(labels)
    a, b = per_class(ds, 4, seed=7), per_class(ds, 4, seed=7)
    ids_a = a.images.reshape(-1).tolist()  # pixel value == original index
    assert ids_a == b.images.reshape(-1).tolist()
    assert ids_a == sorted(ids_a) and len(set(ids_a)) == 12
    assert torch.bincount(a.labels, minlength=3).tolist() == [4, 4, 4]
    assert all(labels[i] == lab for i, lab in zip(ids_a, a.labels.tolist()))
    seeds = {tuple(per_class(ds, 4, seed=s).images.reshape(-1).tolist()) for s in range(5)}
    assert len(seeds) > 1  # the seed matters
    with pytest.raises(InputError, match="fewer than the 21"):
        per_class(ds, 21)


def test_balanced_subset_counts() -> None:
    ds = _toy([i % 3 for i in range(30)])
    sub = balanced_subset(ds, 8, seed=1)
    assert torch.bincount(sub.labels, minlength=3).tolist() == [3, 3, 2]
    assert sub.images.reshape(-1).tolist() == balanced_subset(ds, 8, seed=1).images.reshape(-1).tolist()
    ids = sub.images.reshape(-1).tolist()
    assert ids == sorted(ids)
    assert torch.bincount(balanced_subset(ds, 30).labels).tolist() == [10, 10, 10]
    with pytest.raises(InputError):
        balanced_subset(_toy([0, 0, 0, 1, 2, 2]), 6)
    with pytest.raises(InputError, match="only 30"):
        balanced_subset(ds, 31)
