"""The report folder: tables (markdown) and figures (PNG) from results.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from advrepair.errors import InputError
from advrepair.durable import write_text_durably
from advrepair.evaluation.store import ResultsStore
from advrepair.evaluation.worst_case import worst_case
from advrepair.report.figures import (accuracy_bars, image_grid, iterate_accuracy_figure, lambda_sweep_figure,
                                      ssl_loss_histogram)
from advrepair.report.tables import accuracy_table, adaptive_table, attack_label, cost_table


def _strongest_attack(records: list[dict[str, Any]], model: str) -> dict[str, Any] | None:
    attacked = [r for r in records if r["model"] == model and not r.get("defense") and r["attack"]["name"] != "clean"]
    return min(attacked, key=lambda r: r["accuracy"]) if attacked else None


def _worst_case_section(store: ResultsStore, records: list[dict[str, Any]]) -> str:
    """Per model and defense: the per-image worst case over every attack in the results."""
    lines = []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if r["attack"].get("name") != "clean":
            groups.setdefault((r["model"], (r.get("defense") or {}).get("label", "none")), []).append(r)
    for (model, defense), rs in groups.items():
        try:
            acc = worst_case(store, rs)
        except ValueError:
            continue
        names = ", ".join(attack_label(r["attack"]) for r in rs)
        lines.append(f"| {model} | {defense} | {100 * acc.value:.1f} ± {100 * acc.stderr:.1f} | {acc.n} | {names} |")
    if not lines:
        return ""
    head = ["\n### Per-image worst case over the attacks above\n",
            "| Model | Defense | Accuracy (%) | Images | Attacks |", "|---|---|---|---|---|"]
    return "\n".join(head + lines) + "\n"


def _adaptive_section(store: ResultsStore, out: Path) -> tuple[list[str], list[Path]]:
    """One table per adaptive-protocol summary, its lambda sweep (mao2021 Figure 4) and the
    accuracy along the defense's iterates."""
    summaries = store.of_kind("adaptive-summary")
    if not summaries:
        return [], []
    parts = ["\n## Adaptive evaluation: attacks that see the defense\n",
             "Each row attacks the same images with the same budget; the per-image worst case counts an image as "
             "robust only if it survived every row. This, not the static table above, is the defense's robustness "
             "under the strongest attack we ran.\n"]
    figures: list[Path] = []
    for summary in summaries:
        rows = {name: [r for k in keys if (r := store.get(k)) is not None] for name, keys in summary["rows"].items()}
        order = ["clean", "static", "bpda", "bpda-short", "bpda-eot", "full-gradient"]
        rows = {name: rows[name] for name in sorted(rows, key=lambda n: (
            order.index(n) if n in order else len(order) + (n == "square"),
            float(n.rsplit("-", 1)[1]) if n.startswith("defense-aware-") else 0.0)) if rows[name]}
        parts.append(adaptive_table(summary, rows))
        slug = f"{summary['model']}".replace("/", "_")
        if summary.get("lambda_sweep"):
            figures.append(lambda_sweep_figure(summary["lambda_sweep"], out / f"lambda_sweep_{slug}.png",
                                               f"{summary['model']}: defense-aware PGD, n={summary['n_images']}"))
        curves = [(name, d["iterate_accuracy"]) for name, rs in rows.items() for d in rs if d.get("iterate_accuracy")
                  and not name.startswith("defense-aware") and name != "bpda-short"]
        if curves:
            figures.append(iterate_accuracy_figure(curves, out / f"defense_iterates_{slug}.png",
                                                   f"{summary['model']} + {summary['defense']['label']}: accuracy "
                                                   f"along the defense's iterates, n={summary['n_images']}"))
    return parts, figures


def write_report(out_dir: str | Path, title: str = "advrepair report") -> Path:
    """Write ``report.md`` (tables) and PNG figures into ``out_dir``; returns report.md's path.

    Raises:
        InputError: ``out_dir`` holds no results.json (nothing to report; nothing is created).
    """
    if not (Path(out_dir) / "results.json").is_file():
        raise InputError(f"no results.json in {out_dir}: run an evaluation into that folder first")
    store = ResultsStore(out_dir, resume=True)
    records = [r for r in store.records if "kind" not in r and "protocol" not in r]
    out = Path(out_dir)
    parts = [f"# {title}\n", "## Accuracy\n", accuracy_table(records), _worst_case_section(store, records),
             "\n## Cost\n", cost_table(records)]
    adaptive_parts, figures = _adaptive_section(store, out)
    parts += adaptive_parts
    if records:
        figures.append(accuracy_bars(records, out / "accuracy_bars.png"))
    panels: list[dict[str, Any]] = []
    grid_rows: list[tuple[str, Any]] = []
    for model in dict.fromkeys(r["model"] for r in records):
        worst = _strongest_attack(records, model)
        if worst is None:
            continue
        defended = [r for r in records if r["model"] == model and r.get("defense") and r["attack"] == worst["attack"]]
        clean = [r for r in records if r["model"] == model and r.get("defense") and r["attack"]["name"] == "clean"]
        if not defended:
            continue
        arr = store.arrays(defended[0])
        clean_arr = store.arrays(clean[0]) if clean else {}
        if "ssl_loss_input" in arr:
            panels.append({"title": model, "attack": attack_label(worst["attack"]),
                           "clean": clean_arr.get("ssl_loss_input"), "attacked": arr["ssl_loss_input"],
                           "repaired": arr["ssl_loss_repaired"]})
        rep_key = next((k for k in arr if k.startswith("repaired_")), None)
        if rep_key and not grid_rows:
            grid_rows = [("clean", arr["clean"]), (f"{attack_label(worst['attack'])}", arr["input"]),
                         ("repaired", arr[rep_key]), ("difference\nrepaired-attacked", arr[rep_key] - arr["input"])]
            figures.append(image_grid(grid_rows, out / "repair_examples.png",
                                      f"{model}: clean, attacked, repaired, and the repair's change"))
    if panels:
        figures.append(ssl_loss_histogram(panels, out / "ssl_loss_histogram.png"))
    if figures:
        parts.append("\n## Figures\n")
        parts += [f"![{f.stem}]({f.name})\n" for f in figures]
    path = out / "report.md"
    write_text_durably(path, "\n".join(parts))
    write_text_durably(out / "table.md", accuracy_table(records))
    return path
