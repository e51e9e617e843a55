"""The RIDE experiment's tables, figures and Markdown report, from its records."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from advrepair.errors import InputError  # noqa: E402
from advrepair.report.figures import save_figure  # noqa: E402
from advrepair.evaluation.harness import CLEAN  # noqa: E402
from advrepair.evaluation.metrics import paired_difference  # noqa: E402
from advrepair.evaluation.store import ResultsStore  # noqa: E402
from advrepair.report.tables import accuracy_cell  # noqa: E402
from advrepair.apps.experiments.ride.config import DEFENSE_ORDER



# -- report -----------------------------------------------------------------------------------
def _pct(rec: dict[str, Any] | None) -> str:
    return accuracy_cell(rec, missing="-")


def _label(rec: dict[str, Any]) -> str:
    d = rec.get("defense")
    return "none" if d is None else str(d.get("label"))


def _attack_name(attack: dict[str, Any]) -> str:
    name = attack["name"]
    if name == "pgd":
        name = f"PGD-{attack.get('steps')}"
    elif name != CLEAN:
        name = name.upper()
    else:
        name = "Clean"
    return name + (" (BPDA-I)" if attack.get("through") == "bpda" else "")


def _table(records: list[dict[str, Any]], title_col: str) -> str:
    """The main tables: no defense first, then the defenses in ``DEFENSE_ORDER``."""
    labelled = [(_label(r), r) for r in records]
    present = {label for label, _ in labelled}
    return _labelled_table(labelled, title_col, ["none", *[d for d in DEFENSE_ORDER if d in present]])


def _sweep_figure(sweep: list[dict[str, Any]], stop: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for rec in sweep:
        ax.errorbar(rec["steps"], [100 * a for a in rec["accuracy"]], yerr=[100 * s for s in rec["stderr"]],
                    marker="o", capsize=2, label=f"{_attack_name(rec['attack'])}, K={rec['iterations']}")
    ax.axvline(stop["steps"], color="gray", ls="--", label=f"chosen stop ({stop['steps']} steps)")
    ax.set_xlabel("RIDE Adam steps (t * K)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Accuracy of f(RIDE(x_adv)) vs iterations (cf. Fig. 5a)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _trajectory_figure(sweep: list[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    k_max = max(r["iterations"] for r in sweep)
    for rec in (r for r in sweep if r["iterations"] == k_max):
        name = _attack_name(rec["attack"])
        line, = ax.plot(rec["trajectory_steps"], rec["to_clean"], label=f"{name}: to clean")
        ax.plot(rec["trajectory_steps"], rec["to_adv"], ls="--", color=line.get_color(), label=f"{name}: to adversarial")
        ax.axhline(rec["clean_to_adv"], ls=":", color=line.get_color(), lw=0.8)
    ax.set_xlabel("RIDE Adam steps")
    ax.set_ylabel("mean L2 distance of the estimate")
    ax.set_title(f"Estimate trajectory, K={k_max} (cf. Figs. 2e / 6); dotted: L2(x_adv, x)", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _labelled_table(labelled: list[tuple[str, dict[str, Any]]], title_col: str,
                    rows: list[str] | None = None) -> str:
    """One row per label (``rows``: which and in what order; default: as they come), one
    column per attack."""
    cols = list(dict.fromkeys(_attack_name(r["attack"]) for _, r in labelled))
    cells = {(label, _attack_name(r["attack"])): r for label, r in labelled}
    rows = rows if rows is not None else list(dict.fromkeys(label for label, _ in labelled))
    lines = [f"| {title_col} | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines += [f"| {row} | " + " | ".join(_pct(cells.get((row, c))) for c in cols) + " |" for row in rows]
    return "\n".join(lines)


def _param_figure(params: list[dict[str, Any]], path: Path) -> Path:
    names = list(dict.fromkeys(r["param"] for r in params))
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for attack in dict.fromkeys(_attack_name(r["attack"]) for r in params):
            rs = sorted((r for r in params if r["param"] == name and _attack_name(r["attack"]) == attack),
                        key=lambda r: r["value"])
            ax.errorbar([r["value"] for r in rs], [100 * r["accuracy"] for r in rs],
                        yerr=[100 * r["stderr"] for r in rs], marker="o", capsize=2, label=attack)
        ax.set_xlabel("n (noisy copies per step)" if name == "batch" else name)
        ax.set_ylabel("validation accuracy (%)")
        ax.legend(fontsize=8)
    fig.suptitle("RIDE's arguments (cf. Figs. 5b-d)")
    return save_figure(fig, path)


def _paired_lines(store: ResultsStore, gray: list[dict[str, Any]]) -> list[str]:
    """RIDE against no defense and against the best baseline, per image on the same images."""
    cells = {(_label(r), _attack_name(r["attack"])): r for r in gray}
    attacks = list(dict.fromkeys(_attack_name(r["attack"]) for r in gray))
    out = []
    for other in ("none", "tv", "median-3x3"):
        parts = []
        for attack in attacks:
            a, b = cells.get(("ride", attack)), cells.get((other, attack))
            if a is None or b is None:
                continue
            d = paired_difference(store.arrays(a)["correct"].astype(bool), store.arrays(b)["correct"].astype(bool))
            parts.append(f"{attack} {100 * d.diff:+.1f} ± {100 * d.se_paired:.1f}")
        if parts:
            out.append(f"- RIDE - {other}: " + ", ".join(parts))
    return ["Paired differences in points (same images, paired s.e.):", "", *out, ""] if out else []


def _paper_section(store: ResultsStore, paper: list[dict[str, Any]], subset: str, stop: dict[str, Any],
                   budget: list[Any]) -> list[str]:
    """RIDE at the paper's budget beside the chosen stop, paired on the same images."""
    iterations, checkpoints, lr = budget
    cells = {(_label(r), _attack_name(r["attack"])): r for r in paper}
    attacks = list(dict.fromkeys(_attack_name(r["attack"]) for r in paper))
    lines = [f"## RIDE at the paper's budget (K = {iterations} x T = {checkpoints}, lr {lr:g})", "",
             f"{subset}. The gray-box attacks above; `ride` is the chosen stop ({stop['steps']} steps at this "
             f"run's learning rate), `ride-paper` the paper's {iterations * checkpoints} steps.", "",
             _labelled_table([(_label(r), r) for r in paper], "Defense", ["none", "ride", "ride-paper"]), "",
             "Paired differences in points (same images, paired s.e.):", ""]
    for other in ("ride", "none"):
        parts = []
        for attack in attacks:
            a, b = cells.get(("ride-paper", attack)), cells.get((other, attack))
            if a is not None and b is not None:
                d = paired_difference(store.arrays(a)["correct"].astype(bool), store.arrays(b)["correct"].astype(bool))
                parts.append(f"{attack} {100 * d.diff:+.1f} ± {100 * d.se_paired:.1f}")
        lines.append(f"- ride-paper - {other}: " + ", ".join(parts))
    seconds: dict[str, list[float]] = {}
    for (label, attack), r in cells.items():
        if label != "none" and attack != "Clean" and "defense_seconds" in r:
            seconds.setdefault(label, []).append(r["defense_seconds"] / max(1, r["n_images"]))
    if seconds:
        lines += ["", "Seconds per image (the defense alone, mean over the attacks): "
                  + ", ".join(f"{label} {sum(v) / len(v):.2f}" for label, v in seconds.items()) + "."]
    return lines + [""]


