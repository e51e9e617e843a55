"""The adaptive protocol: every standard way to attack a test-time defense, in one run.

Test-time defenses tend to look strong against attacks that ignore them and fall against
attacks that don't (Athalye et al. 2018; Croce et al. 2022, who re-evaluated the reverse
attack among nine others). For one classifier and one defense this runs, on the same
images and with the same budget:

    clean            no attack
    static           PGD on the undefended classifier; the record without the defense is
                     the base model's robustness, the one with it is the transfer of those
                     images into the defense (mao2021's Table 1 threat model)
    bpda             PGD on Sequential(BPDA(defense), classifier): real forward, identity
                     backward (Athalye et al. 2018)
    bpda-short       the same with a quarter of the steps (for the monotonicity flag)
    bpda-eot         BPDA with gradients averaged over R fresh draws of the defense's
                     randomness (EOT); the scored defense keeps its seed
    full-gradient    PGD through a differentiable unroll of the defense (for the reverse
                     attack: a shortened unroll, sign steps with a smooth surrogate
                     derivative, gradient checkpointing)
    defense-aware    mao2021 Eq. 8, L_c - lambda_s L_s, for each lambda_s (Figure 4)
    square           Square (score-based, no gradients) on the defended model

and reports each row's accuracy with and without the defense, the per-image worst case
over every row, the worst case over the defense's own iterates, clean accuracy of a
randomized defense over repeated draws, the reliability flags and the cost. Everything
goes into results.json (one record per row, plus one ``adaptive-summary`` record).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from advrepair.adaptive import (BPDA, EOT, DefenseAwarePGD, black_box_flag, gradient_flag, monotonicity_flag,
                                randomized_accuracy, randomness_flag)
from advrepair.attacks import PGD, Attack, Square
from advrepair.data import ImageDataset
from advrepair.engine import relative_tanh_surrogate, soft_sign_surrogate, tanh_surrogate
from advrepair.errors import InputError
from advrepair.evaluation.harness import CLEAN, AttackSpec, ModelEntry, _evaluate_cells, _params_of, weights_id
from advrepair.evaluation.metrics import Accuracy
from advrepair.evaluation.store import ResultsStore, record_key
from advrepair.evaluation.worst_case import worst_case_correct
from advrepair.runtime import resolve_device
from advrepair.validation import check_positive

SURROGATES: dict[str, Callable[[float], Callable[[torch.Tensor], torch.Tensor]]] = {
    "relative-tanh": relative_tanh_surrogate, "tanh": tanh_surrogate, "soft-sign": soft_sign_surrogate}


@dataclass(frozen=True)
class AdaptiveConfig:
    """Budgets of the adaptive protocol. PGD rows use ``steps`` of size ``alpha``
    (default eps / 4, so the budget's edge is reachable in a few steps)."""

    eps: float
    steps: int = 20
    alpha: float | None = None
    eot_draws: int = 4
    unroll_steps: int = 5
    surrogate: str = "relative-tanh"
    surrogate_temperature: float = 1.0
    checkpoint: bool = True
    lambdas: tuple[float, ...] = (0.0, 1.0, 4.0, 16.0)
    square_queries: int = 200
    randomized_draws: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self.eps, "eps")
        if self.alpha is not None:
            check_positive(self.alpha, "alpha")
        check_positive(self.surrogate_temperature, "surrogate_temperature")
        for name in ("steps", "eot_draws", "unroll_steps", "square_queries", "randomized_draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be an integer >= 1, got {value!r}")
        if self.surrogate not in SURROGATES:
            raise InputError(f"unknown surrogate {self.surrogate!r}; choose from {sorted(SURROGATES)}")
        if any(isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0 for lam in self.lambdas):
            raise InputError(f"lambdas must be >= 0, got {self.lambdas}")

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.eps / 4


