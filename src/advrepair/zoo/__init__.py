"""The model zoo: named models trained by our own code, shipped with the package.

    >>> from advrepair import zoo
    >>> classifier, card = zoo.load("fmnist-cnn-pgd")
    >>> task, _ = zoo.load("fmnist-cnn-pgd-contrastive")
    >>> defense = ReverseAttack(classifier, task, eps_v=0.2)

``zoo.load_defended("fmnist-cnn-xiao")`` gives xiao2020's ``(g, f_a, card)``;
``zoo.entries()`` lists what is registered, ``zoo.describe(name)`` a JSON-ready summary;
``advrepair zoo list [--json]`` and ``advrepair zoo build NAME|--all`` are the command line.
"""
from advrepair.zoo.registry import ENTRIES, NEGATIVES, ZooEntry, ZooKind, build_order, entry
from advrepair.zoo.store import card, is_shipped, load, load_defended, load_negatives, weights_dir
from advrepair.zoo.summary import describe, entries

__all__ = ["ENTRIES", "NEGATIVES", "ZooEntry", "ZooKind", "build_order", "card", "describe", "entries", "entry",
           "is_shipped", "load", "load_defended", "load_negatives", "weights_dir"]
