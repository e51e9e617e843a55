"""Markdown tables shaped like mao2021 Table 1: for each attack, Standard | Repaired."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from advrepair.errors import InputError


def _check_records(records: Any, keys: tuple[str, ...], table: str) -> None:
    """Refuse anything but a list of result records carrying ``keys`` (what the table reads)."""
    if not isinstance(records, (list, tuple)):
        raise InputError(f"{table} needs a list of result records, got {type(records).__name__}")
    for i, r in enumerate(records):
        missing = [k for k in keys if k not in r] if isinstance(r, dict) else list(keys)
        if missing:
            raise InputError(f"{table}: record {i} is not a result record (missing {missing})")

DISPLAY_NAMES = {"autoattack": "AutoAttack", "apgd-ce": "APGD-CE", "apgd-dlr": "APGD-DLR", "apgd-t": "APGD-T",
                 "fab-t": "FAB-T", "square": "Square", "hopskipjump": "HopSkipJump", "cw-pgd": "C&W",
                 "mifgsm": "MI-FGSM", "difgsm": "DI-FGSM", "tifgsm": "TI-FGSM"}


def attack_label(attack: dict[str, Any]) -> str:
    name = attack.get("name", "?")
    if name == "clean":
        return "Clean"
    if name == "transfer":
        return f"{attack_label(attack.get('attack', {}))} from {attack.get('source')}"
    steps = attack.get("steps")
    label = DISPLAY_NAMES.get(name, name.upper())
    label = f"{label}-{steps}" if name not in ("fgsm", "autoattack") and steps else label
    through = attack.get("through")
    return f"{label} through {through.upper() if through == 'bpda' else 'the defense'}" if through else label


def attack_description(attack: dict[str, Any]) -> str:
    if attack.get("name") == "clean":
        return "no attack"
    skip = {"name", "seed", "through"}
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(attack.items()) if k not in skip)


def defense_description(defense: dict[str, Any] | None) -> str:
    if not defense:
        return "none"
    parts = []
    for k, v in sorted(defense.items()):
        if k in ("label", "name"):
            continue
        if k == "tasks":
            v = "; ".join(f"{t.get('task')} x{_fmt(t.get('weight'))} (tau={_fmt(t.get('tau'))}, "
                          f"views={t.get('n_views')})" for t in v)
        parts.append(f"{k}={_fmt(v)}")
    return f"{defense.get('name', defense.get('label'))}: " + ", ".join(parts)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def accuracy_cell(r: dict[str, Any] | None, missing: str = "n/a") -> str:
    """A record's accuracy as "ab.c ± d.e" (%), or ``missing`` when there is no record."""
    if r is None:
        return missing
    return f"{100 * r['accuracy']:.1f} ± {100 * r['stderr']:.1f}"


_cell = accuracy_cell


