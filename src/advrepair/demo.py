"""The main job: mao2021's central claim tested on Fashion-MNIST, end to end.

Trains (or reuses) a standard and a PGD-adversarially-trained small CNN and their
contrastive heads, evaluates clean, FGSM and PGD-20 accuracy at eps = 0.1 (L-inf) with and
without the self-supervised reverse attack (eps_v = 2 eps, K = 40), prints the table and
writes the report folder (results.json, report.md, table.md, PNG figures). Then runs the
adaptive protocol against the reverse attack on both classifiers (a smaller image set and
budget than ``advrepair eval --adaptive`` defaults, so the demo stays affordable on CPU).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from advrepair.runtime import resolve_device
from advrepair.data import balanced_subset, load_dataset
from advrepair.defenses import ReverseAttack
from advrepair.evaluation import AttackSpec, ModelEntry, ResultsStore, evaluate_matrix
from advrepair.evaluation.adaptive import AdaptiveConfig, DefenseUnderTest, run_adaptive
from advrepair.pipeline import ensure_classifier, ensure_contrastive_task, negative_bank
from advrepair.report import accuracy_table, write_report
from advrepair.training import ClassifierRecipe, SSLRecipe

DEFAULT_HOME = Path(os.environ.get("ADVREPAIR_HOME", Path.home() / ".cache" / "advrepair"))


@dataclass
class DemoConfig:
    out: Path = Path("reports/demo")
    models_dir: Path = DEFAULT_HOME / "models"
    data_root: str | None = None
    eps: float = 0.1
    #: 400 balanced test images: binomial standard error <= 2.5 points at any accuracy
    n_images: int = 400
    seed: int = 0
    device: str = "cpu"
    # Training sized so that the first `make demo` trains both models in about 10 minutes on 2 cores.
    standard: ClassifierRecipe = field(default_factory=lambda: ClassifierRecipe(epochs=2))
    adversarial: ClassifierRecipe = field(default_factory=lambda: ClassifierRecipe(
        epochs=2, adversarial=True, eps=0.1, alpha=0.04, steps=3))
    ssl: SSLRecipe = field(default_factory=lambda: SSLRecipe(epochs=1))
    reverse_steps: int = 40
    n_views: int = 4
    #: add AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square-5000) to the attacks; slow on CPU
    autoattack: bool = False
    #: the adaptive protocol (BPDA, BPDA+EOT, full gradient, defense-aware sweep, Square,
    #: worst case) against the reverse attack on both classifiers, on
    #: ``adaptive_images`` (class-balanced) of the demo's images; ``None`` skips it
    adaptive: AdaptiveConfig | None = field(default_factory=lambda: AdaptiveConfig(
        eps=0.1, steps=10, alpha=2.5 * 0.1 / 10, eot_draws=2, unroll_steps=5, lambdas=(0.0, 1.0, 4.0),
        square_queries=100))
    adaptive_images: int = 100
    progress: bool = True


def run_demo(cfg: DemoConfig) -> Path:
    """Run the whole job; returns the report's path."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    train = load_dataset("fashion-mnist", split="train", root=cfg.data_root)
    test = load_dataset("fashion-mnist", split="test", root=cfg.data_root)
    negatives = negative_bank(train, size=256, seed=cfg.seed)
    entries = []
    for name, recipe in (("fmnist-cnn-standard", cfg.standard), ("fmnist-cnn-pgd", cfg.adversarial)):
        model_dir = cfg.models_dir / name
        clf, card = ensure_classifier(model_dir, train, test, arch="small-cnn", recipe=recipe, seed=cfg.seed,
                                      eval_eps=cfg.eps, device=device, progress=cfg.progress)
        task = ensure_contrastive_task(model_dir, clf, card, train, test, recipe=cfg.ssl, seed=cfg.seed,
                                       negatives=negatives, n_views=cfg.n_views, eval_eps=cfg.eps,
                                       device=device, progress=cfg.progress)
        defense = ReverseAttack(clf, task, eps_v=2 * cfg.eps, steps=cfg.reverse_steps, seed=cfg.seed)
        entries.append(ModelEntry(name, clf, card=card.__dict__, defenses={"reverse-attack": defense}))

    subset = balanced_subset(test, cfg.n_images, seed=cfg.seed)
    attacks = [AttackSpec("clean"), AttackSpec("fgsm", {"eps": cfg.eps}),
               AttackSpec("pgd", {"eps": cfg.eps, "alpha": 2.5 * cfg.eps / 20, "steps": 20})]
    if cfg.autoattack:
        attacks.append(AttackSpec("autoattack", {"eps": cfg.eps, "version": "standard"}))
    store = ResultsStore(cfg.out, resume=True)
    tqdm.write(f"evaluating {len(entries)} models x {len(attacks)} attacks on {len(subset)} test images "
               f"(standard error <= {100 * (0.25 / len(subset)) ** 0.5:.2f} points at any accuracy)")
    records = evaluate_matrix(subset, entries, attacks, store, device=device,
                              subset=f"balanced {len(subset)} (seed {cfg.seed})", progress=cfg.progress)
    if cfg.adaptive is not None:
        adaptive_subset = balanced_subset(subset, min(cfg.adaptive_images, len(subset)), seed=cfg.seed)
        tqdm.write(f"adaptive protocol on a balanced {len(adaptive_subset)} of these images")
        for entry in entries:
            for label, defense in entry.defenses.items():
                run_adaptive(adaptive_subset, entry, DefenseUnderTest.build(label, defense, cfg.adaptive),
                             cfg.adaptive, store, batch_size=100, device=device,
                             subset=f"balanced {len(adaptive_subset)} of balanced {len(subset)} (seed {cfg.seed})",
                             progress=cfg.progress)
    report = write_report(cfg.out, title="advrepair demo: self-supervised reverse attack on Fashion-MNIST")
    print()
    print(accuracy_table(records))
    print(f"report: {report}  (figures and results.json beside it); {time.perf_counter() - start:.0f} s")
    return report
