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
Fresh draws (EOT, the randomness probe, the randomized clean accuracy) come from torch's
global generator seeded from ``config.seed``, the row and the batch
(``seeding.seeded_global_draws``): a run gives the same numbers every time, and a run
resumed after a crash the same as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from advrepair.adaptive import (BPDA, EOT, DefenseAwarePGD, black_box_flag, gradient_flag, monotonicity_flag,
                                randomized_accuracy, randomness_flag)
from advrepair.adaptive.defense_aware import sweep_entry
from advrepair.adaptive.contract import as_module, capabilities_of, describe_model
from advrepair.adaptive.memo import DefenseMemo, shares_outputs
from advrepair.adaptive.randomness import RandomnessProbe, detect_randomness, fresh_draws
from advrepair.allocator import retaining_freed_memory
from advrepair.engine import fused_conv_pool_available, tap_input_gradients_enabled
from advrepair.seeding import seeded_global_draws
from advrepair.attacks import PGD, Attack, Square
from advrepair.attacks.apgd import APGDCE, APGDDLR
from advrepair.attacks.apgd_t import APGDT
from advrepair.enums import Norm
from advrepair.data import ImageDataset
from advrepair.engine import relative_tanh_surrogate, soft_sign_surrogate, tanh_surrogate
from advrepair.errors import InputError
from advrepair.evaluation.harness import ModelEntry, _params_of, evaluate_attack, weights_id
from advrepair.evaluation.metrics import Accuracy
from advrepair.evaluation.store import ResultsStore, record_key
from advrepair.evaluation.worst_case import worst_case_correct
from advrepair.runtime import resolve_device
from advrepair.validation import check_int_at_least, check_positive

#: images the defense runs on to decide whether it is randomized
PROBE_IMAGES = 16
#: score BPDA and Square rows from the defense outputs their attack already computed, when the
#: defense's output is a function of the image alone (``adaptive.memo``; same results, less work)
SHARE_DEFENSE_OUTPUTS = True

SURROGATES: dict[str, Callable[[float], Callable[[torch.Tensor], torch.Tensor]]] = {
    "relative-tanh": relative_tanh_surrogate, "tanh": tanh_surrogate, "soft-sign": soft_sign_surrogate}


ATTACK_FAMILIES = ("pgd", "apgd")


