"""The multi-task ablation's rows: every combination of tasks as the repair, on both zoo CNNs."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from advrepair import zoo
from advrepair.apps.experiments.setup import experiment_classifier
from advrepair.data import balanced_subset, subset_label
from advrepair.defenses.reverse_attack import ReverseAttack
from advrepair.evaluation.adaptive import DefenseUnderTest, run_adaptive
from advrepair.evaluation.harness import AttackSpec, ModelEntry, evaluate_matrix
from advrepair.evaluation.store import ResultsStore
from advrepair.models.checkpoint import read_card
from advrepair.apps.pipeline import (ensure_classifier,
                                ensure_ssl_task, negative_bank, ssl_file)
from advrepair.ssl.registry import TASK_NAMES
from advrepair.ssl.task import SelfSupervisedTask

import matplotlib

matplotlib.use("Agg")
from advrepair.apps.experiments.multitask_ssl.config import CLASSIFIERS, MultiTaskConfig, combination_label
from advrepair.apps.experiments.multitask_ssl.report import ablation_table, write_multitask_report



def run_multitask_ablation(cfg: MultiTaskConfig) -> Path:
    """Train-or-reuse, evaluate every combination, write ``cfg.out/report.md``; returns its path.

    Shapes: the test subset is (n_images, 1, 28, 28) Fashion-MNIST in [0, 1]; each repair
    maps (B, 1, 28, 28) -> (B, 1, 28, 28).

    A rerun with the same config trains nothing and evaluates nothing (records are keyed
    by data, weights, attack and defense parameters) and rewrites the report.
    """
    start = time.perf_counter()
    device, train, test = cfg.start()
    negatives = negative_bank(train, size=256, seed=cfg.seed)
    combos = (*cfg.combinations, *((cfg.adaptive_combination,) if cfg.adaptive is not None else ()))
    needed = [name for name in TASK_NAMES if any(name == t for combo in combos for t, _ in combo)]
    subset = balanced_subset(test, cfg.n_images, seed=cfg.seed)
    subset_name = subset_label(len(subset), cfg.seed)
    attacks = [AttackSpec("clean"),
               AttackSpec("pgd", {"eps": cfg.eps, "alpha": cfg.pgd_alpha, "steps": cfg.pgd_steps})]
    store = ResultsStore(cfg.out, resume=True)
    tqdm.write(f"multi-task ablation: {len(CLASSIFIERS)} classifiers x {len(cfg.combinations)} repairs x "
               f"{len(attacks)} inputs on {len(subset)} test images (s.e. <= "
               f"{100 * math.sqrt(0.25 / len(subset)):.2f} points)")
    index: dict[tuple[str, str | None, str], dict[str, Any]] = {}
    cards: dict[str, dict[str, Any]] = {}
    entries: dict[str, tuple[Any, Any, dict[str, Any]]] = {}
    for model_name, _ in CLASSIFIERS:
        model_dir = cfg.models_dir / model_name
        if cfg.zoo:
            clf, card = experiment_classifier(model_name, cfg.models_dir, train, test, recipe=cfg.recipe_for(model_name),
                                              seed=cfg.seed, eval_eps=cfg.eps, device=device, progress=cfg.progress)
        else:
            clf, card = ensure_classifier(model_dir, train, test, arch="small-cnn", recipe=cfg.recipe_for(model_name),
                                          seed=cfg.seed, arch_config=cfg.arch_config, eval_eps=cfg.eps, device=device,
                                          progress=cfg.progress)
        tasks: dict[str, SelfSupervisedTask] = {}
        head_cards: dict[str, Any] = {}
        for name in needed:
            head = cfg.zoo_head(model_name, name) if cfg.zoo else None
            if head is not None:
                loaded, head_card = zoo.load(head, device)
                assert isinstance(loaded, SelfSupervisedTask)
                task = loaded
                tqdm.write(f"{name} head: zoo {head}")
            else:
                task = ensure_ssl_task(model_dir, name, clf, card, train, test, recipe=cfg.ssl, seed=cfg.seed,
                                       negatives=negatives if name == "contrastive" else None,
                                       task_options=cfg.task_options(name), eval_eps=cfg.eps, device=device,
                                       progress=cfg.progress)
                head_card = read_card(model_dir / ssl_file(name))
            tasks[name], head_cards[name] = task, head_card.__dict__
        cards[model_name] = {"classifier": card.__dict__, **head_cards}
        entries[model_name] = (clf, card, tasks)
        bar = tqdm(cfg.combinations, desc=f"{model_name} repairs", disable=not cfg.progress)
        for combo in bar:
            label = combination_label(combo)
            defense = ReverseAttack(clf, [(tasks[t], w) for t, w in combo], eps_v=cfg.eps_v,
                                    steps=cfg.reverse_steps, seed=cfg.seed)
            entry = ModelEntry(model_name, clf, card=card.__dict__, defenses={label: defense})
            for r in evaluate_matrix(subset, [entry], attacks, store, batch_size=cfg.batch_size, device=device,
                                     subset=subset_name, progress=cfg.progress):
                index[(model_name, (r.get("defense") or {}).get("label"), r["attack"]["name"])] = r
    summaries: list[dict[str, Any]] = []
    if cfg.adaptive is not None:  # the static ablation's report first: the adaptive part takes longer
        write_multitask_report(cfg, store, index, cards, summaries, time.perf_counter() - start)
        tqdm.write(ablation_table(cfg, index))
        adaptive_subset = balanced_subset(subset, min(cfg.adaptive_images, len(subset)), seed=cfg.seed)
        label = combination_label(cfg.adaptive_combination)
        for model_name in cfg.adaptive_models:
            clf, card, tasks = entries[model_name]
            defense = ReverseAttack(clf, [(tasks[t], w) for t, w in cfg.adaptive_combination], eps_v=cfg.eps_v,
                                    steps=cfg.reverse_steps, seed=cfg.seed)
            tqdm.write(f"adaptive protocol: {model_name} + {label} on a balanced {len(adaptive_subset)} of the images")
            summaries.append(run_adaptive(
                adaptive_subset, ModelEntry(model_name, clf, card=card.__dict__, defenses={label: defense}),
                DefenseUnderTest.build(label, defense, cfg.adaptive), cfg.adaptive, store, batch_size=100,
                device=device, subset=f"balanced {len(adaptive_subset)} of {subset_name}", progress=cfg.progress))
    report = write_multitask_report(cfg, store, index, cards, summaries, time.perf_counter() - start)
    tqdm.write(ablation_table(cfg, index))
    tqdm.write(f"report: {report} ({time.perf_counter() - start:.0f} s)")
    return report