def _modes_section(modes: list[dict[str, Any]], subset: str, path: Path, budget: str = "the sweep's K and T"
                   ) -> list[str]:
    """Fig. 5a: DIP, I-DIP, DAE and RIDE against the steps, on the same validation images."""
    fig, axes = plt.subplots(1, len({_attack_name(r["attack"]) for r in modes}), figsize=(10, 3.8), squeeze=False)
    names = list(dict.fromkeys(_attack_name(r["attack"]) for r in modes))
    lines = [f"## DIP, I-DIP, DAE and RIDE (cf. Fig. 5a){'' if budget.startswith('the sweep') else ', ' + budget}", "",
             f"{subset}. Each mode with {budget} (dropout at the paper's layers in every mode; DIP fits the "
             "adversarial image from fixed noise, I-DIP adds the interpolation, DAE fits noisy copies of the input, "
             "RIDE adds the interpolation to DAE). Accuracy after t * K steps.", "",
             "| Attack | mode | " + " | ".join(f"{st} steps" for st in modes[0]["steps"]) + " | s/image |",
             "|---|---|" + "---|" * len(modes[0]["steps"]) + "---|"]
    for r in modes:
        name = _attack_name(r["attack"])
        ax = axes[0][names.index(name)]
        ax.errorbar(r["steps"], [100 * a for a in r["accuracy"]], yerr=[100 * e for e in r["stderr"]], marker="o",
                    capsize=2, label=r["mode"])
        lines.append(f"| {name} | {r['mode']} | " + " | ".join(f"{100 * a:.1f}" for a in r["accuracy"])
                     + f" | {r['seconds'] / max(r['n_images'], 1):.2f} |")
    for name, ax in zip(names, axes[0]):
        ax.set_title(f"{name} images", fontsize=9)
        ax.set_xlabel("Adam steps (t * K)")
        ax.set_ylabel("validation accuracy (%)")
        ax.legend(fontsize=8)
    fig.suptitle("Dropout, DAE and interpolation (cf. Fig. 5a)"
                 + ("" if budget.startswith("the sweep") else f" at {budget}"), fontsize=10)
    save_figure(fig, path)
    return lines + ["", f"![modes]({path.name})", ""]