@dataclass
class DefenseUnderTest:
    """A defense as deployed plus the variants an adaptive attacker builds from it.

    ``randomized``: the same defense with fresh randomness on every call (for EOT);
    ``None`` skips BPDA+EOT (say why in ``notes``). ``unrolled``: a differentiable stand-in
    for the full-gradient attack; ``None`` differentiates the deployed module itself.
    ``ssl_loss``: the self-supervised loss for the defense-aware attack, if any.
    """

    label: str
    defense: nn.Module
    randomized: nn.Module | None = None
    unrolled: nn.Module | None = None
    ssl_loss: Any = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, label: str, defense: nn.Module, config: AdaptiveConfig) -> "DefenseUnderTest":
        """What an adaptive attacker builds from any defense module: the reverse attack's
        variants if it is one (``variant`` + ``ssl_loss``); else its ``bpda_surrogate()``
        (e.g. differentiable JPEG) as the unroll if it offers one, and an unseeded copy
        for EOT if it has a ``seed``."""
        if callable(getattr(defense, "variant", None)) and callable(getattr(defense, "ssl_loss", None)):
            return cls.reverse_attack(defense, config, label)
        notes = []
        make_surrogate = getattr(defense, "bpda_surrogate", None)
        unrolled: nn.Module | None = make_surrogate() if callable(make_surrogate) else None
        notes.append("full gradient through the defense's differentiable approximation "
                     f"{_params_of(unrolled)}" if unrolled is not None else
                     "full gradient: the defense's own autograd graph")
        randomized: nn.Module | None = None
        if getattr(defense, "seed", None) is not None:
            randomized = copy.copy(defense)
            setattr(randomized, "seed", None)  # noqa: B010 - a plain attribute; the stubs type Module attributes as tensors
        elif hasattr(defense, "seed"):
            randomized = defense
        else:
            notes.append("deterministic defense: BPDA+EOT skipped (it would equal BPDA)")
        ssl = defense if callable(getattr(defense, "ssl_loss", None)) else None
        return cls(label, defense, randomized=randomized, unrolled=unrolled, ssl_loss=ssl, notes=notes)

    @classmethod
    def reverse_attack(cls, defense: Any, config: AdaptiveConfig, label: str = "reverse-attack") -> "DefenseUnderTest":
        """The reverse attack: EOT over unseeded draws; full gradient through a
        ``config.unroll_steps``-step unroll (same ball, step size rescaled) with a smooth
        surrogate of each sign step and gradient checkpointing."""
        surrogate = SURROGATES[config.surrogate](config.surrogate_temperature)
        unrolled = defense.variant(steps=min(config.unroll_steps, defense.steps), surrogate=surrogate,
                                   checkpoint=config.checkpoint)
        notes = [f"full gradient through {unrolled.steps} of the defense's {defense.steps} steps "
                 f"(step size {unrolled.step_size:.4g}), {config.surrogate} surrogate of sign at temperature "
                 f"{config.surrogate_temperature:g}, checkpointing {'on' if config.checkpoint else 'off'}"]
        return cls(label, defense, randomized=defense.variant(seed=None), unrolled=unrolled,
                   ssl_loss=defense, notes=notes)


def _flag_record(flags: list[dict[str, Any]]) -> None:
    for f in flags:
        mark = "FIRED" if f["fired"] else "ok"
        tqdm.write(f"  [{mark}] {f['flag']}: {f['detail']}")


def run_adaptive(data: ImageDataset, model: ModelEntry, target: DefenseUnderTest, config: AdaptiveConfig,
                 store: ResultsStore, *, batch_size: int = 100, device: str | torch.device = "cpu",
                 subset: str = "", progress: bool = True) -> dict[str, Any]:
    """Run the protocol for one classifier and one defense; returns the summary record.

    Every row is stored as soon as it finishes and skipped when already in ``store``, so
    an interrupted run resumes at the row it was in.
    """
    device = resolve_device(device)
    records, sweep_rows, base_common, defense_params, clf = _run_rows(
        data, model, target, config, store, batch_size, device, subset, progress, len(data))
    return _summarize(data, model, target, config, store, records, sweep_rows, base_common, defense_params,
                      clf, device)


def run_adaptive_rows(data: ImageDataset, model: ModelEntry, target: DefenseUnderTest, config: AdaptiveConfig,
                      store: ResultsStore, *, key_images: int, batch_size: int = 100,
                      device: str | torch.device = "cpu", subset: str = "",
                      progress: bool = False) -> list[dict[str, Any]]:
    """The protocol's attacked rows on one shard of a larger set (no summary): the records
    carry the keys of the whole set (``key_images`` images), so the shards' records merge
    into the ones ``run_adaptive`` would store, and it then finds them and only summarizes."""
    records, *_ = _run_rows(data, model, target, config, store, batch_size, resolve_device(device), subset,
                            progress, key_images)
    return [r for rs in records.values() for r in rs]


