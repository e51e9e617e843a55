"""Datasets as in-memory uint8 tensors: Fashion-MNIST, CIFAR-10/100, SVHN and image folders, plus subsets."""
from advrepair.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES, load_cifar
from advrepair.data.dataset import ImageDataset, normalize_split
from advrepair.data.fashion_mnist import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    fashion_mnist_dir,
    load_fashion_mnist,
)
from advrepair.data.folder import IMAGE_EXTENSIONS, load_folder
from advrepair.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx
from advrepair.data.registry import available_datasets, load_dataset
from advrepair.data.safe_pickle import RestrictedUnpickler, load_restricted_pickle
from advrepair.data.subsets import balanced_subset, subset_label, first_n, per_class
from advrepair.data.svhn import SVHN_CLASSES, load_svhn

__all__ = [
    "CIFAR100_CLASSES",
    "CIFAR10_CLASSES",
    "DEFAULT_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_ENV",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "RestrictedUnpickler",
    "SVHN_CLASSES",
    "available_datasets",
    "balanced_subset", "subset_label",
    "fashion_mnist_dir",
    "first_n",
    "load_cifar",
    "load_dataset",
    "load_fashion_mnist",
    "load_folder",
    "load_restricted_pickle",
    "load_svhn",
    "normalize_split",
    "per_class",
    "read_idx",
]
