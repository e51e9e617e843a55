"""The mao2021 report: every table and figure from the stored records of the run's stages."""
from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from advrepair.apps.experiments.mao2021.config import Mao2021Config  # noqa: E402
from advrepair.evaluation.metrics import Accuracy, Difference, paired_difference  # noqa: E402
from advrepair.evaluation.store import ResultsStore, jsonable  # noqa: E402
from advrepair.report.figures import image_grid, lambda_sweep_figure, ssl_loss_histogram  # noqa: E402
from advrepair.adaptive.defense_aware import sweep_entry  # noqa: E402

REPAIR, NOISE = "reverse-attack", "random-noise"
PCT = 100.0


def _acc(r: dict[str, Any] | None) -> str:
    if r is None:
        return "n/a"
    return f"{PCT * r['accuracy']:.1f} ± {PCT * r['stderr']:.1f}"


def _correct(store: ResultsStore, r: dict[str, Any]) -> np.ndarray:
    return store.arrays(r)["correct"].astype(bool)


def _diff(store: ResultsStore, a: dict[str, Any] | None, b: dict[str, Any] | None) -> Difference | None:
    if a is None or b is None:
        return None
    return paired_difference(_correct(store, a), _correct(store, b))


def _diff_text(d: Difference | None) -> str:
    if d is None:
        return "n/a"
    mark = " *" if d.exceeds_2se else ""
    return f"{PCT * d.diff:+.1f} ± {PCT * d.se_paired:.1f}{mark}"


def _budget(r: dict[str, Any]) -> str:
    a = r["attack"]
    if a.get("name") == "clean":
        return "-"
    parts = [f"{a.get('norm', 'Linf')} eps {a.get('eps'):g}"]
    for key, label in (("steps", "steps"), ("alpha", "step"), ("n_queries", "queries")):
        if a.get(key) is not None:
            parts.append(f"{label} {a[key]:g}" if isinstance(a[key], float) else f"{label} {a[key]}")
    if a.get("name") == "autoattack":
        parts.append(f"version {a.get('version')}")
    return ", ".join(parts)


def _attack_table(store: ResultsStore, table: dict[str, dict[str | None, dict[str, Any]]], n_note: str) -> list[str]:
    lines = ["| attack | budget | standard | + reverse attack | + random noise (same eps_v) | repair - standard "
             "(paired) | repair - noise (paired) |", "|---|---|---|---|---|---|---|"]
    for title, cells in table.items():
        std, rep, noise = cells.get(None), cells.get(REPAIR), cells.get(NOISE)
        if std is None:
            continue
        lines.append(f"| {title} | {_budget(std)} | {_acc(std)} | {_acc(rep)} | {_acc(noise)} | "
                     f"{_diff_text(_diff(store, rep, std))} | {_diff_text(_diff(store, rep, noise))} |")
    lines.append("")
    lines.append(f"Accuracy in % ± binomial s.e.; differences in points ± paired s.e. (* = beyond 2 s.e.); {n_note}.")
    return lines


def _n(table: dict[str, dict[str | None, dict[str, Any]]]) -> int:
    for cells in table.values():
        for r in cells.values():
            return int(r["n_images"])
    return 0


#: (report folder, figure) -> (fingerprint of the inputs, what drawing them returned), in this process
_DRAWN: dict[tuple[Path, str], tuple[str, Any]] = {}


def _fingerprint(inputs: Any) -> str:
    def exact(value: Any) -> Any:
        if isinstance(value, dict):  # keys of mixed types (None beside names): sorted by their repr
            return sorted([repr(k), exact(v)] for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return [exact(v) for v in value]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):  # by its bytes: repr() elides the middle of a large array
            return [value.dtype.str, value.shape, hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()]
        return value if isinstance(value, (str, int, float, bool)) or value is None else repr(value)

    return hashlib.sha256(json.dumps(exact(inputs)).encode()).hexdigest()


def _draw_once(out: Path, name: str, inputs: Any, draw: Callable[[], Any]) -> Any:
    """``draw()``, unless this process already drew figure ``name`` into ``out`` from the same
    inputs and its files are still there: the report is rewritten after every stage, and
    redrawing every figure each time cost more than the quick run's stages."""
    key, fingerprint = (out.resolve(), name), _fingerprint(inputs)
    if key in _DRAWN and _DRAWN[key][0] == fingerprint:
        drawn = _DRAWN[key][1]
        if all(p.exists() for p in (drawn if isinstance(drawn, list) else [drawn]) if p is not None):
            return drawn
    result = draw()
    _DRAWN[key] = (fingerprint, result)
    return result