def _run_rows(data: ImageDataset, model: ModelEntry, target: DefenseUnderTest, config: AdaptiveConfig,
              store: ResultsStore, batch_size: int, device: torch.device, subset: str, progress: bool,
              key_images: int) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], dict[str, Any],
                                        dict[str, Any], nn.Module]:
    clf = model.classifier.to(device).eval()
    for module in (target.defense, target.randomized, target.unrolled):  # the attacker's variants too
        if isinstance(module, nn.Module):
            module.to(device)
    defense_params = _params_of(target.defense)
    base_common = dict(dataset=data.name, subset=subset, n_images=key_images, model=model.name,
                       model_weights=weights_id(model.card))
    single = ModelEntry(model.name, clf, card=model.card, defenses={target.label: target.defense})
    records: dict[str, list[dict[str, Any]]] = {}

    def pgd(on: nn.Module, steps: int = config.steps) -> Attack:
        return PGD(on, eps=config.eps, alpha=config.step_size, steps=steps, seed=config.seed)

    def row(name: str, attack: Attack | None, crafted_on: str, with_base: bool = False,
            extra: dict[str, Any] | None = None) -> None:
        desc = {"name": CLEAN} if attack is None else attack.params()
        attack_desc = {**desc, "adaptive_row": name, "crafted_on": crafted_on}
        base = {**base_common, "attack": attack_desc}
        cells: dict[str | None, str] = {target.label: record_key(**base, defense=defense_params)}
        if with_base:
            cells = {None: record_key(**base, defense=None), **cells}
        if all(store.has(k) for k in cells.values()):
            records[name] = [store.require(k) for k in cells.values()]
            return
        entry = single if with_base else ModelEntry(model.name, clf, card=model.card,
                                                     defenses={target.label: target.defense})
        tqdm.write(f"adaptive | {model.name} | {target.label} | {name}: crafted on {crafted_on}")
        records[name] = _evaluate_cells(data, entry, clf, AttackSpec(CLEAN), attack_desc, base, cells, store,
                                        batch_size, device, progress, attack=attack,
                                        extra={"protocol": "adaptive", "adaptive_row": name, **(extra or {})})

    defended_bpda = nn.Sequential(BPDA(target.defense), clf)
    row("clean", None, "-", with_base=True)
    row("static", pgd(clf), "classifier (defense ignored)", with_base=True)
    row("bpda", pgd(defended_bpda), "BPDA(defense) + classifier, identity backward")
    short = max(1, config.steps // 4)
    row("bpda-short", pgd(defended_bpda, short), f"BPDA(defense) + classifier, {short} steps")
    if target.randomized is not None:
        eot_model = EOT(nn.Sequential(BPDA(target.randomized), clf), draws=config.eot_draws)
        row("bpda-eot", pgd(eot_model), f"EOT over {config.eot_draws} unseeded draws of BPDA(defense) + classifier",
            extra={"eot_draws": config.eot_draws})
    unrolled = target.unrolled if target.unrolled is not None else target.defense
    row("full-gradient", pgd(nn.Sequential(unrolled, clf)), "unrolled defense + classifier (exact autograd "
        "or surrogate)", extra={"unroll": _params_of(unrolled)})
    sweep_rows: list[dict[str, Any]] = []
    if target.ssl_loss is not None:
        for lam in config.lambdas:
            attack = DefenseAwarePGD(clf, target.ssl_loss, lambda_s=lam, eps=config.eps, alpha=config.step_size,
                                     steps=config.steps, seed=config.seed)
            name = f"defense-aware-{lam:g}"
            row(name, attack, f"classifier, loss L_c - {lam:g} L_s", with_base=True, extra={"lambda_s": lam})
            std, rep = records[name]
            sweep_rows.append({"lambda_s": lam, "accuracy_standard": std["accuracy"], "stderr_standard": std["stderr"],
                               "accuracy_repaired": rep["accuracy"], "stderr_repaired": rep["stderr"],
                               "n_images": rep["n_images"], "attack": rep["attack"]})
    row("square", Square(nn.Sequential(target.defense, clf), eps=config.eps, n_queries=config.square_queries,
                         seed=config.seed), "defense + classifier, scores only")
    return records, sweep_rows, base_common, defense_params, clf


def _defended(record_list: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in record_list if r.get("defense"))


def _correct_at_every_iterate(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Correct at every iterate of the defense where the record has them, else at the output."""
    return np.asarray(arrays["correct_iterates"].all(0) if "correct_iterates" in arrays else arrays["correct"])


def _summarize(data: ImageDataset, model: ModelEntry, target: DefenseUnderTest, config: AdaptiveConfig,
               store: ResultsStore, records: dict[str, list[dict[str, Any]]], sweep_rows: list[dict[str, Any]],
               base_common: dict[str, Any], defense_params: dict[str, Any], clf: nn.Module,
               device: torch.device) -> dict[str, Any]:
    key = record_key(kind="adaptive-summary", **base_common, defense=defense_params, config=asdict(config))
    if store.has(key):
        summary = store.get(key)
        assert summary is not None
        _flag_record(summary["flags"])
        return summary
    attacked = {name: _defended(rs) for name, rs in records.items() if name != "clean"}
    correct = worst_case_correct(store, attacked.values())
    worst = Accuracy(int(correct.sum()), int(correct.size))
    correct_iter = worst_case_correct(store, attacked.values(), per_image=_correct_at_every_iterate)
    worst_iter = Accuracy(int(correct_iter.sum()), int(correct_iter.size))

    n_probe = min(len(data), 32)
    images, labels = data.tensors(range(n_probe))
    images, labels = images.to(device), labels.to(device)
    defended = nn.Sequential(target.defense, clf)
    flags = [randomness_flag(defended, images)]
    if target.randomized is not None:
        flag = randomness_flag(nn.Sequential(target.randomized, clf), images)
        flag["flag"] = "randomness (unseeded variant)"
        flags.append(flag)
    unrolled = target.unrolled if target.unrolled is not None else target.defense
    grad_flag = gradient_flag(nn.Sequential(unrolled, clf), images, labels)
    grad_flag["flag"] += " (full-gradient path)"
    flags.append(grad_flag)
    exact = gradient_flag(defended, images, labels)
    exact["flag"] += " (deployed defense, exact autograd)"
    flags.append(exact)
    white = {n: r["accuracy"] for n, r in attacked.items() if n != "square"}
    flags.append(black_box_flag(white, {"square": attacked["square"]["accuracy"]} if "square" in attacked else {}))
    flags.append(monotonicity_flag([(float(max(1, config.steps // 4)), attacked["bpda-short"]["accuracy"]),
                                    (float(config.steps), attacked["bpda"]["accuracy"])]))
    randomized = None
    if target.randomized is not None:
        all_images, all_labels = data.tensors()
        randomized = randomized_accuracy(nn.Sequential(target.randomized, clf), all_images.to(device),
                                         all_labels.to(device), draws=config.randomized_draws)
    _flag_record(flags)
    summary = {"kind": "adaptive-summary", "key": key, **base_common, "defense": {"label": target.label,
               **defense_params}, "config": asdict(config), "notes": target.notes,
               "rows": {name: [r["key"] for r in rs] for name, rs in records.items()},
               "worst_case": {"accuracy": worst.value, "stderr": worst.stderr, "n_correct": worst.correct,
                              "over": sorted(attacked)},
               "worst_over_iterates": {"accuracy": worst_iter.value, "stderr": worst_iter.stderr,
                                       "n_correct": worst_iter.correct},
               "randomized_clean": randomized, "lambda_sweep": sweep_rows, "flags": flags,
               "seconds": sum(r["seconds"] for rs in records.values() for r in rs)}
    store.add(summary)
    return summary


def reverse_attack_target(defense: Any, config: AdaptiveConfig) -> DefenseUnderTest:
    """Shorthand for ``DefenseUnderTest.reverse_attack``."""
    return DefenseUnderTest.reverse_attack(defense, config)


__all__ = ["AdaptiveConfig", "DefenseUnderTest", "SURROGATES", "reverse_attack_target", "run_adaptive",
           "run_adaptive_rows"]
