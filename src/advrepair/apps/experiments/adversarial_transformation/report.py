"""The experiment's Markdown report and figures, from its records."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from advrepair import zoo  # noqa: E402
from advrepair.errors import InputError  # noqa: E402
from advrepair.report.figures import save_figure  # noqa: E402
from advrepair.evaluation.harness import CLEAN  # noqa: E402
from advrepair.evaluation.store import ResultsStore  # noqa: E402
from advrepair.report.tables import accuracy_cell  # noqa: E402



ROW_TITLES = {
    "clean": "Clean (no attack)",
    "white-box-transfer": "White-box transfer: PGD on f_a alone (WT)",
    "bpda-tanh": "BPDA, tanh surrogate of sgn + Eq. 5",
    "bpda-softsign": "BPDA, soft-sign surrogate of sgn + Eq. 5",
    "reparameterization": "Reparameterization: PGD through f_a(h(x))",
    "transfer-independent": "Transfer from an independent model",
    "square": "Square (scores only)",
    "genattack": "GenAttack (scores only)",
    "hopskipjump": "HopSkipJump (decisions only)",
    "bpda-identity": "BPDA-I: identity backward through g",
    "full-gradient": "Automatic differentiation through the unrolled g",
    "eg-start": "BPDA-I from E[g(x)] (projected onto the eps-ball)",
    "transfer-small-n": "Transfer from a defense with small N (App. A.3)",
    "spsa": "SPSA: finite-difference gradients (scores only)",
    "white-box-pgd": "PGD on the classifier itself",
}


def _title(name: str) -> str:
    if name.startswith("bpda-eot-"):
        return f"BPDA-I + EOT, {name.rsplit('-', 1)[1]} samples"
    return ROW_TITLES.get(name, name)


def _pct(rec: dict[str, Any] | None) -> str:
    return accuracy_cell(rec, missing="-")


def _budget(attack: dict[str, Any]) -> tuple[str, str, str]:
    """(eps, steps or queries, step size) of an attack record, for the tables."""
    if attack.get("name") == CLEAN:
        return "-", "-", "-"
    inner: dict[str, Any] = attack["attack"] if isinstance(attack.get("attack"), dict) else attack
    steps = inner.get("steps")
    if attack.get("name") in ("square", "genattack"):
        steps_s = f"{attack.get('n_queries')} queries"
    elif attack.get("name") == "spsa":
        steps_s = f"{steps} steps x {attack.get('samples')} directions"
        return (f"{attack.get('eps'):g} ({attack.get('norm', 'Linf')})", steps_s,
                f"Adam lr {attack.get('lr'):g}, h {attack.get('delta'):g}")
    elif attack.get("name") == "hopskipjump":
        steps_s = f"{steps} iterations, <= {attack.get('max_queries')} queries"
    else:
        steps_s = str(steps)
    alpha = inner.get("alpha")
    return f"{attack.get('eps'):g} ({attack.get('norm', 'Linf')})", steps_s, "-" if alpha is None else f"{alpha:.4g}"


def _figure(path: Path, curves: list[tuple[str, list[float], list[float], list[float]]], xlabel: str, title: str,
            logx: bool = False) -> Path:
    fig, ax = plt.subplots(figsize=(5.2, 3.7))
    for label, xs, ys, errs in curves:
        ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in errs], marker="o", capsize=3, label=label)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def write_xiao_report(out_dir: str | os.PathLike[str], wall_seconds: float | None = None,
                      records_added: int | None = None) -> Path:
    """``report.md`` and three PNGs (accuracy vs N, vs EOT samples, vs Delta) from ``out_dir``'s
    results.json alone (never runs an attack). Uses the newest ``xiao-summary`` record.

    Raises:
        InputError: the store holds no xiao2020 summary (run :func:`run_xiao_experiment` first).
    """
    out = Path(out_dir)
    store = ResultsStore(out, resume=True)
    summaries = store.of_kind("xiao-summary")
    if not summaries:
        raise InputError(f"{out / 'results.json'} holds no xiao2020 summary; run the experiment first")
    s = summaries[-1]
    cfg = s["config"]

    def rec(key: str | None) -> dict[str, Any] | None:
        return None if key is None else store.get(key)

    n = s["n_images"]
    ablation = _recipe_text(cfg["fa_recipe"])
    parts = ["# xiao2020 on Fashion-MNIST: defense by adversarial transformation\n",
             f"{s['dataset']}, {s['subset']} test images; threat model L-inf eps = {cfg['eps']:g}; g: Delta = "
             f"{s['deployed']['defense']['delta']:g}, N = {s['deployed']['defense']['steps']} LL-PGD steps of "
             f"{s['deployed']['defense']['step_size']:.4g}, seeded random start; f_b = small VGG "
             f"({cfg['fb_for_g']}); f_a = SmallCNN trained on g(x). Accuracy in % ± binomial standard error.\n"]
    parts.append(f"Made by `advrepair experiment xiao2020 --n-images {n} --eps {cfg['eps']:g} --attack-steps "
                 f"{cfg['attack_steps']} --delta {cfg['delta']:g} --g-steps {cfg['g_steps']} --bpda-steps "
                 f"{','.join(str(k) for k in cfg['bpda_steps'])} --eot-draws {','.join(str(k) for k in cfg['eot_draws'])}"
                 f" --deltas {','.join(f'{d:g}' for d in cfg['deltas'])} --square-queries {cfg['square_queries']} "
                 f"--spsa-steps {cfg['spsa_steps']} --spsa-samples {cfg['spsa_samples']}"
                 + ("" if cfg["sweep_random_start"] else " --paper-fig5") + ("" if cfg.get("zoo", True) else " --no-zoo")
                 + "` (the full configuration is in results.json's xiao-summary record).\n")
    dc = s.get("deployed_card")
    if s.get("zoo") and dc:
        secs = (dc.get("provenance") or {}).get("training_seconds")
        parts.append(f"Models from the zoo (ZOO.md): the deployed f_a is `{dc['name']}` "
                     f"({_recipe_text(dc['recipe'])}, flips and shifts, cosine Adam"
                     + (f"; {secs / 60:.1f} min to train" if secs else "") + f"), g's f_b `fmnist-vgg8-{cfg['fb_for_g']}`, "
                     f"the baselines `{s['baselines']['no-defense']['model']}` and `{s['baselines']['pgd-at']['model']}`"
                     f", the transfer source `fmnist-cnn-standard-seed1`. The ablation models (one f_a per f_b in "
                     f"Table 1, per Delta in Fig. 6, at small N for App. A.3, and the training-cost pair) are trained "
                     f"here with one cheaper recipe ({ablation}) so that they compare with each other, not with the "
                     "deployed f_a.\n")
    if s.get("run_seconds") is not None:
        parts.append(f"The run that completed these results took {s['run_seconds']:.0f} s wall time "
                     f"({s.get('run_records_added')} records added).")
    if wall_seconds is not None:
        parts.append(f"This run: {wall_seconds:.0f} s wall time"
                     + (f", {records_added} new records" if records_added is not None else "") + ".\n")

    # Table 1
    defense_by_variant = {d["variant"]: d for d in s.get("table1_defense", [])}
    parts += ["\n## Table 1: the statistic that chooses f_b, and the defense each f_b gives (Sec. 3.4)\n",
              "| f_b | training | f_b clean acc. (%) | f_a∘g clean (%) | f_a∘g under BPDA-I (%) "
              "| L-inf ‖x − E[g(x)]‖ ± s.e. | mean-abs ‖x − E[g(x)]‖ ± s.e. | samples | images | used for g |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for key in s["table1"]:
        t = rec(key)
        if t is None:
            continue
        acc = t.get("f_b_clean_accuracy")
        dv = defense_by_variant.get(t["variant"], {})
        parts.append(f"| {t['variant']} | {t['description']} | {'-' if acc is None else f'{100 * acc:.1f}'} "
                     f"(n={t.get('f_b_clean_n_images')}) | {_pct(rec(dv.get('clean')))} | "
                     f"{_pct(rec(dv.get('bpda-identity')))} | {t['linf']:.4f} ± {t['linf_se']:.4f} | "
                     f"{t['mean_abs']:.4f} ± {t['mean_abs_se']:.4f} | {t['samples']} | {t['n_images']} | "
                     f"{'yes' if t['used_for_g'] else ''} |")
    if defense_by_variant:
        first = rec(next(iter(defense_by_variant.values()))["bpda-identity"])
        if first is not None:
            parts.append(f"\nThe defense columns: an f_a trained on g of that f_b ({ablation}, the same for every "
                         f"column), scored on {first['n_images']} images clean and under PGD-{first['attack']['steps']} "
                         f"(step {first['attack']['alpha']:.4g}) through BPDA(g, identity), the paper's Table 1 "
                         "attack.")
    parts.append("\nAverages over images of the per-image distance; s.e. = the Monte-Carlo standard error of one "
                 "pixel's mean (largest pixel for L-inf, mean pixel for mean-abs): an L-inf estimate within ~3 s.e. of "
                 "another is not distinguishable. Paper (CIFAR-10, 5000 samples): 0.005 untrained, 0.033-0.136 "
                 "trained 1-20 epochs, 0.272 adversarially trained.\n")

    # training cost
    c = rec(s["training_cost"])
    if c is not None:
        tr, at = c["transformation"], c["pgd-at"]
        parts += ["\n## Training cost: f_a on g(x) vs PGD adversarial training of the same f_a (same run)\n",
                  "| Method | recipe | seconds | s per 1000 images | f_a forward (images) | f_a backward | f_b forward "
                  "| f_b backward | passes per image (f_a fwd+bwd / f_b fwd+bwd) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for title, cost, recipe in (("f_a on g(x) (Eq. 1)", tr, c["recipe_transformation"]),
                                    ("PGD adversarial training", at, c["recipe_pgd_at"])):
            p = cost["passes"]
            fb = p.get("f_b", {"forward": 0, "backward": 0})
            seen = (recipe.get("epochs") or 0) * (recipe.get("train_subset") or 0)
            per_k = f"{1000 * cost['seconds'] / seen:.2f}" if seen else "-"
            per_img = (f"{(p['f_a']['forward'] + p['f_a']['backward']) / seen:.0f} / "
                       f"{(fb['forward'] + fb['backward']) / seen:.0f}") if seen else "-"
            parts.append(f"| {title} | {_recipe_text(recipe)} | {cost['seconds']:.1f} | {per_k} | "
                         f"{p['f_a']['forward']} | {p['f_a']['backward']} | {fb['forward']} | {fb['backward']} "
                         f"| {per_img} |")
        fbp = c.get("f_b_pretraining") or {}
        used: dict[str, Any] = next((v for v in cfg["fb_variants"] if v["name"] == cfg["fb_for_g"]), {})
        if not fbp and s.get("zoo") and used.get("zoo_name"):  # a zoo f_b: its card's training time
            fbp = {"seconds": (zoo.card(used["zoo_name"]).parent.get("provenance") or {}).get("training_seconds", 0.0)}
        parts.append(f"\nRatio of seconds (g / PGD-AT): **{tr['seconds'] / max(at['seconds'], 1e-9):.2f}**. "
                     f"One-off pre-training of f_b: {fbp.get('seconds', 0):.1f} s (not in the ratio, as in the paper). "
                     f"Clean accuracy: f_a(g(x)) {100 * c['f_a_clean_defended']:.1f}%, PGD-AT f_a "
                     f"{100 * c['pgd_at_clean']:.1f}% (n={n}). Seconds are wall-clock, so they depend on what else "
                     "ran on the machine during each training; the pass counts do not. A pass through f_b costs "
                     "what the f_b architecture costs (here a far smaller network than f_a).\n")
        dc, ac = s.get("deployed_card") or {}, s.get("pgd_at_card") or {}
        d_secs = (dc.get("provenance") or {}).get("training_seconds")
        a_secs = (ac.get("provenance") or {}).get("training_seconds")
        if s.get("zoo") and d_secs and a_secs:
            d_ep, a_ep = dc["recipe"]["epochs"], ac["recipe"]["epochs"]
            parts.append(f"The zoo's models, wall times from their cards (2 threads; other work shared the machine "
                         f"during parts of either training, so the ratio is rough): `{dc['name']}` "
                         f"{d_secs:.0f} s for {d_ep} epochs on all 60,000 images ({d_secs / d_ep:.0f} s per epoch), "
                         f"`{ac['name']}` (PGD-{ac['recipe']['steps']}) {a_secs:.0f} s for {a_ep} epochs "
                         f"({a_secs / a_ep:.0f} s per epoch): per epoch, training on g costs "
                         f"**{(d_secs / d_ep) / (a_secs / a_ep):.2f}x** PGD-{ac['recipe']['steps']} adversarial "
                         "training of the same network.\n")

    # attacks on the deployed defense
    dep = s["deployed"]
    parts += ["\n## f_a∘g under every attack (Sec. 4, the rows of Table 3's worst case)\n",
              "| Row | Attack | Crafted on | eps | steps / queries | step size | images | f_a alone (%) | f_a∘g (%) "
              "| s/img |", "|---|---|---|---|---|---|---|---|---|---|"]
    dep_rows = {row["name"]: row for row in dep["rows"]}
    for name, keys in dep_rows.items():
        r, b = rec(keys["defended"]), rec(keys["base"])
        if r is None:
            continue
        eps, steps, alpha = _budget(r["attack"])
        parts.append(f"| {_title(name)} | {r['attack']['name']} | {r['attack'].get('crafted_on', '-')} | {eps} | "
                     f"{steps} | {alpha} | {r['n_images']} | {_pct(b)} | {_pct(r)} | "
                     f"{r['seconds'] / max(r['n_images'], 1):.3f} |")
    wc, wb = s["worst_case"], s["bpda_worst_case"]
    parts.append(f"| **Per-image worst case, BPDA-type rows** | {len(wb['over'])} rows | - | {cfg['eps']:g} | - | - | "
                 f"{wb['n_images']} | - | **{100 * wb['accuracy']:.1f} ± {100 * wb['stderr']:.1f}** | |")
    parts.append(f"| **Per-image worst case, all rows** | {len(wc['over'])} rows | - | {cfg['eps']:g} | - | - | "
                 f"{wc['n_images']} | - | **{100 * wc['accuracy']:.1f} ± {100 * wc['stderr']:.1f}** | |")
    parts.append(f"\nThe 'f_a∘g' column scores the deployed (seeded) defense once per image. 'f_a alone' is the "
                 f"classifier without g on the same adversarial images (where it applies). Most effective single "
                 f"row: {_title(s['most_effective'])}. Worst case over: {', '.join(wc['over'])}.\n")

    # Table 3 shaped
    clean_dep = rec(dep_rows["clean"]["defended"])
    parts += ["\n## Table 3 shape: standard vs worst-case robust accuracy\n",
              "| Method | A_std (%) | A_rob (%) | Attack | images |", "|---|---|---|---|---|"]
    titles = ({"no-defense": f"No defense (`{s['baselines']['no-defense']['model']}`, the zoo's standard SmallCNN)",
               "pgd-at": f"PGD adversarial training (`{s['baselines']['pgd-at']['model']}`, the same SmallCNN, "
                         "PGD-7, 20 epochs)"} if s.get("zoo") else
              {"no-defense": "No defense (standard SmallCNN, independent seed)",
               "pgd-at": "PGD adversarial training (same f_a and data)"})
    for role, title in titles.items():
        bl = s["baselines"][role]
        cl, pg = rec(bl["clean"]), rec(bl["pgd"])
        if cl and pg:
            parts.append(f"| {title} | {_pct(cl)} | {_pct(pg)} | PGD-{pg['attack']['steps']} white-box | "
                         f"{pg['n_images']} |")
    strongest_bpda = min(wb["over"], key=lambda k: (rec(dep_rows[k]["defended"]) or {"accuracy": 1.0})["accuracy"])
    parts.append(f"| Ours under BPDA-type attacks | {_pct(clean_dep)} | {100 * wb['accuracy']:.1f} ± "
                 f"{100 * wb['stderr']:.1f} | worst case (strongest: {_title(strongest_bpda)}) | {wb['n_images']} |")
    parts.append(f"| Ours under all attacks | {_pct(clean_dep)} | {100 * wc['accuracy']:.1f} ± "
                 f"{100 * wc['stderr']:.1f} | worst case (strongest: {_title(s['most_effective'])}) "
                 f"| {wc['n_images']} |")

    figures = []
    # Fig. 5
    parts += ["\n## Fig. 5 shape: surrogate BPDA against N (steps of g the defender runs and the attacker unrolls)\n",
              "| N | defense | clean (%) | " + " | ".join(f"BPDA {k} (%)" for k in cfg["surrogates"]) + " | images |",
              "|---|---|---|" + "---|" * len(cfg["surrogates"]) + "---|"]
    curves: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for p in s["fig5"]:
        cells = [rec(p["clean"])] + [rec(p[f"bpda-{k}"]) for k in cfg["surrogates"]]
        parts.append(f"| {p['steps']} | {p['label']} | " + " | ".join(_pct(x) for x in cells) + f" | {n} |")
        for title, r in zip(["clean"] + [f"BPDA {k}" for k in cfg["surrogates"]], cells):
            if r is not None:
                xs, ys, es = curves.setdefault(title, ([], [], []))
                xs.append(p["steps"])
                ys.append(r["accuracy"])
                es.append(r["stderr"])
    attack0 = rec(s["fig5"][0][f"bpda-{cfg['surrogates'][0]}"]) if s["fig5"] else None
    if curves:
        figures.append(_figure(out / "fig5_accuracy_vs_steps.png", [(k, *v) for k, v in curves.items()],
                               "N (LL-PGD steps of g, all unrolled by the attacker)",
                               f"BPDA with smooth sgn + Eq. 5; PGD-{cfg['attack_steps']} eps={cfg['eps']:g}, n={n}"))
    if attack0 is not None:
        parts.append(f"\nPGD-{attack0['attack']['steps']} (step {attack0['attack']['alpha']:.4g}) through "
                     f"BPDA(g, surrogate) at temperature {cfg['surrogate_temperature']:g}; random start of g "
                     f"{'on (seeded, replayed by the surrogate)' if cfg['sweep_random_start'] else 'off (paper)'}.\n")

    # Fig. 7
    deltas = sorted({p["delta"] for p in s["fig7"]})
    draws = sorted({p["draws"] for p in s["fig7"]})
    parts += ["\n## Fig. 7 shape: BPDA-I + EOT against the number of samples\n",
              "| EOT samples | " + " | ".join(f"Delta = {dd:g} (%)" for dd in deltas) + " | images |",
              "|---|" + "---|" * len(deltas) + "---|"]
    by = {(p["delta"], p["draws"]): rec(p["key"]) for p in s["fig7"]}
    for r in draws:
        parts.append(f"| {r} | " + " | ".join(_pct(by.get((dd, r))) for dd in deltas) + f" | {n} |")
    curves7 = []
    for dd in deltas:
        pts = [(r, x) for r in draws if (x := by.get((dd, r))) is not None]
        curves7.append((f"Delta = {dd:g}", [r for r, _ in pts], [x["accuracy"] for _, x in pts],
                        [x["stderr"] for _, x in pts]))
    if curves7:
        figures.append(_figure(out / "fig7_accuracy_vs_eot_samples.png", curves7, "EOT samples of g per gradient",
                               f"PGD-{cfg['attack_steps']} eps={cfg['eps']:g} through EOT(BPDA-I), n={n}",
                               logx=True))

    # Fig. 6
    parts += ["\n## Fig. 6 shape: accuracy against Delta (one f_a trained per Delta)\n",
              "| Delta | f_a | clean (%) | BPDA-I + EOT (%) | WT (%) | f_a training (s) | images |",
              "|---|---|---|---|---|---|---|"]
    c6: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for p in s["fig6"]:
        cells6 = {"clean": rec(p["clean"]), f"BPDA-I + EOT-{p['eot_draws']}": rec(p["bpda-eot"]),
                  "WT": rec(p["white-box-transfer"])}
        secs = p.get("training_seconds")
        parts.append(f"| {p['delta']:g} | {p['model']} | " + " | ".join(_pct(x) for x in cells6.values())
                     + f" | {'-' if secs is None else f'{secs:.0f}'} | {n} |")
        for title, r in cells6.items():
            if r is not None:
                xs, ys, es = c6.setdefault(title, ([], [], []))
                xs.append(p["delta"])
                ys.append(r["accuracy"])
                es.append(r["stderr"])
    if c6:
        figures.append(_figure(out / "fig6_accuracy_vs_delta.png", [(k, *v) for k, v in c6.items()],
                               "Delta (radius of g)", f"eps={cfg['eps']:g}, n={n}"))

    # reparameterization
    im = {m["metric"]: m for m in s["imitator"]["metrics"]}
    if im:
        parts += ["\n## Reparameterization: how well h imitates g\n",
                  "| MSE(h(x), g(x)) on | value | images |", "|---|---|---|"]
        for k, title in (("imitation_mse_train_images", "training images"),
                         ("imitation_mse_heldout_images", "held-out test images"),
                         ("g_draw_to_draw_mse", "(reference) two draws of g against each other")):
            if k in im:
                parts.append(f"| {title} | {im[k]['value']:.5f} | {im[k]['n_images']} |")
    parts += _finite_difference_section(out, rec(s.get("fig3")), figures)
    parts += _image_figures(out, store, s, rec(s.get("fig2")), figures)
    parts.append("\n## Figures\n")
    parts += [f"![{f.stem}]({f.name})\n" for f in figures]
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def _finite_difference_section(out: Path, fd: dict[str, Any] | None, figures: list[Path]) -> list[str]:
    """Fig. 3 (right): the finite-difference derivative of one pixel of g against the step h."""
    if fd is None:
        return []
    steps, values = fd["steps"], fd["estimates"]
    lines = ["\n## Fig. 3 shape: finite-difference derivatives of g (Sec. 4.1, Eq. 4)\n",
             "Central differences (g(x + h e_j) − g(x − h e_j))_j / 2h of the deployed, seeded g, for one pixel j per "
             f"image (the pixel nearest 0.5), on {fd['n_images']} images. The exact derivative of a masked identity "
             "would be 1; the paper's claim is that these estimates vanish for tiny h and explode or flip sign as h "
             "grows.\n", "| h | " + " | ".join(f"image {i + 1}" for i in range(len(values))) + " |",
             "|---|" + "---|" * len(values)]
    for k, h in enumerate(steps):
        lines.append(f"| {h:g} | " + " | ".join(f"{row[k]:.3g}" for row in values) + " |")
    fig, ax = plt.subplots(figsize=(5.6, 3.7))
    for i, row in enumerate(values):
        ax.plot(steps, row, marker="o", label=f"image {i + 1}")
    ax.axhline(1.0, color="gray", lw=0.8, ls=":", label="1 (identity)")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("finite-difference step h")
    ax.set_ylabel("estimated ∂g_j/∂x_j")
    ax.set_title("Central finite differences of g (one pixel per image)", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figures.append(save_figure(fig, out / "fig3_finite_differences.png"))
    return lines


def _image_figures(out: Path, store: ResultsStore, s: dict[str, Any], fig2: dict[str, Any] | None,
                   figures: list[Path]) -> list[str]:
    """Fig. 2 (an image, an adversarial example at eps, g(x) at Delta) and Fig. 4 (x − E[g(x)]
    for every f_b, normalized, with its L-inf; E[g(x)] of the used f_b)."""
    lines: list[str] = []
    if fig2 is not None:
        arrays = store.arrays(fig2)
        panels = [("x", arrays["image"]), (f"PGD on f_a, eps {fig2['eps']:g}", arrays["adversarial"]),
                  (f"g(x), Delta {fig2['delta']:g}", arrays["transformed"])]
        fig, axes = plt.subplots(1, 3, figsize=(6.6, 2.6))
        for ax, (title, img) in zip(axes, panels):
            ax.imshow(img[0, 0], cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        figures.append(save_figure(fig, out / "fig2_transformed_image.png"))
        lines.append("\n## Fig. 2 shape: an attack's perturbation and g's\n\n"
                     f"The first evaluation image, a PGD-{s['config']['attack_steps']} adversarial example of f_a at "
                     f"eps {fig2['eps']:g}, and g(x) at Delta {fig2['delta']:g} (fig2_transformed_image.png).\n")
    table1 = [(t, store.arrays(t)) for k in s["table1"] if (t := store.get(k)) is not None]
    table1 = [(t, a) for t, a in table1 if "expected" in a]
    if table1:
        fig, axes = plt.subplots(1, len(table1) + 2, figsize=(1.75 * (len(table1) + 2), 2.5))
        x = table1[0][1]["image"][0, 0]
        axes[0].imshow(x, cmap="gray", vmin=0, vmax=1)
        axes[0].set_title("x", fontsize=8)
        for ax, (t, a) in zip(axes[1:], table1):
            diff = abs(x - a["expected"][0, 0])
            ax.imshow(diff / max(float(diff.max()), 1e-12), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{t['variant']}\nL-inf {float(diff.max()):.3f}", fontsize=7)
        used = next((a for t, a in table1 if t["used_for_g"]), table1[-1][1])
        axes[-1].imshow(used["expected"][0, 0], cmap="gray", vmin=0, vmax=1)
        axes[-1].set_title("E[g(x)], used f_b", fontsize=7)
        for ax in axes:
            ax.axis("off")
        figures.append(save_figure(fig, out / "fig4_expected_transformation.png"))
        lines.append("\n## Fig. 4 shape: x − E[g(x)] for every f_b\n\n"
                     f"|x − E[g(x)]| of one image for each f_b of Table 1, each scaled to its own maximum (its L-inf "
                     f"above it), from {table1[0][0]['samples']} draws of g; last panel: E[g(x)] for the f_b that g "
                     "uses (fig4_expected_transformation.png).\n")
    return lines


def _recipe_text(recipe: dict[str, Any]) -> str:
    text = f"{recipe.get('epochs')} epoch(s), {recipe.get('train_subset') or 'all'} images"
    if recipe.get("adversarial"):
        text += f", PGD-{recipe.get('steps')} eps {recipe.get('eps')} step {recipe.get('alpha')}"
    return text