def _figure(path: Path) -> Path:
    plt.tight_layout()
    plt.savefig(path, dpi=120)
    plt.close()
    return path


def fig5(results: dict[str, Any], out: Path) -> Path | None:
    """Accuracy at each repair step k (early stopping) and seconds per image."""
    table1, timing = results.get("table1", {}), results.get("timing", {})
    names = [m for m in table1 if m in timing]
    if not names:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4))
    for m in names:
        for title, cells in table1[m].items():
            rep = cells.get(REPAIR)
            if rep is None or not rep.get("iterate_accuracy") or title not in ("clean", _pgd_title(table1[m])):
                continue
            acc = PCT * np.array(rep["iterate_accuracy"])
            line, = axes[0].plot(range(len(acc)), acc, marker=".", label=f"{m}, {title}")
            axes[0].axhline(PCT * cells[None]["accuracy"], color=line.get_color(), linestyle="--", linewidth=0.8,
                            label=f"{m}, {title}, no defense")
        sec = timing[m]["seconds_per_image"]
        ks = sorted(int(k) for k in sec)
        axes[1].plot(ks, [1e3 * sec[str(k)] for k in ks], marker="o", label=m)
    axes[0].set_xlabel("repair steps k (early stopping; 0 = the random start)")
    axes[0].set_ylabel("accuracy (%)")
    axes[0].set_title("mao2021 Fig. 5: accuracy vs repair steps", fontsize=10)
    axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    axes[1].set_xlabel("repair steps k")
    axes[1].set_ylabel("ms per image (batched)")
    axes[1].set_title("repair time per image", fontsize=10)
    axes[1].legend(fontsize=7)
    return _figure(out / "fig5_accuracy_vs_steps.png")


def _pgd_title(table: dict[str, Any]) -> str:
    return next((t for t in table if t.startswith("PGD-")), "")


def fig6(results: dict[str, Any], out: Path) -> Path | None:
    curves = results.get("fig6", {})
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (m, by_eps) in zip(axes[0], curves.items()):
        eps = sorted(by_eps)
        for label, key, style in (("standard", None, "--o"), ("+ reverse attack", REPAIR, "-o"),
                                  ("+ random noise", NOISE, ":s")):
            acc = [PCT * by_eps[e][key]["accuracy"] for e in eps]
            err = [PCT * by_eps[e][key]["stderr"] for e in eps]
            ax.errorbar(eps, acc, yerr=err, fmt=style, capsize=3, label=label)
        r = by_eps[eps[0]][None]
        ax.set_title(textwrap.fill(f"{m}: PGD-{r['attack'].get('steps')} vs eps (n={r['n_images']})", 50), fontsize=10)
        ax.set_xlabel("attack eps (L-inf)")
        ax.set_ylabel("robust accuracy (%)")
        ax.legend(fontsize=8)
    return _figure(out / "fig6_accuracy_vs_eps.png")