@dataclass(frozen=True)
class AdaptiveConfig:
    """Budgets of the adaptive protocol.

    ``attack="pgd"``: each gradient row is one PGD of ``steps`` steps of size ``alpha``
    (default eps / 4, so the budget's edge is reachable in a few steps), and EOT averages
    logits over ``eot_draws`` batched draws. ``attack="apgd"``: each gradient row is APGD-CE
    and APGD-DLR (APGD-T over ``target_classes`` targets when > 0) with ``restarts`` restarts
    (Croce & Hein 2020), and EOT averages the loss gradient over ``eot_draws`` calls.

    ``cascade``: the clean and static rows run on every image, each later row only on the
    images still standing (correct under the defense after every earlier row). Every row's
    per-image result is independent of the other images it runs beside, so the worst cases
    equal those of the full protocol (tests/test_fast_paths.py); a row's accuracy is then over
    the images it attacked (its ``n_images``), and rows no image reaches are not run.
    """

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
    attack: str = "pgd"
    restarts: int = 1
    target_classes: int = 0
    norm: str = "Linf"
    #: each attacked row after the static one attacks only the images every earlier row left
    #: correct (AutoAttack's cascade): the worst case is the same, rows cost what is left
    cascade: bool = False

    def __post_init__(self) -> None:
        check_positive(self.eps, "eps")
        if self.alpha is not None:
            check_positive(self.alpha, "alpha")
        check_positive(self.surrogate_temperature, "surrogate_temperature")
        for name in ("steps", "eot_draws", "unroll_steps", "square_queries", "randomized_draws", "restarts"):
            check_int_at_least(getattr(self, name), name, 1)
        check_int_at_least(self.target_classes, "target_classes", 0)
        if self.surrogate not in SURROGATES:
            raise InputError(f"unknown surrogate {self.surrogate!r}; choose from {sorted(SURROGATES)}")
        if self.attack not in ATTACK_FAMILIES:
            raise InputError(f"attack must be one of {ATTACK_FAMILIES}, got {self.attack!r}")
        Norm.parse(self.norm)
        if any(isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0 for lam in self.lambdas):
            raise InputError(f"lambdas must be >= 0, got {self.lambdas}")

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.eps / 4

    def gradient_attacks(self, model: nn.Module, steps: int | None = None, eot: int = 1,
                         ce_only: bool = False, stacked_draws: bool = False) -> list[tuple[str, Attack]]:
        """The attacks of one gradient row, each with the suffix of its row name (none for PGD,
        so PGD records keep the keys they always had). ``stacked_draws``: the model's
        randomness is drawn per batch row, so APGD runs its EOT draws as one batch."""
        steps = steps or self.steps
        if self.attack == "pgd":
            on = model if eot == 1 else EOT(model, draws=eot)
            return [("", PGD(on, eps=self.eps, alpha=self.step_size, steps=steps, norm=self.norm, seed=self.seed))]
        common: dict[str, Any] = dict(eps=self.eps, norm=self.norm, steps=steps, n_restarts=self.restarts,
                                      eot_iter=eot, seed=self.seed, eot_batched=stacked_draws and eot > 1)
        attacks: list[tuple[str, Attack]] = [("-apgd-ce", APGDCE(model, **common))]
        if ce_only:
            return attacks
        if self.target_classes:
            attacks.append(("-apgd-t", APGDT(model, n_target_classes=self.target_classes, **common)))
        else:
            attacks.append(("-apgd-dlr", APGDDLR(model, **common)))
        return attacks

    def primary(self, row: str) -> str:
        """The row name of a gradient row's first attack."""
        return row if self.attack == "pgd" else f"{row}-apgd-ce"


@dataclass
class DefenseUnderTest:
    """A defense as deployed plus the variants an adaptive attacker builds from it, all
    found through the defense contract (``adaptive.contract``).

    ``randomized``: a version drawing fresh randomness on every call (for EOT), ``None`` for a
    deterministic defense; both are decided by running the defense (``probe_randomness``),
    which the protocol does on its first images if the caller has not. ``unrolled``: a
    differentiable stand-in for the full-gradient attack; ``None`` differentiates the
    deployed module itself. ``ssl_loss``: the self-supervised loss for the defense-aware
    attack, if any.
    """

    label: str
    defense: nn.Module
    randomized: nn.Module | None = None
    unrolled: nn.Module | None = None
    ssl_loss: Any = None
    notes: list[str] = field(default_factory=list)
    randomness: RandomnessProbe | None = None

    @classmethod
    def build(cls, label: str, defense: nn.Module, config: AdaptiveConfig,
              probe: torch.Tensor | None = None) -> "DefenseUnderTest":
        """What an adaptive attacker builds from any defense: the reverse attack's unroll if it
        is one (``variant`` + ``ssl_loss``); else its ``bpda_surrogate()`` (e.g. differentiable
        JPEG) as the unroll if it offers one. ``probe``: images to decide randomness on now."""
        caps = capabilities_of(defense)
        if caps.unroll and caps.ssl_loss:
            target = cls.reverse_attack(defense, config, label)
        else:
            offered: Any = defense  # the contract's optional methods, looked up by name
            unrolled: nn.Module | None = offered.bpda_surrogate() if caps.bpda_surrogate else None
            notes = ["full gradient through the defense's differentiable approximation "
                     f"{_params_of(unrolled)}" if unrolled is not None else
                     "full gradient: the defense's own autograd graph"]
            if not caps.ssl_loss:
                notes.append("no ssl_loss: the defense-aware rows are skipped")
            target = cls(label, defense, unrolled=unrolled, ssl_loss=defense if caps.ssl_loss else None, notes=notes)
        if probe is not None:
            target.probe_randomness(probe, config.seed)
        return target

    @classmethod
    def reverse_attack(cls, defense: Any, config: AdaptiveConfig, label: str = "reverse-attack") -> "DefenseUnderTest":
        """The reverse attack: full gradient through a ``config.unroll_steps``-step unroll (same
        ball, step size rescaled) with a smooth surrogate of each sign step and gradient
        checkpointing; EOT draws (after ``probe_randomness``) from ``variant(seed=None)``."""
        surrogate = SURROGATES[config.surrogate](config.surrogate_temperature)
        unrolled = defense.variant(steps=min(config.unroll_steps, defense.steps), surrogate=surrogate,
                                   checkpoint=config.checkpoint)
        notes = [f"full gradient through {unrolled.steps} of the defense's {defense.steps} steps "
                 f"(step size {unrolled.step_size:.4g}), {config.surrogate} surrogate of sign at temperature "
                 f"{config.surrogate_temperature:g}, checkpointing {'on' if config.checkpoint else 'off'}"]
        return cls(label, defense, unrolled=unrolled, ssl_loss=defense, notes=notes)

    def probe_randomness(self, images: torch.Tensor, seed: int = 0) -> RandomnessProbe:
        """Decide by running the defense whether it is randomized, and find its EOT draws
        (any draws from torch's global generator seeded from ``seed``)."""
        if self.randomness is None:
            with seeded_global_draws(seed, "randomness-probe"):
                self.randomness = detect_randomness(self.defense, images)
                fresh, how = fresh_draws(self.defense, self.randomness, images)
            self.randomized = None if fresh is None else as_module(fresh)
            self.notes.append(how)
        return self.randomness


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
    records, sweep_rows, base_common, defense_params, clf, standing = _run_rows(
        data, model, target, config, store, batch_size, device, subset, progress, len(data))
    return _summarize(data, model, target, config, store, records, sweep_rows, base_common, defense_params,
                      clf, device, standing)


