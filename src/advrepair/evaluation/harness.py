"""The model x attack x defense matrix.

For each model and attack, adversarial images are crafted on the undefended classifier
(the static threat model of mao2021 Table 1: the attacker ignores the defense), then the
classifier is scored on them as they are ("standard") and after each defense
("repaired"). Attacks that see the defense are the adaptive protocol's job.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from advrepair.adaptive.contract import capabilities_of, describe_defense, describe_model
from advrepair.adaptive.memo import DefenseMemo
from advrepair.allocator import retaining_freed_memory
from advrepair.engine import fused_conv_pool_available, tap_input_gradients_enabled
from advrepair.attacks import ATTACKS, Attack, make_attack
from advrepair.data import ImageDataset
from advrepair.errors import InputError
from advrepair.factories import is_factory_spec
from advrepair.evaluation.metrics import accuracy_of
from advrepair.evaluation.partial import PartialCells
from advrepair.evaluation.store import ResultsStore, record_key
from advrepair.runtime import layout_of, resolve_device
from advrepair.seeding import seeded_global_draws
from advrepair.validation import check_int_at_least

CLEAN = "clean"
SAMPLES_KEPT = 8


THROUGH = ("bpda", "full")


@dataclass
class AttackSpec:
    """An attack by registry name and parameters; name ``"clean"`` means no attack.

    ``through`` crafts the attack on ``Sequential(defense, classifier)`` for each defense
    instead of on the classifier alone: ``"bpda"`` with the identity as the defense's
    gradient (BPDA), ``"full"`` with the defense's own autograd graph.
    """

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    through: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or (self.name != CLEAN and self.name.lower() not in ATTACKS
                                              and not is_factory_spec(self.name)):
            raise InputError(f"unknown attack {self.name!r}; expected {CLEAN!r}, one of {sorted(ATTACKS)} or "
                             "module:factory")
        if not isinstance(self.params, dict):
            raise InputError(f"params must be a dict of attack parameters, got {type(self.params).__name__}")
        if self.through is not None and self.through not in THROUGH:
            raise InputError(f"through must be None or one of {THROUGH}, got {self.through!r}")
        if self.through is not None and self.name == CLEAN:
            raise InputError("the clean spec has no attack to craft through a defense")

    def build(self, model: nn.Module) -> Attack | None:
        return None if self.name == CLEAN else make_attack(self.name, model, **self.params)

    def describe(self, model: nn.Module) -> dict[str, Any]:
        attack = self.build(model)
        return {"name": CLEAN} if attack is None else attack.params()


@dataclass
class ModelEntry:
    """A classifier under evaluation and the defenses to put in front of it."""

    name: str
    classifier: nn.Module
    card: dict[str, Any] = field(default_factory=dict)
    defenses: dict[str, nn.Module] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.classifier, nn.Module):
            raise InputError(f"ModelEntry {self.name!r}: classifier must be an nn.Module, "
                             f"got {type(self.classifier).__name__}")
        if not isinstance(self.card, dict):
            raise InputError(f"ModelEntry {self.name!r}: card must be a dict, got {type(self.card).__name__}")
        if not isinstance(self.defenses, dict):
            raise InputError(f"ModelEntry {self.name!r}: defenses must be a dict {{label: module}}, "
                             f"got {type(self.defenses).__name__}")
        for label, defense in self.defenses.items():
            if not isinstance(label, str) or not callable(defense):
                raise InputError(f"ModelEntry {self.name!r}: defense {label!r} must be a callable under a str "
                                 f"label, got {type(defense).__name__}")


def weights_id(card: dict[str, Any]) -> str:
    """The classifier's identity in results keys: its weights' SHA-256, plus the precision
    it ran in when not fp32 (a bf16 run must not reuse fp32 records)."""
    precision = card.get("precision", "fp32")
    return card.get("weights_sha256", "") + ("" if precision == "fp32" else f"@{precision}")


def _params_of(module: nn.Module) -> dict[str, Any]:
    return describe_defense(module)


def evaluate_matrix(data: ImageDataset, models: list[ModelEntry], attacks: list[AttackSpec],
                    store: ResultsStore, *, batch_size: int = 250, device: str | torch.device = "cpu",
                    subset: str = "", progress: bool = True, key_images: int | None = None) -> list[dict[str, Any]]:
    """Fill ``store`` with one record per (model, attack, defense or none); returns them.

    ``key_images``: the image count recorded in keys and records when ``data`` is one
    shard of a larger set (distributed evaluation); the shards' records then share keys
    and merge into the single-process result.

    Records already in the store (same dataset, subset, model weights, attack and defense
    parameters) are skipped, so an interrupted evaluation resumes where it stopped.
    """
    if not isinstance(data, ImageDataset):
        raise InputError(f"data must be an ImageDataset, got {type(data).__name__}")
    if len(data) == 0:
        raise InputError(f"data {data.name!r} is an empty dataset: there is nothing to evaluate")
    for what, items, kind in (("models", models, ModelEntry), ("attacks", attacks, AttackSpec)):
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, kind) for i in items):
            got = [type(i).__name__ for i in items] if isinstance(items, (list, tuple)) else type(items).__name__
            raise InputError(f"{what} must be a list of {kind.__name__}, got {got}")
    if not isinstance(store, ResultsStore):
        raise InputError(f"store must be a ResultsStore, got {type(store).__name__}")
    batch_size = check_int_at_least(batch_size, "batch_size", 1)
    if key_images is not None and check_int_at_least(key_images, "key_images", 1) < len(data):
        raise InputError(f"key_images={key_images} is smaller than this shard's {len(data)} images")
    device = resolve_device(device)
    out: list[dict[str, Any]] = []
    for entry in models:
        clf = entry.classifier.to(device).eval()
        for dmod in entry.defenses.values():  # their own networks and buffers (heads, f_b, tables) go along
            if isinstance(dmod, nn.Module):
                dmod.to(device)
        for spec in attacks:
            if spec.through is not None:
                out += _evaluate_through(data, entry, clf, spec, store, batch_size, device, subset, progress,
                                         key_images)
                continue
            attack_desc = spec.describe(clf)
            base = dict(dataset=data.name, subset=subset, n_images=key_images or len(data), model=entry.name,
                        model_weights=weights_id(entry.card), attack=attack_desc)
            cells: dict[str | None, str] = {None: record_key(**base, defense=None)}
            for dname, dmod in entry.defenses.items():
                cells[dname] = record_key(**base, defense=_params_of(dmod))
            if all(store.has(k) for k in cells.values()):
                out += [store.require(k) for k in cells.values()]
                continue
            out += _evaluate_cells(data, entry, clf, spec, attack_desc, base, cells, store, batch_size,
                                   device, progress)
    return out


def evaluate_attack(data: ImageDataset, entry: ModelEntry, attack: Attack | None, store: ResultsStore, *,
                    row: str, row_field: str = "row", crafted_on: str = "classifier", with_base: bool = True,
                    subset: str = "", batch_size: int = 250, device: str | torch.device = "cpu",
                    progress: bool = True, extra: dict[str, Any] | None = None,
                    attack_extra: dict[str, Any] | None = None, announce: str | None = None,
                    key_images: int | None = None, memos: dict[str, DefenseMemo] | None = None,
                    fresh_draws: tuple[int, str] | None = None) -> dict[str | None, dict[str, Any]]:
    """One row of a prebuilt ``attack`` (``None``: clean images): craft it once per batch, score
    the classifier alone (``with_base``) and after each of ``entry``'s defenses, one record per
    cell, skipped when already in ``store``. For attacks the registry cannot build (a
    defense-aware PGD on a given defense's loss, a transfer from another model). The row's
    name goes into the attack's description under ``row_field`` (with ``attack_extra``), so two
    rows with equal attack parameters keep separate records; ``extra`` goes into each record.
    ``announce`` is printed when the row is computed rather than read from the store;
    ``key_images`` is as in :func:`evaluate_matrix` (one shard of a larger set). A classifier
    without a card is keyed by a fingerprint of its weights. ``memos``: per defense label, the
    ``DefenseMemo`` the attack ran that defense through; scoring reads its outputs back.
    ``fresh_draws=(seed, stream)``: each batch runs with torch's global generator seeded from
    them and the batch's index (``seeding.seeded_global_draws``; default: from the row's first
    record key), so ``seed=None`` draws (EOT) repeat on every run and after a resume mid-row.
    Returns ``{defense label or None: record}``."""
    if not isinstance(data, ImageDataset) or len(data) == 0:
        raise InputError(f"data must be a non-empty ImageDataset, got {type(data).__name__}"
                         + (" with no images" if isinstance(data, ImageDataset) else ""))
    if not isinstance(entry, ModelEntry):
        raise InputError(f"entry must be a ModelEntry, got {type(entry).__name__}")
    if attack is not None and not isinstance(attack, Attack):
        raise InputError(f"attack must be a built Attack (e.g. PGD(model, ...)) or None for clean images, "
                         f"got {type(attack).__name__}; registry names go through evaluate_matrix")
    if not isinstance(store, ResultsStore):
        raise InputError(f"store must be a ResultsStore, got {type(store).__name__}")
    if not isinstance(row, str) or not row.strip():
        raise InputError(f"row must name the row (a non-empty string), got {row!r}")
    batch_size = check_int_at_least(batch_size, "batch_size", 1)
    device = resolve_device(device)
    clf = entry.classifier.to(device).eval()
    desc = {"name": CLEAN} if attack is None else attack.params()
    attack_desc = {**desc, row_field: row, "crafted_on": crafted_on, **(attack_extra or {})}
    base = dict(dataset=data.name, subset=subset, n_images=key_images or len(data), model=entry.name,
                model_weights=weights_id(entry.card) or describe_model(clf), attack=attack_desc)
    cells: dict[str | None, str] = {None: record_key(**base, defense=None)} if with_base else {}
    for label, defense in entry.defenses.items():
        if isinstance(defense, nn.Module):
            defense.to(device)
        cells[label] = record_key(**base, defense=_params_of(defense))
    if all(store.has(k) for k in cells.values()):
        return {label: store.require(k) for label, k in cells.items()}
    if announce:
        tqdm.write(announce)
    records = _evaluate_cells(data, entry, clf, AttackSpec(CLEAN), attack_desc, base, cells, store, batch_size,
                              device, progress, attack=attack, extra={row_field: row, **(extra or {})},
                              memos=memos, fresh_draws=fresh_draws)
    return dict(zip(cells, records))


def _evaluate_through(data: ImageDataset, entry: ModelEntry, clf: nn.Module, spec: AttackSpec,
                      store: ResultsStore, batch_size: int, device: torch.device, subset: str,
                      progress: bool, key_images: int | None = None) -> list[dict[str, Any]]:
    """One record per defense: the attack sees ``Sequential(defense or BPDA(defense), clf)``."""
    from advrepair.adaptive import BPDA

    out = []
    for dname, dmod in entry.defenses.items():
        target = nn.Sequential(BPDA(dmod) if spec.through == "bpda" else dmod, clf)
        attack_desc = {**spec.describe(target), "through": spec.through}
        base = dict(dataset=data.name, subset=subset, n_images=key_images or len(data), model=entry.name,
                    model_weights=weights_id(entry.card), attack=attack_desc)
        cells: dict[str | None, str] = {dname: record_key(**base, defense=_params_of(dmod))}
        if store.has(cells[dname]):
            out.append(store.require(cells[dname]))
            continue
        single = ModelEntry(entry.name, clf, card=entry.card, defenses={dname: dmod})
        out += _evaluate_cells(data, single, clf, spec, attack_desc, base, cells, store, batch_size, device,
                               progress, attack_model=target)
    return out


def _evaluate_cells(data: ImageDataset, entry: ModelEntry, clf: nn.Module, spec: AttackSpec,
                    attack_desc: dict[str, Any], base: dict[str, Any], cells: dict[str | None, str],
                    store: ResultsStore, batch_size: int, device: torch.device,
                    progress: bool, attack_model: nn.Module | None = None, attack: Attack | None = None,
                    extra: dict[str, Any] | None = None, memos: dict[str, DefenseMemo] | None = None,
                    fresh_draws: tuple[int, str] | None = None) -> list[dict[str, Any]]:
    """Craft ``spec`` (or the prebuilt ``attack``) batch by batch, score the classifier on the
    result and after each defense, and store one record per cell. A defense with a
    ``trajectory`` method is scored on every iterate of its own optimization too (the
    record's ``iterate_accuracy`` and ``worst_over_iterates``): the final output is the
    last iterate, so this costs classifier passes only. Draws from torch's global generator
    (an unseeded defense or attack) are seeded per batch from ``fresh_draws``, by default from
    the first cell's key: the same cells give the same numbers on every run."""
    if fresh_draws is None:
        fresh_draws = (0, next(iter(cells.values())))
    if attack is None:
        attack = spec.build(attack_model if attack_model is not None else clf)
    capabilities = {k: capabilities_of(d) for k, d in entry.defenses.items()}
    by_iterate: dict[str, list[torch.Tensor]] = {k: [] for k in entry.defenses}
    correct: dict[str | None, list[torch.Tensor]] = {k: [] for k in (None, *entry.defenses)}
    seconds: dict[str | None, float] = {k: 0.0 for k in (None, *entry.defenses)}
    ssl_in: dict[str, list[torch.Tensor]] = {k: [] for k in entry.defenses}
    ssl_out: dict[str, list[torch.Tensor]] = {k: [] for k in entry.defenses}
    samples: dict[str, list[torch.Tensor]] = {"input": [], "clean": [], "labels": []}
    samples.update({f"repaired_{k}": [] for k in entry.defenses})
    groups: dict[str, dict[Any, list[torch.Tensor]]] = {"correct": correct, "iterates": by_iterate, "ssl_in": ssl_in,
                                                        "ssl_out": ssl_out, "samples": samples}
    partial = PartialCells(store.out_dir, list(cells.values()), batch_size, len(data))
    done = partial.restore(groups, seconds, attack.stats if attack is not None else None)
    n_batches = -(-len(data) // batch_size)
    bar = tqdm(data.batches(batch_size), total=n_batches, initial=done, disable=not progress,
               desc=f"{entry.name} | {attack_desc['name']}", leave=False)
    for index, (x, y) in enumerate(bar):
        if index < done:
            continue  # finished before an interruption: restored from the partial state
        with seeded_global_draws(fresh_draws[0], f"{fresh_draws[1]}:batch:{index}"):
            x, y = x.to(device), y.to(device)
            t0 = time.perf_counter()
            adv = x if attack is None else attack(x, y)
            seconds[None] += time.perf_counter() - t0
            with torch.no_grad():
                correct[None].append((clf(adv).argmax(1) == y).cpu())
            keep = len(samples["input"]) == 0
            if keep:
                samples["input"].append(adv[:SAMPLES_KEPT].cpu())
                samples["clean"].append(x[:SAMPLES_KEPT].cpu())
                samples["labels"].append(y[:SAMPLES_KEPT].cpu())
            for dname, defense in entry.defenses.items():
                t0 = time.perf_counter()
                caps, offered = capabilities[dname], cast(Any, defense)  # read through the defense contract
                memo = (memos or {}).get(dname)
                source = defense if memo is None else memo
                if caps.trajectory:
                    iterates = cast(Any, source).trajectory(adv)
                    repaired = iterates[-1]
                else:
                    repaired = source(adv).detach()
                if memo is not None:
                    memo.clear()  # this batch's tries are scored: their memory goes
                seconds[dname] += time.perf_counter() - t0
                with torch.no_grad():
                    correct[dname].append((clf(repaired).argmax(1) == y).cpu())
                    if caps.trajectory:
                        by_iterate[dname].append(torch.stack([clf(z).argmax(1) == y for z in iterates]).cpu())
                if caps.ssl_loss:
                    ssl_in[dname].append(offered.ssl_loss(adv).cpu())
                    ssl_out[dname].append(offered.ssl_loss(repaired).cpu())
                if keep:
                    samples[f"repaired_{dname}"].append(repaired[:SAMPLES_KEPT].cpu())
            if index + 1 < n_batches:
                partial.save(index + 1, groups, seconds, attack.stats if attack is not None else None)
    records: list[dict[str, Any]] = []
    cost = attack.stats.per_image() if attack is not None else {"forward_per_image": 0.0, "backward_per_image": 0.0}
    for cell, key in cells.items():
        if store.has(key):
            records.append(store.require(key))
            continue
        acc = accuracy_of(torch.cat(correct[cell]))
        defense_desc = None if cell is None else {"label": cell, **_params_of(entry.defenses[cell])}
        record = {**base, "key": key, "defense": defense_desc, "accuracy": acc.value, "stderr": acc.stderr,
                  "n_correct": acc.correct, "attack_seconds": seconds[None],
                  "defense_seconds": 0.0 if cell is None else seconds[cell],
                  "seconds": seconds[None] + (0.0 if cell is None else seconds[cell]),
                  "attack_cost": cost, "attack_members": getattr(attack, "report", None),
                  "model_card": {k: entry.card.get(k) for k in ("arch", "recipe", "kind")},
                  "layout": layout_of(clf) if isinstance(clf, nn.Module) else None,
                  "retains_freed_memory": retaining_freed_memory(),
                  "tap_input_gradients": tap_input_gradients_enabled(),
                  "fused_conv_pool": fused_conv_pool_available()}
        arrays: dict[str, np.ndarray] = {"correct": torch.cat(correct[cell]).numpy()}
        arrays.update({k: torch.cat(v).numpy() for k, v in samples.items() if v and (
            not k.startswith("repaired_") or k == f"repaired_{cell}")})
        if cell is not None and ssl_in[cell]:
            arrays["ssl_loss_input"] = torch.cat(ssl_in[cell]).numpy()
            arrays["ssl_loss_repaired"] = torch.cat(ssl_out[cell]).numpy()
        if cell is not None and by_iterate[cell]:
            per_iterate = torch.cat(by_iterate[cell], 1)  # (K + 1, N)
            arrays["correct_iterates"] = per_iterate.numpy()
            record["iterate_accuracy"] = per_iterate.float().mean(1).tolist()
            record["worst_over_iterates"] = accuracy_of(per_iterate.all(0)).value
        if extra:
            record.update(extra)
        store.add(record, arrays)
        records.append(store.require(key))
    partial.clear()
    return records
