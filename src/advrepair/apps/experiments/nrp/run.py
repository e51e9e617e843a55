"""The NRP experiment's rows: transfer attacks into each defense, Table 5, the adaptive protocol."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any


from advrepair.data import balanced_subset
from advrepair.defenses.purifier import NRPDefense
from advrepair.errors import InputError
from advrepair.evaluation.adaptive import DefenseUnderTest, run_adaptive
from advrepair.evaluation.harness import AttackSpec, ModelEntry, evaluate_matrix
from advrepair.evaluation.store import ResultsStore
from advrepair.models.checkpoint import ModelCard

import matplotlib

matplotlib.use("Agg")
from advrepair.apps.experiments.nrp.config import (ENSEMBLE, NRPConfig, SOURCE_CNN, SOURCE_VGG, TARGET, ZOO_MODELS,
                                                   ZOO_PURIFIER, _log,
                                                   attack_params)
from advrepair.apps.experiments.nrp.ablations import AblationContext, run_ablations
from advrepair.apps.experiments.nrp.models import LogitEnsemble, _Source, _ensure_source, build_defenses, ensure_purifier
from advrepair.apps.experiments.setup import frozen_zoo_model as zoo_model
from advrepair.apps.experiments.nrp.report import table1_markdown, table5_markdown, write_nrp_report
from advrepair.apps.experiments.nrp.config import _source_name_sha
from advrepair.data import subset_label

#: model folders under ``models_dir``



# ----------------------------------------------------------------------------- run





def run_nrp_experiment(cfg: NRPConfig) -> Path:
    """Train-or-reuse every model, fill the results store, write ``cfg.out/report.md``; returns its path.

    Shapes: the test subset is (n_images, 1, 28, 28) Fashion-MNIST in [0, 1]; every defense
    maps (B, 1, 28, 28) -> (B, 1, 28, 28).

    A rerun with the same config trains nothing and adds no records (keys cover data,
    weights, attack and defense parameters) and rewrites the report.

    Example:
        >>> run_nrp_experiment(NRPConfig(out=Path("/tmp/runs/nrp"), n_images=100))
        PosixPath('/tmp/runs/nrp/report.md')
    """
    if not isinstance(cfg, NRPConfig):
        raise InputError(f"run_nrp_experiment needs an NRPConfig, got {type(cfg).__name__}")
    start = time.perf_counter()
    device, train, test = cfg.start()
    phases: dict[str, float] = {}

    t0 = time.perf_counter()
    if cfg.zoo:
        target, target_card = zoo_model(ZOO_MODELS[TARGET], device)
        vgg, vgg_card = zoo_model(ZOO_MODELS[SOURCE_VGG], device)
        cnn1, cnn1_card = zoo_model(ZOO_MODELS[SOURCE_CNN], device)
    else:
        target, target_card = _ensure_source(cfg, TARGET, "small-cnn", {}, cfg.target_recipe, cfg.seed, train, test,
                                             device)
        vgg, vgg_card = _ensure_source(cfg, SOURCE_VGG, "small-vgg", dict(cfg.vgg_config), cfg.source_recipe,
                                       cfg.seed, train, test, device)
        cnn1, cnn1_card = _ensure_source(cfg, SOURCE_CNN, "small-cnn", dict(cfg.cnn_config), cfg.source_recipe,
                                         cfg.source_seed, train, test, device)
    feature_model, feature_card = (vgg, vgg_card) if cfg.feature_source == SOURCE_VGG else (cnn1, cnn1_card)
    needs_purifier = any(d.startswith("nrp") for d in cfg.defenses)
    purifier: Any = None
    purifier_card: ModelCard | None = None
    if needs_purifier and cfg.zoo:
        purifier, purifier_card = zoo_model(ZOO_PURIFIER, device)
    elif needs_purifier:
        purifier, purifier_card = ensure_purifier(cfg, feature_model, feature_card, train, test, device)
    phases["models (train or reuse)"] = time.perf_counter() - t0
    cards = {TARGET: target_card, SOURCE_VGG: vgg_card, SOURCE_CNN: cnn1_card}

    sources = {SOURCE_VGG: _Source(SOURCE_VGG, vgg, vgg_card.weights_sha256),
               SOURCE_CNN: _Source(SOURCE_CNN, cnn1, cnn1_card.weights_sha256)}
    if cfg.ensemble:
        sources[ENSEMBLE] = _Source(ENSEMBLE, LogitEnsemble([vgg, cnn1]).eval(),
                                    _source_name_sha(vgg_card.weights_sha256, cnn1_card.weights_sha256))
    defenses = build_defenses(cfg, purifier, purifier_card)
    subset = balanced_subset(test, cfg.n_images, seed=cfg.seed)
    subset_name = subset_label(len(subset), cfg.seed)
    store = ResultsStore(cfg.out, resume=True)

    def spec(source: _Source, key: str) -> AttackSpec:
        name, params = attack_params(key, cfg.eps, cfg.attack_steps, cfg.ti_kernel,
                                     cfg.ssp_layers.get(source.label), cfg.ssp_distance)
        return AttackSpec("transfer", {"source": source.model, "attack": name, "source_name": source.name, **params})

    def evaluate(entry: ModelEntry, attack: AttackSpec) -> dict[str | None, dict[str, Any]]:
        records = evaluate_matrix(subset, [entry], [attack], store, batch_size=cfg.batch_size, device=device,
                                  subset=subset_name, progress=cfg.progress)
        # by position (the undefended cell, then each defense in order), not by the records' labels:
        # records are keyed by content, so a defense equal to one stored under another label (Fig. 5's
        # full-loss purifier is the old main purifier, bit for bit) comes back with that label
        return dict(zip([None, *entry.defenses], records, strict=True))

    # Table 1: clean and transfer attacks from each source, every defense in front of the target
    t0 = time.perf_counter()
    target_entry = ModelEntry(TARGET, target, card=target_card.__dict__, defenses=defenses)
    n_cells = len(cfg.sources()) * len(cfg.table1_attacks) + 1
    _log(f"Table 1: {n_cells} attack settings x {len(cfg.defenses)} defenses on {len(subset)} test images "
         f"(s.e. <= {100 * math.sqrt(0.25 / len(subset)):.2f} points)")
    table1: dict[tuple[str, str], dict[str | None, dict[str, Any]]] = {("-", "clean"): evaluate(target_entry,
                                                                                                AttackSpec("clean"))}
    for source_label in cfg.sources():
        for key in cfg.table1_attacks:
            table1[(source_label, key)] = evaluate(target_entry, spec(sources[source_label], key))
    phases["Table 1 (transfer x defenses)"] = time.perf_counter() - t0

    # Table 5: no defense, attacks from each source scored on the target and on both sources
    t0 = time.perf_counter()
    scored = [ModelEntry(TARGET, target, card=target_card.__dict__),
              ModelEntry(SOURCE_VGG, vgg, card=vgg_card.__dict__),
              ModelEntry(SOURCE_CNN, cnn1, card=cnn1_card.__dict__)]
    table5: dict[tuple[str, str, str], dict[str, Any]] = {}
    for entry in scored:
        table5[("-", "clean", entry.name)] = evaluate(entry, AttackSpec("clean"))[None]
    for source_label in (SOURCE_VGG, SOURCE_CNN):
        for key in cfg.table5_attacks:
            for entry in scored:
                table5[(source_label, key, entry.name)] = evaluate(entry, spec(sources[source_label], key))[None]
    phases["Table 5 (SSP vs supervised transfer)"] = time.perf_counter() - t0

    # adaptive protocol against the purifier on the target
    summaries: list[dict[str, Any]] = []
    if cfg.adaptive is not None:
        write_nrp_report(cfg, store, table1, table5, summaries, cards, purifier_card, phases,
                         time.perf_counter() - start, figures=False)  # the static tables first: adaptive takes longer
        t0 = time.perf_counter()
        adaptive_subset = balanced_subset(subset, min(cfg.adaptive_images, len(subset)), seed=cfg.seed)
        for label in cfg.adaptive_defenses:
            defense = defenses[label]
            target_dut = DefenseUnderTest.build(label, defense, cfg.adaptive)
            if isinstance(defense, NRPDefense) and not defense.dynamic:
                target_dut.randomized = None  # plain NRP ignores its seed: EOT would repeat BPDA
                target_dut.notes.append("plain NRP is deterministic (its seed is unused): BPDA+EOT skipped")
            _log(f"adaptive protocol: {TARGET} + {label} on a balanced {len(adaptive_subset)} of the images")
            summaries.append(run_adaptive(
                adaptive_subset, ModelEntry(TARGET, target, card=target_card.__dict__, defenses={label: defense}),
                target_dut, cfg.adaptive, store, batch_size=min(cfg.batch_size, 100), device=device,
                subset=f"balanced {len(adaptive_subset)} of {subset_name}", progress=cfg.progress))
        phases["adaptive protocol"] = time.perf_counter() - t0
    ablations: dict[str, Any] | None = None
    if cfg.paper_ablations and purifier is not None and purifier_card is not None and "nrp" in defenses:
        t0 = time.perf_counter()
        ablations = run_ablations(AblationContext(
            cfg, store, subset, subset_name, device, target, target_card, feature_model, feature_card, sources,
            purifier_card, defenses["nrp"],
            lambda variant, stem: ensure_purifier(variant, feature_model, feature_card, train, test, device, stem),
            evaluate, spec))
        phases["Figs. 3-5 and Table 3"] = time.perf_counter() - t0
    report = write_nrp_report(cfg, store, table1, table5, summaries, cards, purifier_card, phases,
                              time.perf_counter() - start, ablations=ablations)
    _log(table1_markdown(cfg, store, table1))
    _log(table5_markdown(cfg, table5))
    _log(f"report: {report} ({time.perf_counter() - start:.0f} s)")
    return report