def _trace_section(traces: list[dict[str, Any]], path: Path) -> list[str]:
    """Figs. 2d-e: the classifier's scores and the estimate's distances along one image's fit."""
    fig, axes = plt.subplots(2, len(traces), figsize=(4.6 * len(traces), 6.4), squeeze=False)
    lines = ["## One image's fit: class scores and distances (cf. Figs. 2d-e)", "",
             f"The first validation image under {_attack_name(traces[0]['attack'])} (label {traces[0]['label']}, "
             f"classified as {traces[0]['adversarial_class']} after the attack). Top: the classifier's scores "
             "(logits) of the estimate at each checkpoint, true class green, adversarial class red, others gray. "
             "Bottom: L2 distance of the estimate to the clean (dist2gt) and to the adversarial image (dist2adv).", "",
             "| mode | steps | true class first on top at step | true class on top at the end | "
             "dist2gt min (step) | dist2gt end | dist2adv end |", "|---|---|---|---|---|---|---|"]
    for col, r in enumerate(traces):
        top, bottom = axes[0][col], axes[1][col]
        scores = r["scores"]
        for c in range(len(scores[0])):
            if c in (r["label"], r["adversarial_class"]):
                continue
            top.plot(r["steps"], [row[c] for row in scores], color="lightgray", lw=0.8)
        top.plot(r["steps"], [row[r["adversarial_class"]] for row in scores], color="red", label="adversarial class")
        top.plot(r["steps"], [row[r["label"]] for row in scores], color="green", label="true class")
        top.set_title(f"{r['mode']}: class scores", fontsize=9)
        top.set_xlabel("Adam steps")
        top.set_ylabel("logit")
        top.legend(fontsize=7)
        bottom.plot(r["trajectory_steps"], r["to_clean"], label="dist2gt")
        bottom.plot(r["trajectory_steps"], r["to_adv"], ls="--", label="dist2adv")
        bottom.set_title(f"{r['mode']}: distances", fontsize=9)
        bottom.set_xlabel("Adam steps")
        bottom.set_ylabel("L2 distance")
        bottom.legend(fontsize=7)
        on_top = [row.index(max(row)) == r["label"] for row in scores]
        first = next((st for st, ok in zip(r["steps"], on_top) if ok), None)
        tc = r["to_clean"]
        i_min = min(range(len(tc)), key=tc.__getitem__)
        lines.append(f"| {r['mode']} | {r['steps'][-1]} | {'never' if first is None else first} | "
                     f"{'yes' if on_top[-1] else 'no'} | {tc[i_min]:.3f} ({r['trajectory_steps'][i_min]}) | "
                     f"{tc[-1]:.3f} | {r['to_adv'][-1]:.3f} |")
    save_figure(fig, path)
    return lines + ["", f"![one image's fit]({path.name})", ""]


