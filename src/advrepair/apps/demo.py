"""The main job: mao2021's central claim tested on Fashion-MNIST, on the shipped zoo models.

Loads the zoo's standard and PGD-adversarially-trained CNNs and their contrastive heads
(nothing is trained), evaluates clean, FGSM and PGD-20 accuracy at eps = 0.1 (L-inf) with
and without the self-supervised reverse attack (eps_v = 2 eps, K = 40), prints the table
and writes the report folder (results.json, report.md, table.md, PNG figures). Then runs the
adaptive protocol against the reverse attack on the robust classifier, at the budgets below,
chosen so that a fresh machine with 2 cores finishes in about 15 minutes with set-up.
Before each stage it prints the time the rest of the run is expected to take.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from advrepair import zoo
from advrepair.data import balanced_subset, subset_label, load_dataset
from advrepair.defenses import ReverseAttack
from advrepair.apps.experiments.setup import StageClock
from advrepair.evaluation import AttackSpec, ModelEntry, ResultsStore, evaluate_matrix
from advrepair.evaluation.adaptive import AdaptiveConfig, DefenseUnderTest, run_adaptive
from advrepair.models import Classifier
from advrepair.report import accuracy_table, write_report
from advrepair.runtime import resolve_device
from advrepair.ssl import SelfSupervisedTask


@dataclass
class DemoConfig:
    out: Path = Path("reports/demo")
    data_root: str | None = None
    #: zoo classifiers; each is repaired with its ``<name>-contrastive`` zoo head
    classifiers: tuple[str, ...] = ("fmnist-cnn-standard", "fmnist-cnn-pgd")
    eps: float = 0.1
    #: 500 balanced test images: binomial standard error <= 2.2 points at any accuracy
    n_images: int = 500
    seed: int = 0
    device: str = "cpu"
    reverse_steps: int = 40
    #: add AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square-5000) to the attacks; slow on CPU
    autoattack: bool = False
    #: the adaptive protocol against the reverse attack on ``adaptive_classifiers``, on
    #: ``adaptive_images`` (class-balanced) of the demo's images; ``None`` skips it.
    #: PGD-20 at eps/4 steps through BPDA, BPDA+EOT over 2 draws, the full gradient through
    #: a 5-step unroll, the defense-aware sweep at lambda 0/1/4 and Square-50. About 140
    #: repairs per image, so on 2 cores the robust CNN alone takes ~8 minutes; the standard
    #: CNN falls to static PGD already (see the table), so the question is the robust one.
    adaptive: AdaptiveConfig | None = field(default_factory=lambda: AdaptiveConfig(
        eps=0.1, steps=20, eot_draws=2, unroll_steps=5, lambdas=(0.0, 1.0, 4.0), square_queries=50))
    adaptive_images: int = 100
    adaptive_classifiers: tuple[str, ...] = ("fmnist-cnn-pgd",)
    progress: bool = True


def _repairs_per_image(cfg: AdaptiveConfig) -> float:
    """Reverse-attack runs the adaptive protocol costs per image (each gradient step
    through the defense repairs once; scoring each row repairs once)."""
    rows = 8 + len(cfg.lambdas)
    bpda = cfg.steps + max(cfg.steps // 4, 1)
    eot = cfg.steps * cfg.eot_draws
    unroll = cfg.steps * 3 * cfg.unroll_steps / 40  # forward + backward of a short unroll
    return rows + bpda + eot + unroll + cfg.square_queries + cfg.randomized_draws


def _seconds_per_repaired_image(defense: torch.nn.Module, images: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        defense(images)
    return (time.perf_counter() - start) / len(images)


def run_demo(cfg: DemoConfig) -> Path:
    """Run the whole job; returns the report's path."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    test = load_dataset("fashion-mnist", split="test", root=cfg.data_root)
    entries = []
    for name in cfg.classifiers:
        clf, card = zoo.load(name, device)
        task, _ = zoo.load(f"{name}-contrastive", device)
        assert isinstance(clf, Classifier) and isinstance(task, SelfSupervisedTask)
        defense = ReverseAttack(clf, task, eps_v=2 * cfg.eps, steps=cfg.reverse_steps, seed=cfg.seed)
        entries.append(ModelEntry(name, clf, card=card.__dict__, defenses={"reverse-attack": defense}))
        tqdm.write(f"zoo model {name} ({card.weights_sha256[:12]}) with its contrastive head")

    subset = balanced_subset(test, min(cfg.n_images, len(test)), seed=cfg.seed)
    attacks = [AttackSpec("clean"), AttackSpec("fgsm", {"eps": cfg.eps}),
               AttackSpec("pgd", {"eps": cfg.eps, "alpha": 2.5 * cfg.eps / 20, "steps": 20})]
    if cfg.autoattack:
        attacks.append(AttackSpec("autoattack", {"eps": cfg.eps, "version": "standard"}))
    adaptive_subset = (balanced_subset(subset, min(cfg.adaptive_images, len(subset)), seed=cfg.seed)
                       if cfg.adaptive is not None and cfg.adaptive_images > 0 else None)
    plan = [("attack x model matrix", float(len(subset) * len(attacks) * len(entries)))]
    if adaptive_subset is not None and cfg.adaptive is not None:
        plan += [(f"adaptive protocol on {e.name}", len(adaptive_subset) * _repairs_per_image(cfg.adaptive))
                 for e in entries if e.name in cfg.adaptive_classifiers]
    probe = subset.tensors()[0][:16].to(device)
    clock = StageClock(plan, _seconds_per_repaired_image(entries[0].defenses["reverse-attack"], probe), cfg.progress)

    store = ResultsStore(cfg.out, resume=True)
    clock.stage(0)
    tqdm.write(f"evaluating {len(entries)} models x {len(attacks)} attacks on {len(subset)} test images "
               f"(standard error <= {100 * (0.25 / len(subset)) ** 0.5:.2f} points at any accuracy)")
    records = evaluate_matrix(subset, entries, attacks, store, device=device,
                              subset=subset_label(len(subset), cfg.seed), progress=cfg.progress)
    clock.finished(0)
    if adaptive_subset is not None and cfg.adaptive is not None:
        attacked = [e for e in entries if e.name in cfg.adaptive_classifiers]
        for index, entry in enumerate(attacked, start=1):
            clock.stage(index)
            for label, module in entry.defenses.items():
                run_adaptive(adaptive_subset, entry, DefenseUnderTest.build(label, module, cfg.adaptive),
                             cfg.adaptive, store, batch_size=100, device=device,
                             subset=f"balanced {len(adaptive_subset)} of balanced {len(subset)} (seed {cfg.seed})",
                             progress=cfg.progress)
            clock.finished(index)
    with store.lock:
        report = write_report(cfg.out, title="advrepair demo: self-supervised reverse attack on Fashion-MNIST "
                                             "(zoo models)")
    print()
    print(accuracy_table(records))
    print(f"report: {report}  (figures and results.json beside it); {time.perf_counter() - start:.0f} s")
    return report
