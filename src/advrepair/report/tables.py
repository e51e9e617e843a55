"""Markdown tables shaped like mao2021 Table 1: for each attack, Standard | Repaired."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any


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


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "n/a"
    return f"{100 * r['accuracy']:.1f} ± {100 * r['stderr']:.1f}"


def accuracy_table(records: list[dict[str, Any]], defense_label: str | None = None) -> str:
    """Rows = models, columns = attacks x (Standard, Repaired), cells = accuracy ± s.e. (%)."""
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
    lines = ["| Model | Attack | Defense | attack s/img | defense s/img | attack fwd/img | attack bwd/img |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        n = max(r["n_images"], 1)
        cost = r.get("attack_cost", {})
        lines.append(f"| {r['model']} | {attack_label(r['attack'])} | {(r.get('defense') or {}).get('label', '-')} "
                     f"| {r['attack_seconds'] / n:.4f} | {r['defense_seconds'] / n:.4f} "
                     f"| {cost.get('forward_per_image', 0):.1f} | {cost.get('backward_per_image', 0):.1f} |")
    return "\n".join(lines) + "\n"