def _bpda_section(fig7: list[dict[str, Any]], path: Path) -> list[str]:
    """Fig. 7: BPDA's adversarial and defended images, distances and accuracies per defense."""
    r0 = fig7[0]
    lines = ["## What BPDA produces (cf. Fig. 7)", "",
             f"{r0['subset']}: PGD-{r0['attack']['steps']} (eps {r0['attack']['eps']:g}) through BPDA(defense) with "
             "the identity backward, then the defense once more. Mean absolute pixel difference on the 0-255 scale "
             "(± s.d. over images), and the classifier's accuracy on the adversarial and on the defended images.",
             "", "| Defense | adv-to-clean | defended-to-adv | defended-to-clean | accuracy on adv (%) | "
             "accuracy on defended (%) | images |", "|---|---|---|---|---|---|---|"]
    for r in fig7:
        # one image has no standard deviation (stored as null)
        cells = " | ".join(f"{r['mean_' + k]:.2f}" + ("" if r["sd_" + k] is None else f" ± {r['sd_' + k]:.2f}")
                           for k in ("adv_to_clean", "defended_to_adv", "defended_to_clean"))
        lines.append(f"| {r['label']} | {cells} | {100 * r['accuracy_adversarial']:.1f} ± "
                     f"{100 * r['stderr_adversarial']:.1f} | {100 * r['accuracy_defended']:.1f} ± "
                     f"{100 * r['stderr_defended']:.1f} | {r['n_images']} |")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    kinds = ("adv_to_clean", "defended_to_adv", "defended_to_clean")
    width = 0.8 / len(fig7)
    for i, r in enumerate(fig7):
        left.bar([k + i * width for k in range(len(kinds))], [r["mean_" + k] for k in kinds], width,
                 yerr=[float("nan") if r["sd_" + k] is None else r["sd_" + k] for k in kinds], capsize=2, label=r["label"])
        right.bar([k + i * width for k in range(2)], [100 * r["accuracy_adversarial"], 100 * r["accuracy_defended"]],
                  width, yerr=[100 * r["stderr_adversarial"], 100 * r["stderr_defended"]], capsize=2, label=r["label"])
    left.set_xticks([k + 0.4 - width / 2 for k in range(len(kinds))], ["adv-clean", "defended-adv", "defended-clean"])
    left.set_ylabel("mean |difference| (0-255)")
    left.set_title("(a) distances", fontsize=9)
    right.set_xticks([k + 0.4 - width / 2 for k in range(2)], ["adversarial", "defended"])
    right.set_ylabel("accuracy (%)")
    right.set_ylim(0, 100)
    right.set_title("(b) top-1 accuracy", fontsize=9)
    right.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("After BPDA PGD through each defense (cf. Fig. 7)", fontsize=10)
    save_figure(fig, path)
    return lines + ["", f"![BPDA analysis]({path.name})", ""]