def accuracy_table(records: list[dict[str, Any]], defense_label: str | None = None) -> str:
    """Rows = models, columns = attacks x (Standard, Repaired), cells = accuracy ± s.e. (%)."""
    _check_records(records, ("model", "attack", "dataset"), "accuracy_table")
    if not records:
        return "_no results_\n"
    defenses = sorted({r["defense"]["label"] for r in records if r.get("defense")})
    label = defense_label or (defenses[0] if defenses else None)
    attacks: "OrderedDict[str, dict[str, Any]]" = OrderedDict()
    models: list[str] = []
    for r in records:
        attacks.setdefault(attack_label(r["attack"]), r["attack"])
        if r["model"] not in models:
            models.append(r["model"])
    index = {(r["model"], attack_label(r["attack"]), (r.get("defense") or {}).get("label")): r for r in records}
    header = ["Model"]
    for a in attacks:
        header += [f"{a} Standard", f"{a} Repaired"] if label else [a]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ns = set()
    for m in models:
        row = [m]
        for a in attacks:
            std = index.get((m, a, None))
            row.append(_cell(std))
            if label:
                row.append(_cell(index.get((m, a, label))))
            if std:
                ns.add(std["n_images"])
        lines.append("| " + " | ".join(row) + " |")
    notes = [f"Accuracy in % ± binomial standard error, on {', '.join(map(str, sorted(ns)))} test images "
             f"of {records[0]['dataset']} ({records[0].get('subset') or 'in order'})."]
    notes.append("Attacks are crafted on the undefended classifier (static threat model, mao2021 Table 1). "
                 "No attack here sees the defense: 'Repaired' is not robustness against an adaptive attacker.")
    for a, desc in attacks.items():
        notes.append(f"- {a}: {attack_description(desc)}")
    if label:
        d = next(r["defense"] for r in records if r.get("defense") and r["defense"]["label"] == label)
        notes.append(f"- Repaired: {defense_description(d)}")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def cost_table(records: list[dict[str, Any]]) -> str:
    """Seconds per image and passes per image of each attack and defense."""
    _check_records(records, ("model", "attack", "n_images", "attack_seconds", "defense_seconds"), "cost_table")
    lines = ["| Model | Attack | Defense | attack s/img | defense s/img | attack fwd/img | attack bwd/img |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        n = max(r["n_images"], 1)
        cost = r.get("attack_cost", {})
        lines.append(f"| {r['model']} | {attack_label(r['attack'])} | {(r.get('defense') or {}).get('label', '-')} "
                     f"| {r['attack_seconds'] / n:.4f} | {r['defense_seconds'] / n:.4f} "
                     f"| {cost.get('forward_per_image', 0):.1f} | {cost.get('backward_per_image', 0):.1f} |")
    return "\n".join(lines) + "\n"


ADAPTIVE_ROW_TITLES = {
    "clean": "Clean (no attack)",
    "static": "Static: PGD on the classifier, transferred into the defense",
    "bpda": "BPDA (identity backward)",
    "bpda-short": "BPDA, fewer steps",
    "bpda-eot": "BPDA + EOT",
    "full-gradient": "Full gradient through the unrolled defense",
    "square": "Square (scores only)",
}


def adaptive_table(summary: dict[str, Any], rows: dict[str, list[dict[str, Any]]]) -> str:
    """The adaptive protocol's table for one model and defense: each row's attack, its
    parameters, accuracy without and with the defense, the worst case over the defense's
    iterates, and the cost; then the per-image worst case and the reliability flags."""
    lines = [f"#### {summary['model']} + {summary['defense']['label']} ({summary['n_images']} images)\n",
             "| Attack | Crafted on | Parameters | No defense (%) | With defense (%) | Worst over defense iterates (%) "
             "| s/img | fwd/img | bwd/img |", "|---|---|---|---|---|---|---|---|---|"]
    for name, recs in rows.items():
        base = next((r for r in recs if not r.get("defense")), None)
        defended = next(r for r in recs if r.get("defense"))
        attack = defended["attack"]
        title = ADAPTIVE_ROW_TITLES.get(name, f"Defense-aware PGD, lambda_s = {defended.get('lambda_s', '?')}"
                                        if name.startswith("defense-aware") else name)
        params = attack_description({k: v for k, v in attack.items() if k not in ("adaptive_row", "crafted_on")})
        it = defended.get("worst_over_iterates")
        n = max(defended["n_images"], 1)
        cost = defended.get("attack_cost", {})
        lines.append(f"| {title} | {attack.get('crafted_on', '-')} | {params} | {_cell(base) if base else '-'} "
                     f"| {_cell(defended)} | {'-' if it is None else f'{100 * it:.1f}'} "
                     f"| {defended['seconds'] / n:.3f} | {cost.get('forward_per_image', 0):.0f} "
                     f"| {cost.get('backward_per_image', 0):.0f} |")
    wc, wi = summary["worst_case"], summary["worst_over_iterates"]
    lines.append(f"| **Per-image worst case** | all rows above | - | - | **{100 * wc['accuracy']:.1f} ± "
                 f"{100 * wc['stderr']:.1f}** | {100 * wi['accuracy']:.1f} ± {100 * wi['stderr']:.1f} "
                 f"| {summary['seconds'] / max(summary['n_images'], 1):.3f} | | |")
    notes = ["", f"Accuracy in % ± binomial standard error on {summary['n_images']} images of {summary['dataset']} "
                 f"({summary.get('subset') or 'in order'}). The 'With defense' column scores the deployed "
                 "(seeded) defense once per image."]
    rnd = summary.get("randomized_clean")
    if rnd:
        notes.append(f"Clean accuracy of the unseeded defense over {rnd['draws']} draws: mean "
                     f"{100 * rnd['mean_accuracy']:.1f}%, correct on every draw {100 * rnd['all_draws_accuracy']:.1f}%.")
    notes.append("Worst over defense iterates: an image counts as correct only if the classifier is right at every "
                 "iterate of the defense's own optimization (what an attacker gets if the defense may stop early).")
    notes.append(f"Defense: {defense_description(summary['defense'])}")
    notes += [f"Note: {n_}" for n_ in summary.get("notes", [])]
    notes.append("\nReliability flags:\n")
    notes += [f"- {'**FIRED**' if f['fired'] else 'ok'} {f['flag']}: {f['detail']}" for f in summary["flags"]]
    return "\n".join(lines + notes) + "\n"