def fig7(results: dict[str, Any], cfg: Mao2021Config, out: Path) -> Path | None:
    """Top: the paper's trade-off (clean vs robust accuracy, one point per eps_v); bottom: both
    accuracies against eps_v, where points that crowd the top panel separate."""
    curves = results.get("fig7", {})
    if not curves:
        return None
    fig, axes = plt.subplots(2, len(curves), figsize=(5.8 * len(curves), 9.6), squeeze=False)
    offsets = ((4, 4), (4, -11), (-26, 4), (-26, -11))
    for col, (m, rows) in enumerate(curves.items()):
        top, bottom = axes[0][col], axes[1][col]
        attacked_title = next(t for t in rows if t != "clean")
        clean, attacked = rows["clean"], rows[attacked_title]
        for kind, style, name in ((REPAIR, "-o", "reverse attack"), (NOISE, ":s", "random noise")):
            xs = [PCT * clean[f"{kind} {v:g}"]["accuracy"] for v in cfg.eps_v_sweep]
            ys = [PCT * attacked[f"{kind} {v:g}"]["accuracy"] for v in cfg.eps_v_sweep]
            top.plot(xs, ys, style, label=name)
            for i, (v, x, y) in enumerate(zip(cfg.eps_v_sweep, xs, ys)):
                top.annotate(f"{v:g}", (x, y), fontsize=7, textcoords="offset points",
                             xytext=offsets[i % len(offsets)])
            bottom.plot(cfg.eps_v_sweep, xs, style, label=f"{name}, clean")
            bottom.plot(cfg.eps_v_sweep, ys, style, alpha=0.6, label=f"{name}, {attacked_title}")
        top.plot([PCT * clean[None]["accuracy"]], [PCT * attacked[None]["accuracy"]], "k*", markersize=10,
                 label="no defense")
        for value, style, name in ((clean[None]["accuracy"], "--", "no defense, clean"),
                                   (attacked[None]["accuracy"], "-.", f"no defense, {attacked_title}")):
            bottom.axhline(PCT * value, color="k", linestyle=style, linewidth=0.8, label=name)
        top.set_xlabel("clean accuracy (%)")
        top.set_ylabel(f"{attacked_title} accuracy (%)")
        top.set_title(textwrap.fill(f"{m}: eps_v trade-off (point labels: eps_v; n={clean[None]['n_images']})", 50),
                      fontsize=10)
        top.legend(fontsize=8)
        bottom.set_xlabel("repair budget eps_v")
        bottom.set_ylabel("accuracy (%)")
        bottom.set_title(f"{m}: accuracy against eps_v", fontsize=10)
        bottom.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    return _figure(out / "fig7_eps_v_tradeoff.png")


def feature_statistics(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """mao2021 Sec. 4.6: distance of attacked (D_ca) and repaired (D_ci) features from the
    clean ones, over all images and over the triples whose repaired class is the clean class."""
    f_c, f_a = arrays["features_clean"], arrays["features_attacked"]
    f_r = arrays["features_iterates"][-1]
    d_ca, d_ci = np.linalg.norm(f_a - f_c, axis=1), np.linalg.norm(f_r - f_c, axis=1)
    same = arrays["pred_repaired"] == arrays["pred_clean"]
    out: dict[str, Any] = {"n": int(len(d_ca))}
    for name, mask in (("all", np.ones_like(same)), ("same class", same)):
        if mask.sum() < 2:
            continue
        d = d_ci[mask] - d_ca[mask]
        out[name] = {"n": int(mask.sum()), "mean_d_ca": float(d_ca[mask].mean()), "mean_d_ci": float(d_ci[mask].mean()),
                     "reduction": float(1 - d_ci[mask].mean() / max(d_ca[mask].mean(), 1e-12)),
                     "diff": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))),
                     "share_closer": float((d_ci[mask] < d_ca[mask]).mean())}
    return out


def fig8(results: dict[str, Any], out: Path) -> Path | None:
    panels = results.get("fig8", {})
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for ax, (m, (_, arrays)) in zip(axes[0], panels.items()):
        f_c, f_a, f_i = arrays["features_clean"], arrays["features_attacked"], arrays["features_iterates"]
        stacked = np.concatenate([f_c, f_a, f_i[-1]])
        mean = stacked.mean(0)
        _, _, vt = np.linalg.svd(stacked - mean, full_matrices=False)
        basis = vt[:2].T

        def proj(f: np.ndarray, mean: np.ndarray = mean, basis: np.ndarray = basis) -> np.ndarray:
            return (f - mean) @ basis
        broken = np.flatnonzero((arrays["pred_attacked"] != arrays["labels"]) & (arrays["pred_clean"] == arrays["labels"]))
        for i in broken[:12]:
            path = proj(np.concatenate([f_a[i:i + 1], f_i[:, i]]))
            ax.plot(path[:, 0], path[:, 1], "-", color="tab:blue", alpha=0.35, linewidth=0.8)
        for f, marker, color, label in ((f_c, "x", "tab:green", "clean"), (f_a, "s", "tab:red", "attacked (PGD)"),
                                        (f_i[-1], "o", "tab:blue", "repaired")):
            p = proj(f)
            ax.scatter(p[:, 0], p[:, 1], marker=marker, s=12, c=color, alpha=0.6, label=label)
        ax.set_title(textwrap.fill(f"{m}: penultimate features, PCA of {len(f_c)} images; lines: repair "
                                   f"trajectories of 12 attacked images", 55), fontsize=9)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=8, loc="best")
    return _figure(out / "fig8_feature_trajectories.png")