def write_ride_report(out_dir: str | os.PathLike[str], wall_seconds: float | None = None,
                      records_added: int | None = None) -> Path:
    """``report.md``, ``ride_iterations.png`` and ``ride_trajectory.png`` from ``out_dir``'s store.

    Uses the newest ``ride-summary`` record; raises InputError when there is none.

    Example:
        >>> write_ride_report("/tmp/runs/ride")
    """
    out = Path(out_dir)
    store = ResultsStore(out, resume=True)
    summaries = store.of_kind("ride-summary")
    if not summaries:
        raise InputError(f"{out / 'results.json'} has no ride-summary record: run run_ride_experiment first")
    s = summaries[-1]

    def recs(keys: list[str]) -> list[dict[str, Any]]:
        return [r for r in (store.get(k) for k in keys) if r is not None]

    sweep, gray, white = recs(s["sweep"]), recs(s["gray"]), recs(s["white"])
    cfg, stop = s["config"], s["stop"]
    fig_iter = _sweep_figure(sweep, stop, out / "ride_iterations.png")
    fig_traj = _trajectory_figure(sweep, out / "ride_trajectory.png")
    ride_recs = [r for r in gray if _label(r) == "ride" and r["attack"]["name"] != CLEAN]
    per_image = [r["defense_seconds"] / max(1, r["n_images"]) for r in ride_recs]
    gray_table = _table(gray, "Defense")
    white_table = _table(white, "Defense")
    all_steps = sorted({st for r in sweep for st in r["steps"]})
    lines = [
        "# RIDE on Fashion-MNIST (Lin, Pfister & Zhang)", "",
        f"Made by `advrepair experiment ride --n-images {cfg['n_images']} --val-images "
        f"{cfg['val_images']} --whitebox-images {cfg['whitebox_images']} "
        + (f"--paper-budget-images {cfg['paper_budget_images']} " if cfg.get("paper_budget_images") else "")
        + (f"--paper-budget-mode-images {cfg['paper_budget_mode_images']} "
           if cfg.get("paper_budget_mode_images") else "")
        + "--sweep-iterations "
        f"{','.join(str(k) for k in cfg['sweep_iterations'])} --sweep-checkpoints {cfg['sweep_checkpoints']} "
        f"--ride-lr {cfg['ride_lr']:g}` (the full configuration is in results.json's ride-summary record).", "",
        f"Classifier `{s['model']}` (SmallCNN, recipe {s.get('classifier_recipe')}); attacks L-inf eps = "
        f"{cfg['eps']}, PGD-{cfg['attack_steps']} step {cfg['attack_alpha'] or 2.5 * cfg['eps'] / cfg['attack_steps']:.4g} "
        f"with a seeded random start. RIDE mode `{cfg['ride_mode']}`, sigma {cfg['ride_sigma']}, alpha "
        f"{cfg['ride_alpha']}, Adam lr {cfg['ride_lr']}, seed {cfg['seed']}. Accuracies in % ± binomial "
        "standard error.", "",
        "## Iterations (cf. Fig. 5a)", "",
        f"{s['subsets']['validation']}. Accuracy after t * K Adam steps (step 0: no defense).", "",
        "| Attack | K | " + " | ".join(f"{st} steps" for st in all_steps) + " |",
        "|---|---|" + "---|" * len(all_steps),
    ]
    for r in sweep:
        by_step = dict(zip(r["steps"], r["accuracy"]))
        lines.append(f"| {_attack_name(r['attack'])} | {r['iterations']} | "
                     + " | ".join(f"{100 * by_step[st]:.1f}" if st in by_step else "-" for st in all_steps) + " |")
    lines += ["", f"**Chosen stop**: K = {stop['iterations']} x T = {stop['checkpoints']} = {stop['steps']} steps "
              f"(best mean validation accuracy, {100 * stop['validation_accuracy']:.1f}%).", "",
              f"![accuracy vs iterations]({fig_iter.name})", "",
              "## Gray-box (cf. Table 1)", "",
              f"{s['subsets']['gray']}. Attacks crafted on the undefended classifier; median "
              f"{cfg['median_kernel']}x{cfg['median_kernel']}, TV (Chambolle, weight {cfg['tv_weight']}), RIDE at the "
              "chosen stop.", "", gray_table, ""]
    lines += _paired_lines(store, gray)
    if per_image:
        lines += [f"RIDE cost: {sum(per_image) / len(per_image):.2f} s per image ({stop['steps']} steps).", ""]
    paper = recs(s.get("paper", []))
    if paper:
        lines += _paper_section(store, paper, s["subsets"]["paper"], stop, cfg["paper_budget"])
    lines += ["## White-box BPDA (cf. Table 2)", "",
              f"{s['subsets']['white']}. PGD-{cfg['attack_steps']} crafted on the classifier (static) and through "
              "BPDA(defense) with the identity backward (BPDA-I): every attack step refits RIDE.", "",
              white_table, "",
              "## Estimate trajectories (cf. Figs. 2e / 6)", "",
              "Mean L2 distance of the estimate to the clean and to the adversarial image along the fit "
              "(validation images); beside it the paper's measure, the mean absolute pixel difference on the "
              "0-255 scale, of the final estimate (L1/px).", "",
              "| Attack | K | to clean: start / min (step) / end | to adversarial: end | L2(x_adv, x) | "
              "L1/px estimate-clean | L1/px estimate-adv | L1/px x_adv-x |", "|---|---|---|---|---|---|---|---|"]
    for r in sweep:
        tc = r["to_clean"]
        i_min = min(range(len(tc)), key=tc.__getitem__)
        l1 = " | ".join(f"{r[k]:.2f}" if k in r else "-" for k in
                        ("l1_255_estimate_to_clean", "l1_255_estimate_to_adv", "l1_255_adv_to_clean"))
        lines.append(f"| {_attack_name(r['attack'])} | {r['iterations']} | {tc[0]:.3f} / {tc[i_min]:.3f} "
                     f"({r['trajectory_steps'][i_min]}) / {tc[-1]:.3f} | {r['to_adv'][-1]:.3f} | "
                     f"{r['clean_to_adv']:.3f} | {l1} |")
    lines += ["", f"![trajectory]({fig_traj.name})", ""]
    baselines = [(label, store.get(key)) for label, key in s.get("baselines", [])]
    if baselines:
        lines += ["## Baselines swept (cf. Tables 4-6)", "",
                  f"{s['subsets']['gray']}, the gray-box attacks above. Median filters of every kernel size; TV "
                  "denoising (no pixel dropout) at each weight with both solvers.", "",
                  _labelled_table([(label, r) for label, r in baselines if r is not None], "Defense"), ""]
    params = [{**found, "param": name, "value": value} for name, value, key in s.get("params", [])
              if (found := store.get(key)) is not None]
    if params:
        fig_params = _param_figure(params, out / "ride_parameters.png")
        lines += ["## RIDE's n, alpha and sigma (cf. Figs. 5b-d)", "",
                  f"{s['subsets']['validation']}. RIDE at the chosen stop ({stop['steps']} steps) with one argument "
                  f"changed (defaults n = 1, alpha = {cfg['ride_alpha']}, sigma = {cfg['ride_sigma']}); n is the "
                  "number of noisy copies per Adam step.", "",
                  "| Argument | Value | Attack | Accuracy | L1/px estimate-clean | seconds |", "|---|---|---|---|---|---|"]
        for r in params:
            lines.append(f"| {'n' if r['param'] == 'batch' else r['param']} | {r['value']:g} | "
                         f"{_attack_name(r['attack'])} | {_pct(r)} | {r['l1_255_estimate_to_clean']:.2f} | "
                         f"{r['seconds']:.0f} |")
        lines += ["", f"![parameters]({fig_params.name})", ""]
    modes = recs(s.get("modes", []))
    if modes:
        lines += _modes_section(modes, s["subsets"]["validation"], out / "ride_modes.png")
    paper_modes = recs(s.get("paper_modes", []))
    if paper_modes:
        iterations, checkpoints, lr = cfg["paper_budget"]
        lines += _modes_section(paper_modes, s["subsets"]["paper_modes"], out / "ride_modes_paper_budget.png",
                                f"the paper's budget (K = {iterations} x T = {checkpoints}, lr {lr:g})")
    traces = recs(s.get("traces", []))
    if traces:
        lines += _trace_section(traces, out / "ride_scores.png")
    fig7 = recs(s.get("fig7", []))
    if fig7:
        lines += _bpda_section(fig7, out / "ride_bpda_analysis.png")
    if wall_seconds is not None:
        lines.append(f"This run: {wall_seconds:.0f} s, {records_added} new records.")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

