"""``advrepair.audit``: the adaptive protocol pointed at any classifier and any test-time defense.

    >>> report = advrepair.audit(classifier, defense, images, labels, eps=0.1, preset="quick")
    >>> print(report.to_markdown())

The defense is read only through the defense contract (``adaptive.contract``): nothing but
``images -> images`` is required, and each optional piece it offers makes the audit stronger.
Whether it is randomized is found by running it (``adaptive.randomness``); a randomized defense
always gets EOT.
"""
from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from advrepair.adaptive.contract import as_module, describe_defense, describe_model
from advrepair.auditing.presets import AuditPreset, budget_of
from advrepair.auditing.report import AuditFlag, AuditReport, AuditRow
from advrepair.data import ImageDataset
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.evaluation.adaptive import DefenseUnderTest, correct_at_every_iterate, run_adaptive
from advrepair.evaluation.harness import ModelEntry
from advrepair.evaluation.metrics import Accuracy, paired_difference
from advrepair.evaluation.store import ResultsStore, jsonable
from advrepair.evaluation.worst_case import worst_case_correct
from advrepair.validation import check_images, check_int_at_least, check_labels, check_positive


def _image_set_name(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A name for the user's images in results keys: two different image sets never share records."""
    h = hashlib.sha256(images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return f"images-{h.hexdigest()[:16]}"


def budget_text(attack: dict[str, Any]) -> str:
    """An attack's name and budget in one line, from its recorded parameters."""
    name = attack.get("name", "?")
    if name == "clean":
        return "none"
    parts = [str(name)]
    if "eps" in attack:
        parts.append(f"{attack.get('norm', '')} eps {attack['eps']:g}".strip())
    for key, label in (("steps", "steps"), ("n_queries", "queries"), ("n_restarts", "restarts"),
                       ("n_target_classes", "targets"), ("eot_iter", "EOT draws"), ("lambda_s", "lambda_s")):
        if key in attack and not (key in ("n_restarts", "eot_iter") and attack[key] == 1):
            parts.append(f"{attack[key]:g} {label}" if isinstance(attack[key], float) else f"{attack[key]} {label}")
    model = attack.get("model") or {}
    if isinstance(model, dict) and model.get("name") == "eot":
        parts.append(f"EOT over {model.get('draws')} draws")
    crafted = attack.get("crafted_on")
    return ", ".join(parts) + (f"; on {crafted}" if crafted else "")


def _check_classifier(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    """The classifier's number of classes, after checking on two images that it returns logits."""
    with torch.no_grad():
        out = classifier(images[:2])
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != min(2, len(images)):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"classifier must return logits of shape (batch, classes), got {got}")
    if int(labels.max()) >= out.shape[1]:
        raise InputError(f"labels go up to {int(labels.max())} but the classifier has {out.shape[1]} outputs")
    return int(out.shape[1])


def audit(classifier: nn.Module, defense: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
          labels: torch.Tensor, *, eps: float, norm: str = "Linf", preset: str | AuditPreset = "quick",
          out: str | Path | None = None, seed: int = 0, batch_size: int = 100, device: str = "cpu",
          progress: bool = True, classifier_name: str | None = None, defense_label: str = "defense",
          cascade: bool = False) -> AuditReport:
    """Audit ``defense`` in front of ``classifier`` on ``images`` with every adaptive attack
    of the protocol at the preset's budgets; returns a typed ``AuditReport``.

    Args:
        classifier: an nn.Module mapping (B, C, H, W) images in [0, 1] to logits (B, K).
        defense: any nn.Module or callable mapping images to images of the same shape.
        images, labels: float (N, C, H, W) in [0, 1] and int (N,).
        eps, norm: the threat model ("Linf" or "L2").
        preset: "quick", "standard" or "thorough" (``auditing.presets``).
        out: a folder for the per-row records (written as each row ends; a rerun resumes
            there) and the saved report; ``None`` keeps nothing on disk.
        cascade: attack, after the static row, only the images every earlier row left
            correct (AutoAttack's cascade): the same worst case for a fraction of the cost
            when the defense breaks; each row's accuracy is then over the images it attacked.

    Raises:
        InputError: bad images, labels, budget, preset, a classifier that does not return
            logits, or a defense that does not return images of its input's shape.
    """
    images = check_images(images)
    labels = check_labels(labels, images.shape[0])
    if len(images) == 0:
        raise InputError("audit needs at least one image")
    check_positive(eps, "eps")
    norm = Norm.parse(norm).value
    budget = budget_of(preset)
    preset_name = AuditPreset.parse(preset).value
    batch_size = check_int_at_least(batch_size, "batch_size", 1)
    if not callable(defense):
        raise InputError(f"defense must be an nn.Module or a callable images -> images, got {type(defense).__name__}")
    if not isinstance(classifier, nn.Module):
        raise InputError(f"classifier must be an nn.Module returning logits, got {type(classifier).__name__}")
    images, labels = images.detach().to("cpu", torch.float32), labels.detach().to("cpu")
    num_classes = _check_classifier(classifier.to(device).eval(), images[:2].to(device), labels.to(device))
    module = as_module(defense)
    config = dataclasses.replace(budget.config(eps, norm, seed), cascade=bool(cascade))
    data = ImageDataset(_image_set_name(images, labels), images.contiguous(), labels,
                        classes=[str(k) for k in range(num_classes)])
    name = classifier_name or type(classifier).__name__
    entry = ModelEntry(name, classifier, card={"weights_sha256": describe_model(classifier)})
    target = DefenseUnderTest.build(defense_label, module, config, probe=images[:16].to(device))
    with tempfile.TemporaryDirectory(prefix="advrepair-audit-") as scratch:
        store = ResultsStore(Path(out) if out is not None else Path(scratch))
        summary = run_adaptive(data, entry, target, config, store, batch_size=batch_size, device=device,
                               progress=progress)
        report = _report(store, summary, name, module, preset_name, budget.to_dict(), eps, norm, len(data),
                         target, budget.recommended_images, None if out is None else str(out))
    if out is not None:
        report.save(out)
    return report


def _report(store: ResultsStore, summary: dict[str, Any], classifier_name: str, defense: nn.Module, preset: str,
            budget: dict[str, Any], eps: float, norm: str, n_images: int, target: DefenseUnderTest,
            recommended: int, out: str | None) -> AuditReport:
    rows, defended, static_base = [], [], []
    for row_name in summary.get("row_order", summary["rows"]):
        for key in summary["rows"][row_name]:
            record = store.require(key)
            is_defended = record.get("defense") is not None
            cost = record.get("attack_cost") or {}
            rows.append(AuditRow(row_name, is_defended, record["accuracy"], record["stderr"], record["n_images"],
                                 record["attack"], budget_text(record["attack"]),
                                 float(cost.get("forward_per_image", 0.0)), float(cost.get("backward_per_image", 0.0)),
                                 float(record["seconds"]), record.get("worst_over_iterates"),
                                 record.get("iterate_accuracy")))
            if is_defended:
                defended.append(record)
            elif row_name.startswith("static"):
                static_base.append(record)
    cascade = bool(summary["config"].get("cascade"))
    if cascade:  # the rows cover different images: the protocol kept the standing images
        arrays = store.arrays(store.require(summary["key"]))
        worst_correct, outputs_correct = arrays["worst_over_iterates_correct"], arrays["worst_case_correct"]
    else:
        worst_correct = worst_case_correct(store, defended, per_image=correct_at_every_iterate)
        outputs_correct = worst_case_correct(store, defended)
    base_correct = worst_case_correct(store, static_base)
    worst, base = Accuracy.of(worst_correct), Accuracy.of(base_correct)
    outputs_only = Accuracy.of(outputs_correct)
    gain = paired_difference(worst_correct, base_correct)
    notes = [f"preset {preset}: {budget['claim']}", *target.notes]
    if n_images < recommended:
        notes.append(f"{n_images} images, fewer than the {recommended} the {preset} preset is meant for: "
                     f"the worst case's standard error is {100 * worst.stderr:.1f} points")
    notes.append("worst case: an image counts as robust only if it is correct clean, under every attacked row "
                 "and at every iterate of the defense where the defense exposes them (trajectory)")
    notes += [f"{name}: not run, no image was left standing" for name in summary.get("not_run", [])]
    flags = tuple(AuditFlag(f["flag"], bool(f["fired"]), f["detail"]) for f in summary["flags"])
    return AuditReport(classifier=classifier_name, defense=describe_defense(defense), preset=preset,
                       preset_budget=jsonable(budget), eps=eps, norm=norm, n_images=n_images, rows=tuple(rows),
                       worst_case_accuracy=worst.value, worst_case_stderr=worst.stderr,
                       worst_case_outputs_only=outputs_only.value, undefended_robust_accuracy=base.value,
                       undefended_robust_stderr=base.stderr, defense_gain=gain.diff,
                       defense_gain_stderr=gain.se_paired, flags=flags, randomness=summary["randomness"],
                       notes=tuple(notes), seconds=float(sum(r.seconds for r in rows)), out=out, cascade=cascade)


__all__ = ["audit", "budget_text"]