def fig3(store: ResultsStore, results: dict[str, Any], out: Path) -> list[Path]:
    """The demo's Fig. 3 (L_s on clean, attacked and repaired images) and repaired examples."""
    table1 = results.get("table1", {})
    panels, paths = [], []
    for m, rows in table1.items():
        pgd, clean = rows.get(_pgd_title(rows), {}).get(REPAIR), rows.get("clean", {}).get(REPAIR)
        if pgd is None or clean is None:
            continue
        a, c = store.arrays(pgd), store.arrays(clean)
        if "ssl_loss_input" not in a:
            continue
        panels.append({"title": m, "clean": c["ssl_loss_input"], "attacked": a["ssl_loss_input"],
                       "repaired": a["ssl_loss_repaired"], "attack": _pgd_title(rows)})
        if "clean" in a and f"repaired_{REPAIR}" in a:
            paths.append(image_grid([("clean", a["clean"]), (f"{_pgd_title(rows)}", a["input"]),
                                     ("repaired", a[f"repaired_{REPAIR}"])], out / f"fig3_examples_{m}.png",
                                    title=f"{m}: clean, attacked, repaired"))
    if panels:
        paths.insert(0, ssl_loss_histogram(panels, out / "fig3_ssl_loss.png"))
    return paths


def fig4_rows(store: ResultsStore, by_lambda: dict[float, dict[str | None, dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for lam, cells in sorted(by_lambda.items()):
        std, rep = cells[None], cells[REPAIR]
        rows.append(sweep_entry(lam, Accuracy.of(_correct(store, std)), Accuracy.of(_correct(store, rep)),
                                std["attack"], paired=_diff(store, rep, std)))
    return rows


def _answer(store: ResultsStore, results: dict[str, Any], cfg: Mao2021Config) -> list[str]:
    lines = ["## The answer", ""]
    table1 = results.get("table1", {})
    for m, rows in table1.items():
        diffs = [(t, _diff(store, c.get(REPAIR), c.get(None)), _diff(store, c.get(REPAIR), c.get(NOISE)))
                 for t, c in rows.items() if REPAIR in c]
        helps = [t for t, d, _ in diffs if d is not None and d.exceeds_2se and d.diff > 0]
        hurts = [t for t, d, _ in diffs if d is not None and d.exceeds_2se and d.diff < 0]
        lines.append(f"- **(a) static attacks, {m}:** the repair changes accuracy by "
                     + "; ".join(f"{t} {_diff_text(d)}" for t, d, _ in diffs)
                     + f" points (paired s.e.). Beyond 2 s.e.: helps on {helps or 'none'}, hurts on {hurts or 'none'}. "
                     + "Against noise of the same eps_v: "
                     + "; ".join(f"{t} {_diff_text(dn)}" for t, _, dn in diffs) + ".")
    audits = [(m, r) for key in ("audit", "audit_standard") for m, r in results.get(key, {}).items()]
    for m, reports in audits:
        rep, noise = reports.get(REPAIR), reports.get(NOISE)
        if rep is None:
            continue
        how = f"{rep.preset} preset{', cascade' if rep.cascade else ''}, {rep.n_images} images"
        text = (f"- **(b) the audit ({how}), {m}:** worst case with the repair "
                f"{PCT * rep.worst_case_accuracy:.1f} ± {PCT * rep.worst_case_stderr:.1f}% against "
                f"{PCT * rep.undefended_robust_accuracy:.1f} ± {PCT * rep.undefended_robust_stderr:.1f}% for the "
                f"classifier alone: gain {PCT * rep.defense_gain:+.1f} ± {PCT * rep.defense_gain_stderr:.1f} points "
                f"(paired)")
        if noise is not None:
            text += (f"; random noise of the same eps_v: worst case {PCT * noise.worst_case_accuracy:.1f}%, gain "
                     f"{PCT * noise.defense_gain:+.1f} ± {PCT * noise.defense_gain_stderr:.1f}")
        lines.append(text + ".")
    for m, explain in results.get("explain", {}).items():
        grid = explain["grid"]
        lines.append(f"- **What explains the old result ({m}, PGD-{cfg.scaled(20)}, sweep images):**")
        for combo, rows in grid.items():
            attacked = rows[next(t for t in rows if t != "clean")]
            parts = [f"eps_v {k.split()[-1]}: {_diff_text(_diff(store, attacked[k], attacked[None]))}"
                     for k in attacked if k is not None]
            lines.append(f"  - {combo}: standard {_acc(attacked[None])}; repair minus standard " + "; ".join(parts))
    if len(lines) == 2:
        lines.append("(no stage has finished yet)")
    return lines + [""]


def write_mao2021_report(cfg: Mao2021Config, store: ResultsStore, results: dict[str, Any], wall_seconds: float,
                         finished: bool) -> Path:
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    runs = [r for r in store.records if r.get("stage") == "mao2021-invocation"]
    lines = ["# mao2021 reproduced: the self-supervised reverse attack on " + cfg.dataset, "",
             f"Command: `{cfg.command_line()}` (it resumes: every row "
             "is a stored record in the --out folder).", "",
             f"Status: {'finished' if finished else 'partial: stages still to run are marked n/a or missing'}. "
             f"Wall time of this invocation {wall_seconds / 60:.1f} min; over the {len(runs)} recorded invocations "
             f"{sum(r['seconds_wall'] for r in runs) / 60:.1f} min (threads: {torch.get_num_threads()}).", "",
             f"Models: {', '.join(cfg.classifiers)} with heads {', '.join(cfg.heads or ('<zoo>-contrastive',))}. "
             f"Repair: the reverse attack, eps_v = {cfg.eps_v:g} (2 eps), K = {cfg.reverse_steps}, 4 views, "
             f"sign steps of 2.5 eps_v / K, seed {cfg.seed}. Control: uniform noise in the same eps_v ball "
             f"(the repair's own random start, no self-supervised step). Attacks are crafted on the undefended "
             f"classifier (the paper's Table 1 threat model) unless a row says otherwise.", ""]
    lines += _answer(store, results, cfg)
    for m, table in results.get("table1", {}).items():
        lines += [f"## Table 1 shape: {m} (L-inf eps {cfg.eps:g})", ""]
        lines += _attack_table(store, table, f"{_n(table)} class-balanced test images")
        lines.append("")
    for m, table in results.get("table5", {}).items():
        lines += [f"## Table 5 shape: {m} (L2 eps {cfg.l2_eps:g}, L2 repair eps_v {cfg.eps_v_factor * cfg.l2_eps:g})",
                  ""]
        lines += _attack_table(store, table, f"{_n(table)} images")
        lines += ["", f"Why L2 eps {cfg.l2_eps:g}: the paper's L2 budget (256/255 on 32x32x3 CIFAR-10) is 0.58 of "
                  "its L-inf budget (8/255) in per-pixel RMS; the same ratio on 28x28 Fashion-MNIST with L-inf 0.1 "
                  "gives 0.058 x 28 = 1.6, rounded down to 1.5 (the usual Fashion-MNIST L2 budget). The repair keeps "
                  "the paper's eps_v = 2 eps rule in L2. C&W (L2, 200 steps, c 1) is clipped to the ball: its "
                  "unbounded minimal perturbations beyond eps count as failures.", ""]
    figures: list[Path] = []
    for path, caption in ((_draw_once(out, "fig5", [results.get("table1"), results.get("timing")],
                                      lambda: fig5(results, out)),
                           "Fig. 5: accuracy against repair steps k, and time per image. The "
                           "accuracy at step k is the k-th iterate of the K-step repair (the same step size: early "
                           "stopping); the time is measured by running k steps."),
                          (_draw_once(out, "fig6", results.get("fig6"), lambda: fig6(results, out)),
                           "Fig. 6: PGD-20 accuracy against the attack's eps, with the repair "
                           "(eps_v fixed at 2 x 0.1), with noise of that budget and without a defense."),
                          (_draw_once(out, "fig7", [results.get("fig7"), cfg.to_dict()], lambda: fig7(results, cfg, out)),
                           "Fig. 7: the eps_v trade-off. Each point is one eps_v (label); the "
                           "star is the classifier alone."),
                          (_draw_once(out, "fig8", results.get("fig8"), lambda: fig8(results, out)),
                           "Fig. 8: PCA of the penultimate features.")):
        if path is not None:
            figures.append(path)
            lines += [f"![{path.stem}]({path.name})", "", caption, ""]
    for m, by_eps in results.get("fig6", {}).items():
        lines.append(f"- Fig. 6 points, {m} (attack eps: standard / + reverse attack / + random noise, %): "
                     + "; ".join(f"{e:g}: {PCT * by_eps[e][None]['accuracy']:.1f} / "
                                 f"{PCT * by_eps[e][REPAIR]['accuracy']:.1f} / {PCT * by_eps[e][NOISE]['accuracy']:.1f}"
                                 for e in sorted(by_eps)))
    for m, t in results.get("timing", {}).items():
        sec = t["seconds_per_image"]
        lines.append(f"- {m}: ms per image at k = " + ", ".join(f"{k}: {1e3 * v:.1f}" for k, v in sec.items())
                     + f" ({t['images']} images per batch, {t['threads']} threads, {t['device']}).")
    if results.get("timing"):
        lines.append("")
    for m, (_, arrays) in results.get("fig8", {}).items():
        st = feature_statistics(arrays)
        lines += [f"Fig. 8 statistic, {m} (the paper: D_ca > D_ci, about 10% closer):", "",
                  "| images | n | mean D_ca (clean-attacked) | mean D_ci (clean-repaired) | D_ci - D_ca ± s.e. | "
                  "repaired closer | reduction |", "|---|---|---|---|---|---|---|"]
        for name in ("all", "same class"):
            if name in st:
                s = st[name]
                lines.append(f"| {name} | {s['n']} | {s['mean_d_ca']:.3f} | {s['mean_d_ci']:.3f} | "
                             f"{s['diff']:+.3f} ± {s['se']:.3f} | {PCT * s['share_closer']:.0f}% | "
                             f"{PCT * s['reduction']:.1f}% |")
        lines.append("")
    paths3 = _draw_once(out, "fig3", results.get("table1"), lambda: fig3(store, results, out))
    if paths3:
        lines += ["## Fig. 3: the self-supervised loss, and repaired examples", ""]
        lines += [f"![{p.stem}]({p.name})" for p in paths3] + [""]
    aware = results.get("aware", {})
    if aware:
        lines += ["## Fig. 4: the defense-aware attack (Eq. 8), crafted on the classifier, then repaired", "",
                  "| model | attack | lambda_s | images | standard | + reverse attack | repair - standard (paired) |",
                  "|---|---|---|---|---|---|---|"]
        for m, plans in aware.items():
            for plan, by_lambda in plans.items():
                rows = fig4_rows(store, by_lambda)
                path = lambda_sweep_figure(rows, out / f"{plan}_{m}.png",
                                           title=f"{m}: defense-aware PGD-{rows[0]['attack'].get('steps')}, "
                                                 f"n={rows[0]['n_images']}")
                figures.append(path)
                for r in rows:
                    lines.append(f"| {m} | PGD-{r['attack'].get('steps')} on L_c - lambda L_s | {r['lambda_s']:g} | "
                                 f"{r['n_images']} | {PCT * r['accuracy_standard']:.1f} ± {PCT * r['stderr_standard']:.1f}"
                                 f" | {PCT * r['accuracy_repaired']:.1f} ± {PCT * r['stderr_repaired']:.1f} | "
                                 f"{_diff_text(r['paired'])} |")
        lines.append("")
        lines += [f"![{p.stem}]({p.name})" for p in figures if p.stem.startswith("fig4")] + [""]
    lines += _lawhon_section(store, results)
    lines += _audit_section(results)
    lines += _explain_section(store, results)
    lines += ["## Configuration", "", "```json", json.dumps(jsonable(cfg.to_dict()), indent=1, default=str), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    if cfg.publish is not None:
        publish(path, cfg.publish)
    return path


def publish(report: Path, target: Path) -> Path:
    """Copy ``report`` to ``target`` (a .md file) and its figures into ``target``'s stem folder,
    with the image links rewritten: the published copy carries no records."""
    import shutil

    folder = target.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    text = report.read_text()
    for png in sorted(report.parent.glob("*.png")):
        shutil.copyfile(png, folder / png.name)
        text = text.replace(f"]({png.name})", f"]({folder.name}/{png.name})")
    for audit_dir in sorted(report.parent.glob("audit-*")):  # each audit's report, without its records
        (folder / audit_dir.name).mkdir(exist_ok=True)
        for part in (*audit_dir.glob("audit.*"), *audit_dir.glob("*.png")):
            shutil.copyfile(part, folder / audit_dir.name / part.name)
    target.write_text(text)
    return target


def _lawhon_section(store: ResultsStore, results: dict[str, Any]) -> list[str]:
    lawhon = results.get("lawhon", {})
    lines: list[str] = []
    if results.get("lawhon_missing"):
        lines += [f"lawhon's multi-task repair was not run for {results['lawhon_missing']}: their rotation and "
                  "inpainting heads are not in the zoo.", ""]
    for m, part in lawhon.items():
        static, contrastive = part["static"], results.get("table1", {}).get(m, {})
        lines += [f"## lawhon: the multi-task repair on {m}", "",
                  f"Heads: {', '.join(f'{k}: `{v}`' for k, v in part['heads'].items())}. Weights (C, R, I): the "
                  "paper's text uses (1, 1, 1), its code (1, 50, 10). Center masks are the paper's, random masks "
                  "its future work.", "",
                  "| repair | clean | PGD | minus contrastive alone, clean (paired) | minus contrastive alone, PGD |",
                  "|---|---|---|---|---|"]
        clean_rows, pgd_title = static["clean"], next(t for t in static if t != "clean")
        pgd_rows = static[pgd_title]
        c_clean, c_pgd = contrastive.get("clean", {}).get(REPAIR), contrastive.get(pgd_title, {}).get(REPAIR)
        lines.append(f"| none | {_acc(clean_rows.get(None))} | {_acc(pgd_rows.get(None))} | | |")
        lines.append(f"| contrastive alone (Table 1) | {_acc(c_clean)} | {_acc(c_pgd)} | | |")
        for label in (k for k in clean_rows if k is not None):
            lines.append(f"| {label} | {_acc(clean_rows[label])} | {_acc(pgd_rows[label])} | "
                         f"{_diff_text(_diff(store, clean_rows[label], c_clean))} | "
                         f"{_diff_text(_diff(store, pgd_rows[label], c_pgd))} |")
        lines += ["", "Attackers aware of the repair (Eq. 8 with L_s = the contrastive loss only, or the multi-task "
                  "sum), against the multi-task repair C+R+I (1, 1, 1):", "",
                  "| attacker | images | standard | + multi-task repair | repair - standard (paired) |",
                  "|---|---|---|---|---|"]
        for who, cells in part["aware"].items():
            std, rep = cells[None], cells["C+R+I (1, 1, 1)"]
            lines.append(f"| aware of {who} | {std['n_images']} | {_acc(std)} | {_acc(rep)} | "
                         f"{_diff_text(_diff(store, rep, std))} |")
        lines.append("")
    return lines


def _audit_section(results: dict[str, Any]) -> list[str]:
    from advrepair.auditing import comparison_table

    lines: list[str] = []
    for key, title in (("audit", "The audit of the repair and of the noise control"),
                       ("audit_standard", "The audit at the standard preset (cascade)")):
        for m, reports in results.get(key, {}).items():
            first = next(iter(reports.values()))
            lines += [f"## {title} on {m}", "", comparison_table(list(reports.values()), names=list(reports)), "",
                      f"Preset {first.preset}: {first.preset_budget['claim']}."
                      + (" Cascade: after the static row each row attacked only the images every earlier row left "
                         "correct, so the worst case is the full protocol's at a fraction of the cost; the rows' "
                         "own accuracies are over the images each attacked (audit.md in its folder)."
                         if first.cascade else "")
                      + " Each audit's folder (audit.md, audit.json, figures) sits beside this report.", ""]
    return lines


def _explain_section(store: ResultsStore, results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for m, explain in results.get("explain", {}).items():
        card = explain["short_card"]
        metrics = "; ".join(f"{x['metric']} {PCT * x['value']:.1f}% (n={x['n_images']})" for x in card["metrics"])
        lines += [f"## What explains the old result: base model x head x eps_v on {m}", "",
                  f"Short base: the demo's old recipe `{json.dumps(card['recipe'], sort_keys=True)}` ({metrics}); "
                  "1-epoch head: the old head recipe. Each repair at each eps_v on the same images.", "",
                  "| base, head | repair eps_v | clean | PGD | repair - standard, clean | repair - standard, PGD |",
                  "|---|---|---|---|---|---|"]
        for combo, rows in explain["grid"].items():
            clean, attacked = rows["clean"], rows[next(t for t in rows if t != "clean")]
            lines.append(f"| {combo} | none | {_acc(clean[None])} | {_acc(attacked[None])} | | |")
            for k in (k for k in clean if k is not None):
                lines.append(f"| {combo} | {k.split()[-1]} | {_acc(clean[k])} | {_acc(attacked[k])} | "
                             f"{_diff_text(_diff(store, clean[k], clean[None]))} | "
                             f"{_diff_text(_diff(store, attacked[k], attacked[None]))} |")
        lines.append("")
    return lines