def run_adaptive_rows(data: ImageDataset, model: ModelEntry, target: DefenseUnderTest, config: AdaptiveConfig,
                      store: ResultsStore, *, key_images: int, batch_size: int = 100,
                      device: str | torch.device = "cpu", subset: str = "",
                      progress: bool = False) -> list[dict[str, Any]]:
    """The protocol's attacked rows on one shard of a larger set (no summary): the records
    carry the keys of the whole set (``key_images`` images), so the shards' records merge
    into the ones ``run_adaptive`` would store, and it then finds them and only summarizes."""
    if config.cascade:
        raise InputError("the cascade needs every image's result before the next row: run it in one process "
                         "(run_adaptive), not sharded")
    records, *_ = _run_rows(data, model, target, config, store, batch_size, resolve_device(device), subset,
                            progress, key_images)
    return [r for rs in records.values() for r in rs]


def _run_rows(data: ImageDataset, model: ModelEntry, target: DefenseUnderTest, config: AdaptiveConfig,
              store: ResultsStore, batch_size: int, device: torch.device, subset: str, progress: bool,
              key_images: int) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], dict[str, Any],
                                        dict[str, Any], nn.Module, "Standing"]:
    clf = model.classifier.to(device).eval()
    for module in (target.defense, target.randomized, target.unrolled):  # the attacker's variants too
        if isinstance(module, nn.Module):
            module.to(device)
    defense_params = _params_of(target.defense)
    probe = data.tensors(range(min(len(data), PROBE_IMAGES)))[0].to(device)  # randomness is decided on these
    if target.randomness is None:
        target.probe_randomness(probe, config.seed)
        if isinstance(target.randomized, nn.Module):
            target.randomized.to(device)
    base_common = dict(dataset=data.name, subset=subset, n_images=key_images, model=model.name,
                       model_weights=weights_id(model.card) or describe_model(clf))
    single = ModelEntry(model.name, clf, card=model.card, defenses={target.label: target.defense})
    records: dict[str, list[dict[str, Any]]] = {}
    standing = Standing(len(data))

    memo = _memo_for(target, probe)
    shared = target.defense if memo is None else memo
    memos = None if memo is None else {target.label: memo}

    def row(name: str, attack: Attack | None, crafted_on: str, with_base: bool = False,
            extra: dict[str, Any] | None = None, through_memo: bool = False) -> None:
        on, on_subset, on_images, idx = data, subset, key_images, None
        if config.cascade and name != "clean" and not name.startswith("static"):
            idx = standing.indices()
            if idx.size == 0:
                records[name] = []  # every image already broken: nothing to attack
                return
            on, on_subset, on_images = data.subset(idx.tolist()), standing.label(subset, idx), int(idx.size)
        cells = evaluate_attack(on, single, attack, store, row=name, row_field="adaptive_row", crafted_on=crafted_on,
                                with_base=with_base, subset=on_subset, batch_size=batch_size, device=device,
                                progress=progress, extra={"protocol": "adaptive", **(extra or {})},
                                key_images=on_images, memos=memos if through_memo else None,
                                fresh_draws=(config.seed, f"row:{name}"),
                                announce=f"adaptive | {model.name} | {target.label} | {name}: crafted on {crafted_on}"
                                         + (f" ({on_images} images standing)" if idx is not None else ""))
        records[name] = list(cells.values())
        standing.update(store.arrays(_defended(records[name])), idx)

    def gradient_rows(name: str, on: nn.Module, crafted_on: str, with_base: bool = False, steps: int | None = None,
                      eot: int = 1, ce_only: bool = False, extra: dict[str, Any] | None = None,
                      draws: Any = None, through_memo: bool = False) -> None:
        stacked = draws is not None and capabilities_of(draws).rowwise_randomness
        for suffix, attack in config.gradient_attacks(on, steps=steps, eot=eot, ce_only=ce_only,
                                                      stacked_draws=stacked):
            row(name + suffix, attack, crafted_on, with_base=with_base, extra=extra, through_memo=through_memo)

    defended_bpda = nn.Sequential(BPDA(shared), clf)
    row("clean", None, "-", with_base=True)
    gradient_rows("static", clf, "classifier (defense ignored)", with_base=True)
    gradient_rows("bpda", defended_bpda, "BPDA(defense) + classifier, identity backward", through_memo=True)
    short = max(1, config.steps // 4)
    gradient_rows("bpda-short", defended_bpda, f"BPDA(defense) + classifier, {short} steps", steps=short,
                  ce_only=True, through_memo=True)
    eot = config.eot_draws
    if target.randomized is not None:
        gradient_rows("bpda-eot", nn.Sequential(BPDA(target.randomized), clf), f"EOT over {eot} fresh draws of "
                      "BPDA(defense) + classifier", eot=eot, extra={"eot_draws": eot}, draws=target.randomized)
    unrolled = target.unrolled if target.unrolled is not None else target.defense
    full_eot = 1
    if target.randomized is not None and config.attack == "apgd":
        with seeded_global_draws(config.seed, "unroll-randomness-probe"):
            fresh_unroll, _ = fresh_draws(unrolled, detect_randomness(unrolled, probe), probe)
        if fresh_unroll is not None:
            unrolled, full_eot = as_module(fresh_unroll), eot
    gradient_rows("full-gradient", nn.Sequential(unrolled, clf), "unrolled defense + classifier (exact autograd "
                  "or surrogate)" + (f", EOT over {full_eot} draws" if full_eot > 1 else ""), eot=full_eot,
                  extra={"unroll": _params_of(unrolled), "eot_draws": full_eot},
                  draws=unrolled if full_eot > 1 else None)
    sweep_rows: list[dict[str, Any]] = []
    if target.ssl_loss is not None:
        for lam in config.lambdas:
            attack = DefenseAwarePGD(clf, target.ssl_loss, lambda_s=lam, eps=config.eps, alpha=config.step_size,
                                     steps=config.steps, norm=config.norm, seed=config.seed)
            name = f"defense-aware-{lam:g}"
            row(name, attack, f"classifier, loss L_c - {lam:g} L_s", with_base=True, extra={"lambda_s": lam})
            if not records[name]:
                continue
            std, rep = records[name]
            sweep_rows.append(sweep_entry(lam, Accuracy(std["n_correct"], std["n_images"]),
                                          Accuracy(rep["n_correct"], rep["n_images"]), rep["attack"]))
    standing.before_square = standing.accuracy()
    row("square", Square(nn.Sequential(shared, clf), eps=config.eps, norm=config.norm,
                         n_queries=config.square_queries, seed=config.seed), "defense + classifier, scores only",
        through_memo=True)
    return records, sweep_rows, base_common, defense_params, clf, standing


def _memo_for(target: DefenseUnderTest, probe: torch.Tensor) -> DefenseMemo | None:
    """A memo of the deployed defense when its output is the image's alone (checked by running
    it: repeated calls and uneven batches give the same bits) and costs more than keying it."""
    assert target.randomness is not None  # probed before the rows
    if not SHARE_DEFENSE_OUTPUTS or target.randomness.repeat_difference != 0.0:
        return None
    if not shares_outputs(target.defense, probe):
        return None
    note = ("BPDA and Square rows are scored from the defense outputs their attack computed (the defense "
            "gives the same bits on repeated calls and in any batch split, checked by running it)")
    if note not in target.notes:
        target.notes.append(note)
    return DefenseMemo(target.defense)


class Standing:
    """Per image: still correct under the defense after every row so far (outputs only, and
    at every iterate of the defense). The cascade attacks only these; at the end they are
    the worst cases."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.outputs = np.ones(n, dtype=bool)
        self.iterates = np.ones(n, dtype=bool)
        self.before_square: Accuracy | None = None

    def indices(self) -> np.ndarray:
        return np.flatnonzero(self.outputs)

    @staticmethod
    def label(subset: str, idx: np.ndarray) -> str:
        """The subset description in a cascaded row's key: which images it attacked."""
        digest = hashlib.sha1(idx.astype(np.int64).tobytes()).hexdigest()[:12]
        return f"{subset}; cascade: the {idx.size} images every earlier row left correct ({digest})"

    def update(self, arrays: dict[str, np.ndarray], idx: np.ndarray | None) -> None:
        at = slice(None) if idx is None else idx
        self.outputs[at] &= np.asarray(arrays["correct"], dtype=bool)
        self.iterates[at] &= correct_at_every_iterate(arrays).astype(bool)

    def accuracy(self) -> Accuracy:
        return Accuracy.of(self.outputs)


def _defended(record_list: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in record_list if r.get("defense"))


def correct_at_every_iterate(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Correct at every iterate of the defense where the record has them, else at the output."""
    return np.asarray(arrays["correct_iterates"].all(0) if "correct_iterates" in arrays else arrays["correct"])


def _summarize(data: ImageDataset, model: ModelEntry, target: DefenseUnderTest, config: AdaptiveConfig,
               store: ResultsStore, records: dict[str, list[dict[str, Any]]], sweep_rows: list[dict[str, Any]],
               base_common: dict[str, Any], defense_params: dict[str, Any], clf: nn.Module,
               device: torch.device, standing: "Standing") -> dict[str, Any]:
    key = record_key(kind="adaptive-summary", **base_common, defense=defense_params, config=asdict(config))
    if store.has(key):
        summary = store.get(key)
        assert summary is not None
        _flag_record(summary["flags"])
        return summary
    attacked = {name: _defended(rs) for name, rs in records.items() if name != "clean" and rs}
    if config.cascade:  # the rows cover different images: the standing images are the worst case
        worst, worst_iter = Accuracy.of(standing.outputs), Accuracy.of(standing.iterates)
    else:
        worst = Accuracy.of(worst_case_correct(store, attacked.values()))
        worst_iter = Accuracy.of(worst_case_correct(store, attacked.values(), per_image=correct_at_every_iterate))

    n_probe = min(len(data), 32)
    images, labels = data.tensors(range(n_probe))
    images, labels = images.to(device), labels.to(device)
    defended = nn.Sequential(target.defense, clf)
    assert target.randomness is not None  # decided in _run_rows
    with seeded_global_draws(config.seed, "summary-checks"):  # the checks that run a randomized defense
        flags = [{"flag": "randomized defense (by running it)", "fired": target.randomness.kind.randomized,
                  "detail": target.randomness.detail() + ("; attacked with EOT" if target.randomized is not None else "")},
                 {**randomness_flag(defended, images), "flag": "randomness (repeated calls on the same images)"}]
        if target.randomized is not None:
            flag = randomness_flag(nn.Sequential(target.randomized, clf), images)
            flag["flag"] = "randomness (EOT draws)"
            flags.append(flag)
        unrolled = target.unrolled if target.unrolled is not None else target.defense
        grad_flag = gradient_flag(nn.Sequential(unrolled, clf), images, labels)
        grad_flag["flag"] += " (full-gradient path)"
        flags.append(grad_flag)
        exact = gradient_flag(defended, images, labels)
        exact["flag"] += " (deployed defense, exact autograd)"
        flags.append(exact)
    if config.cascade:
        before = standing.before_square
        assert before is not None  # set when the rows ran
        flag = black_box_flag({"every gradient row": before.value}, {"square after them": worst.value})
        flag["detail"] += f" (cascade: Square broke {before.correct - worst.correct} of the {before.correct} " \
                          "images the gradient rows left standing)"
        flags.append(flag)
        flags.append({"flag": "accuracy-rises-with-strength", "fired": False,
                      "detail": "not measured in the cascade (bpda-short and bpda attack different images)"})
    else:
        white = {n: r["accuracy"] for n, r in attacked.items() if n != "square"}
        flags.append(black_box_flag(white, {"square": attacked["square"]["accuracy"]} if "square" in attacked else {}))
        flags.append(monotonicity_flag([(float(max(1, config.steps // 4)),
                                         attacked[config.primary("bpda-short")]["accuracy"]),
                                        (float(config.steps), attacked[config.primary("bpda")]["accuracy"])]))
    randomized = None
    if target.randomized is not None:
        all_images, all_labels = data.tensors()
        with seeded_global_draws(config.seed, "randomized-clean"):
            randomized = randomized_accuracy(nn.Sequential(target.randomized, clf), all_images.to(device),
                                             all_labels.to(device), draws=config.randomized_draws)
    _flag_record(flags)
    summary = {"kind": "adaptive-summary", "key": key, **base_common, "defense": {"label": target.label,
               **defense_params}, "config": asdict(config), "notes": target.notes,
               "rows": {name: [r["key"] for r in rs] for name, rs in records.items()},
               "row_order": list(records),  # results.json sorts the keys of "rows"
               "worst_case": {"accuracy": worst.value, "stderr": worst.stderr, "n_correct": worst.correct,
                              "over": sorted(attacked)},
               "worst_over_iterates": {"accuracy": worst_iter.value, "stderr": worst_iter.stderr,
                                       "n_correct": worst_iter.correct},
               "randomness": target.randomness.to_dict(),
               "randomized_clean": randomized, "lambda_sweep": sweep_rows, "flags": flags,
               "not_run": [name for name, rs in records.items() if not rs],
               "seconds": sum(r["seconds"] for rs in records.values() for r in rs),
               "retains_freed_memory": retaining_freed_memory(),
               "tap_input_gradients": tap_input_gradients_enabled(),
               "fused_conv_pool": fused_conv_pool_available()}
    store.add(summary, {"worst_case_correct": standing.outputs, "worst_over_iterates_correct": standing.iterates}
              if config.cascade else None)
    return summary


def reverse_attack_target(defense: Any, config: AdaptiveConfig) -> DefenseUnderTest:
    """Shorthand for ``DefenseUnderTest.reverse_attack``."""
    return DefenseUnderTest.reverse_attack(defense, config)


__all__ = ["AdaptiveConfig", "DefenseUnderTest", "SURROGATES", "correct_at_every_iterate", "reverse_attack_target",
           "run_adaptive", "run_adaptive_rows"]
