"""The NRP experiment's tables, figures and Markdown report, from its records."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from advrepair.evaluation.metrics import Accuracy, paired_difference
from advrepair.evaluation.store import ResultsStore
from advrepair.evaluation.worst_case import worst_case_correct as evaluation_worst_case  # noqa: E402
from advrepair.models.checkpoint import ModelCard
from advrepair.report.figures import save_figure
from advrepair.report.tables import accuracy_cell, adaptive_table

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from advrepair.data import subset_label
from advrepair.apps.experiments.nrp.ablations import ALL_LOSSES
from advrepair.apps.experiments.nrp.config import (ATTACK_KINDS, DEFENSE_TITLES, ENSEMBLE, NRPConfig, PURIFIER_DIR,
                                                   PURIFIER_STEM, SOURCE_CNN, SOURCE_TITLES, SOURCE_VGG, TARGET, attack_params)

#: model folders under ``models_dir``



# ----------------------------------------------------------------------------- tables

def worst_case_correct(store: ResultsStore, records: Sequence[dict[str, Any] | None]) -> np.ndarray | None:
    """Per-image AND of the records' correctness (all on the same images); ``None`` if any is missing.

    Raises:
        InputError: the records cover different image counts.
    """
    if not records or any(r is None for r in records):
        return None
    return evaluation_worst_case(store, [r for r in records if r is not None])


def paired_clean_cost(store: ResultsStore, defended: dict[str, Any] | None,
                      undefended: dict[str, Any] | None) -> tuple[float, float] | None:
    """(defended minus undefended clean accuracy, paired s.e. sd(d_i) / sqrt(n)) or ``None``."""
    if defended is None or undefended is None:
        return None
    difference = paired_difference(store.arrays(defended)["correct"], store.arrays(undefended)["correct"])
    return difference.diff, difference.se_paired


def _acc_text(correct: np.ndarray | None) -> str:
    if correct is None:
        return "n/a"
    acc = Accuracy.of(correct)
    return f"{100 * acc.value:.1f} ± {100 * acc.stderr:.1f}"


def table1_markdown(cfg: NRPConfig, store: ResultsStore,
                    table1: dict[tuple[str, str], dict[str | None, dict[str, Any]]]) -> str:
    """naseer2020 Table 1's shape: one block per source; rows = defenses, columns = clean,
    each transfer attack and the per-image worst case over this source's attacks; then a
    summary with the clean cost and the worst case over every source and attack."""
    clean = table1.get(("-", "clean"), {})
    titles = [ATTACK_KINDS[k][0] for k in cfg.table1_attacks]
    blocks = []
    for source in cfg.sources():
        header = ["Defense", "Clean"] + titles + ["Worst case"]
        lines = [f"**Crafted on {SOURCE_TITLES[source]}** (target accuracy %, ± s.e.)\n",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for label in cfg.defenses:
            key = None if label == "none" else label
            recs = [table1.get((source, k), {}).get(key) for k in cfg.table1_attacks]
            lines.append(f"| {DEFENSE_TITLES[label]} | {accuracy_cell(clean.get(key))} | "
                         + " | ".join(accuracy_cell(r) for r in recs) + f" | {_acc_text(worst_case_correct(store, recs))} |")
        blocks.append("\n".join(lines) + "\n")
    header = ["Defense", "Clean", "Clean cost (points, paired s.e.)"] + \
             [f"Worst case, {SOURCE_TITLES[s]}" for s in cfg.sources()] + ["Worst case, all transfer attacks",
                                                                           "Defense s/img"]
    lines = ["**Summary** (target accuracy %, ± s.e.; worst case = correct under every listed attack)\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label in cfg.defenses:
        key = None if label == "none" else label
        cost = paired_clean_cost(store, clean.get(key), clean.get(None)) if key else (0.0, 0.0)
        cost_text = "n/a" if cost is None else ("-" if key is None else f"{100 * cost[0]:+.1f} ± {100 * cost[1]:.1f}")
        per_source = [worst_case_correct(store, [table1.get((s, k), {}).get(key) for k in cfg.table1_attacks])
                      for s in cfg.sources()]
        everything = worst_case_correct(store, [table1.get((s, k), {}).get(key) for s in cfg.sources()
                                                for k in cfg.table1_attacks])
        found = [r for cell in table1.values() if (r := cell.get(key)) is not None]
        n = sum(r["n_images"] for r in found)
        secs = "-" if key is None or not n else f"{sum(r['defense_seconds'] for r in found) / n:.4f}"
        lines.append(f"| {DEFENSE_TITLES[label]} | {accuracy_cell(clean.get(key))} | {cost_text} | "
                     + " | ".join(_acc_text(c) for c in per_source) + f" | {_acc_text(everything)} | {secs} |")
    blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def table5_markdown(cfg: NRPConfig, table5: dict[tuple[str, str, str], dict[str, Any]]) -> str:
    """naseer2020 Table 5's shape: rows = source x attack, columns = scored model (top-1 %,
    ± s.e., no defense); ``*`` marks white-box cells (crafted on the scored model itself)."""
    scored = (TARGET, SOURCE_VGG, SOURCE_CNN)
    names = {TARGET: "Target SmallCNN", SOURCE_VGG: "SmallVGG", SOURCE_CNN: "SmallCNN (seed 1)"}
    header = ["Source", "Attack"] + [names[m] for m in scored]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.append("| - | No attack | " + " | ".join(accuracy_cell(table5.get(("-", "clean", m))) for m in scored) + " |")
    for source in (SOURCE_VGG, SOURCE_CNN):
        for key in cfg.table5_attacks:
            cells = []
            for m in scored:
                text = accuracy_cell(table5.get((source, key, m)))
                cells.append(f"{text}*" if m == source else text)
            lines.append(f"| {SOURCE_TITLES[source]} | {ATTACK_KINDS[key][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _attack_settings(cfg: NRPConfig) -> str:
    keys = list(dict.fromkeys((*cfg.table1_attacks, *cfg.table5_attacks)))
    lines = []
    for key in keys:
        name, params = attack_params(key, cfg.eps, cfg.attack_steps, cfg.ti_kernel, "<layer>", cfg.ssp_distance)
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        if key == "ssp":
            shown = shown.replace("layer=<layer>", "layer=" + "/".join(f"{s}:{cfg.ssp_layers.get(s)}"
                                                                       for s in (SOURCE_VGG, SOURCE_CNN)))
        lines.append(f"- {ATTACK_KINDS[key][0]}: `{name}` {shown}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures

_ATTACK_COLORS = ("tab:orange", "tab:red", "tab:purple", "tab:blue", "tab:brown", "tab:pink", "tab:gray", "tab:olive")


def accuracy_bars_figure(cfg: NRPConfig, table1: dict[tuple[str, str], dict[str | None, dict[str, Any]]],
                         path: Path) -> Path:
    """One panel per source: bars per defense for clean accuracy and each transfer attack (± 1 s.e.)."""
    sources = cfg.sources()
    fig, axes = plt.subplots(1, len(sources), figsize=(6.2 * len(sources), 4.4), squeeze=False, sharey=True)
    x = np.arange(len(cfg.defenses))
    series = [("-", "clean", "clean")] + [(None, k, ATTACK_KINDS[k][0]) for k in cfg.table1_attacks]
    width = 0.8 / len(series)
    for ax, source in zip(axes[0], sources):
        for i, (src, key, title) in enumerate(series):
            cell = table1.get((src or source, key), {})
            recs = [cell.get(None if d == "none" else d) for d in cfg.defenses]
            vals = [100 * r["accuracy"] if r else np.nan for r in recs]
            errs = [100 * r["stderr"] if r else 0.0 for r in recs]
            ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, yerr=errs, capsize=1.5, label=title,
                   color="tab:green" if key == "clean" else _ATTACK_COLORS[(i - 1) % len(_ATTACK_COLORS)])
        ax.set_xticks(x, [DEFENSE_TITLES[d] for d in cfg.defenses], rotation=35, ha="right", fontsize=8)
        ax.set_title(f"crafted on {SOURCE_TITLES[source]}", fontsize=10)
        ax.set_ylim(0, 112)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("target accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=len(series), loc="upper center")
    fig.suptitle(f"NRP experiment (naseer2020 Table 1 shape), Fashion-MNIST, n={cfg.n_images}, eps={cfg.eps:g}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def purified_examples_figure(store: ResultsStore, table1: dict[tuple[str, str], dict[str | None, dict[str, Any]]],
                             attack: tuple[str, str], path: Path, title: str) -> Path | None:
    """Rows: clean images, NRP on them, the transfer-attacked images, their perturbation,
    NRP(adv), NRP dynamic(adv), and what P changed (``P(adv) - clean``); from the records' samples."""
    cell = table1.get(attack, {})
    clean_cell = table1.get(("-", "clean"), {})
    rows: list[tuple[str, np.ndarray]] = []
    base = cell.get(None)
    if base is None:
        return None
    arrays = store.arrays(base)
    if "input" not in arrays or "clean" not in arrays:
        return None
    clean, adv = arrays["clean"], arrays["input"]
    rows.append(("clean", clean))
    if clean_cell.get("nrp") is not None:
        rows.append(("NRP(clean)", store.arrays(clean_cell["nrp"])["repaired_nrp"]))
    rows += [("attacked", adv), ("difference: attacked - clean", adv - clean)]
    for label in ("nrp", "nrp-dynamic"):
        r = cell.get(label)
        if r is not None:
            rows.append((f"{DEFENSE_TITLES[label]}(attacked)", store.arrays(r)[f"repaired_{label}"]))
    if cell.get("nrp") is not None:
        rows.append(("difference: NRP(attacked) - clean", store.arrays(cell["nrp"])["repaired_nrp"] - clean))
    n = min(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.25 * n + 1.6, 1.3 * len(rows)), squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            img = imgs[j, 0]
            if name.startswith("difference"):
                lim = max(float(np.abs(imgs[:n]).max()), 1e-6)
                ax.imshow(img, cmap="seismic", vmin=-lim, vmax=lim)
            else:
                ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- report

def _card_line(name: str, card: ModelCard) -> str:
    m = {d["metric"]: d for d in card.metrics}
    clean = m.get("clean_accuracy", {}).get("value")
    robust = m.get("robust_accuracy", {}).get("value")
    parts = [f"`{name}`: {card.arch} {json.dumps({k: v for k, v in card.config.items() if k not in ('mean', 'std')})}",
             f"seed {card.seed}, recipe {json.dumps(card.recipe)}"]
    if clean is not None:
        parts.append(f"card clean accuracy {100 * clean:.1f}% (n={m['clean_accuracy']['n_images']})")
    if robust is not None:
        parts.append(f"white-box PGD-20 eps={m['robust_accuracy']['attack'].get('eps')}: {100 * robust:.1f}%")
    return "- " + "; ".join(parts) + f"; weights SHA-256 {card.weights_sha256[:12]}"


def _recipe_words(recipe: Any) -> str:
    """'1 epoch(s) on 6000 training images' for a purifier recipe (a PurifierRecipe or its dict)."""
    d = recipe if isinstance(recipe, dict) else recipe.to_dict()
    return f"{d['epochs']} epoch(s) on {d.get('train_subset') or 'all'} training images"


def _purifier_lines(cfg: NRPConfig, card: ModelCard | None) -> list[str]:
    if card is None:
        return ["- no purifier (no NRP defense configured)"]
    m = {d["metric"]: d for d in card.metrics}
    where = (f"zoo `{card.parent['zoo_name']}`" if card.parent.get("zoo_name")
             else f"`{PURIFIER_DIR}/{PURIFIER_STEM}`")
    lines = [f"- {where}: {card.arch} {json.dumps(card.config)}; critic "
             f"{json.dumps(card.recipe.get('critic'))}; feature extractor F = {cfg.feature_source} layer "
             f"`{card.parent.get('layer')}` (SHA-256 {str(card.parent.get('feature_model_sha256'))[:12]}), never "
             f"the target; recipe {json.dumps({k: v for k, v in card.recipe.items() if k != 'critic'})}"]
    if "mean_feature_ssp" in m:
        n = m["mean_feature_ssp"]["n_images"]
        lines.append(f"- Held-out Algorithm 2 objective on {n} balanced test images ({cfg.ssp_distance.upper()} at "
                     f"`{cfg.feature_layer}`): d(F(x), F(SSP(x))) = {m['mean_feature_ssp']['value']:.4f}, "
                     f"d(F(x), F(P(SSP(x)))) = {m['mean_feature_purified_ssp']['value']:.4f}, "
                     f"d(F(x), F(P(x))) = {m['mean_feature_purified_clean']['value']:.4f}; pixel L2 "
                     f"||SSP(x) - x|| = {m['mean_pixel_ssp']['value']:.3f}, ||P(SSP(x)) - x|| = "
                     f"{m['mean_pixel_purified_ssp']['value']:.3f}, ||P(x) - x|| = "
                     f"{m['mean_pixel_purified_clean']['value']:.3f}.")
    hist = m.get("training_history") or (  # a zoo card keeps the history beside its provenance
        {"value": card.parent["history"], "seconds": card.parent.get("provenance", {}).get("training_seconds")}
        if card.parent.get("history") else None)
    if hist and hist.get("value"):
        last = hist["value"][-1]
        lines.append(f"- Training ({hist.get('seconds') or float('nan'):.0f} s), last epoch means: L_feat "
                     f"{last['feature']:.4f} (identity {last['ssp_feature']:.4f}), L_img {last['pixel']:.3f} "
                     f"(identity {last['ssp_pixel']:.3f}), L_adv {last['adv']:.3f}, critic {last['critic']:.3f}.")
    return lines


DEVIATIONS = """\
- Fashion-MNIST (28 x 28 grayscale) and small CPU-trained networks instead of ImageNet models;
  P trained on Fashion-MNIST training images (the paper: MS-COCO, another domain) for {epochs} epoch(s)
  on {subset} images, P config {pcfg}, learning rate {lr:g} (critic {clr:g}) and batch {bs} (paper: 1e-4,
  batch 16, long training); Eq. 8 weights alpha {alpha:g}, gamma {gamma:g}, lambda {lam:g} (paper: 5e-3, 1e-2, 1).
- eps = {eps:g} (L-inf) for every attack and for SSP in training (paper: 16/255); 10 iterations;
  DIM-TI kernel {k} x {k} instead of 15 x 15.
- Cells are target accuracies (higher is better), not attack success rates; Table 5 is top-1 only.
- "Ensemble" averages the two sources' logits; FGSM-TI / MI-FGSM-TI columns are optional (not run by default).
- SSP's distance d is MAE in training and in Table 5 (the paper's Eq. 5 uses MAE; Eq. 1 leaves d open).
- NRP dynamic follows the reference code (Gaussian noise sigma 0.05, projected to 16/255), per-image seeded.
- Every random draw (attacks' diversity, resize-pad, NRP dynamic noise) is per image from its content
  and the seed, so no number depends on batch composition."""


def write_nrp_report(cfg: NRPConfig, store: ResultsStore,
                     table1: dict[tuple[str, str], dict[str | None, dict[str, Any]]],
                     table5: dict[tuple[str, str, str], dict[str, Any]], summaries: list[dict[str, Any]],
                     cards: dict[str, ModelCard], purifier_card: ModelCard | None, phases: dict[str, float],
                     seconds: float, figures: bool = True, ablations: dict[str, Any] | None = None) -> Path:
    """``cfg.out/report.md`` plus ``table1.md``, ``table5.md`` and (with ``figures``) the PNG
    figures, from stored records."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t1, t5 = table1_markdown(cfg, store, table1), table5_markdown(cfg, table5)
    (out / "table1.md").write_text(t1)
    (out / "table5.md").write_text(t5)
    pngs = [out / "nrp_accuracy_bars.png", out / "nrp_purified_examples.png"]
    if figures:
        accuracy_bars_figure(cfg, table1, pngs[0])
        example_attack = (cfg.sources()[0], cfg.table1_attacks[-1])
        purified_examples_figure(store, table1, example_attack, pngs[1],
                                 f"{ATTACK_KINDS[example_attack[1]][0]} crafted on "
                                 f"{SOURCE_TITLES[example_attack[0]]}, eps={cfg.eps:g}; purified by NRP")
    n = cfg.n_images
    # the deployed purifier's recipe: the zoo card's, or the one trained here
    recipe = purifier_card.recipe if cfg.zoo and purifier_card is not None else cfg.purifier_recipe.to_dict()
    parts = [
        "# NRP (naseer2020) on Fashion-MNIST: purifier vs input transforms under transfer attacks (issue 6)\n",
        f"Made by `advrepair experiment nrp --n-images {n} --eps {cfg.eps:g} --adaptive-images "
        f"{cfg.adaptive_images if cfg.adaptive is not None else 0}` (the configuration's defaults otherwise; "
        + ("target, sources and purifier from the zoo" if cfg.zoo else "every model trained here") + ").\n",
        f"n = {n} class-balanced Fashion-MNIST test images ({subset_label(n, cfg.seed)}); binomial standard error "
        f"<= {100 * math.sqrt(0.25 / n):.2f} points. Attacks are crafted on a *source* model and scored on the "
        "unseen *target* (black-box transfer, the paper's Table 1 threat model); defenses sit in front of the "
        "target only.\n",
        "## Models\n", *[_card_line(name, card) for name, card in cards.items()],
        *( [f"- `{ENSEMBLE}`: mean of the logits of {SOURCE_VGG} and {SOURCE_CNN}"] if cfg.ensemble else []),
        *_purifier_lines(cfg, purifier_card),
        "\n## Attacks and defenses\n", _attack_settings(cfg),
        f"\nDefenses: JPEG quality {cfg.jpeg_quality} (real codec); TV minimization (Chambolle, weight "
        f"{cfg.tv_weight:g}); median {cfg.median_size}x{cfg.median_size}; bit depth {cfg.bits}; random resize-pad "
        f"(Xie et al., ratio 331/299, seed {cfg.seed}); NRP = P(x); NRP dynamic = P(Proj(x + 0.05 n)) (seed "
        f"{cfg.seed}).\n",
        "## Table 1 shape: target accuracy under transfer attacks, per defense\n", t1,
        "Paper (Table 1, success rates on IncRes-v2_ens, lower is better): NRP brings DIM-TI from the ensemble "
        "from 79.8% (TVM) to 31.9%, and beats JPEG, TVM, R&P, HGD and others in every column.\n",
        "## Table 5 shape: SSP's transfer strength (no defense)\n", t5,
        "Paper (Table 5): SSP crafted on VGG-16 transfers better than FGSM, I-FGSM, MI-FGSM and DIM to naturally "
        "trained ImageNet models (e.g. Inc-v3 top-1 5.3% vs DIM 14.7%).\n",
    ]
    if summaries:
        parts.append("## Adaptive protocol: white-box attacks on the target with NRP\n")
        parts.append("Attacks that see the purifier: BPDA (identity backward), BPDA+EOT over fresh noise (dynamic "
                     "only), the full gradient through P (P is an ordinary differentiable network, so this is the "
                     "exact white-box gradient) and Square on the defended model. The per-image worst case is the "
                     "robustness claim; the transfer tables above are not.\n")
        for s in summaries:
            rows = {name: [rec for k in keys if (rec := store.get(k)) is not None] for name, keys in s["rows"].items()}
            parts.append(adaptive_table(s, {k: v for k, v in rows.items() if v}))
    if ablations:
        parts += ablation_sections(cfg, store, ablations, out, pngs)
    parts += [CROSS_TASK]
    parts += ["## Deviations from naseer2020\n", DEVIATIONS.format(
                  eps=cfg.eps, k=cfg.ti_kernel, epochs=recipe["epochs"], subset=recipe.get("train_subset") or "all",
                  lr=recipe["lr"], clr=recipe["critic_lr"], bs=recipe["batch_size"], alpha=recipe["alpha"],
                  gamma=recipe["gamma"], lam=recipe["lam"],
                  pcfg=json.dumps(cfg.purifier_config)),
              "\n## Time (this invocation; a resumed run skips stored records)\n",
              *[f"- {k}: {v:.0f} s" for k, v in phases.items()],
              f"- total wall time: {seconds:.0f} s; sum of the stored records' seconds: "
              f"{sum(r.get('seconds', 0.0) for r in store.records):.0f} s",
              "\n## Figures\n", *[f"![{f.stem}]({f.name})\n" for f in pngs if f.exists()]]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path



CROSS_TASK = """## Cross-task results (detection, segmentation): not run

naseer2020 also shows NRP in front of object detectors and segmenters (Mask R-CNN / RetinaNet on
MS-COCO, DeepLab on PASCAL VOC) against SSP and DIM transfers. Nothing here can say anything about
that: it needs a detection or segmentation dataset read from a user's folder (COCO / VOC loaders),
task models trained by our own code on it (a detector is hours of GPU training; nothing may be
downloaded), the task metrics (mAP, mIoU) and attacks whose loss is the task's. The purifier itself is
task-agnostic (``NRPDefense`` maps images to images), so the missing parts are data, models and
metrics, not the defense.
"""


def ablation_sections(cfg: NRPConfig, store: ResultsStore, ablations: dict[str, Any], out: Path,
                      pngs: list[Path]) -> list[str]:
    """Figs. 3-5 and Table 3 from the records ``nrp.ablations`` wrote."""
    parts: list[str] = []
    fig3 = [r for k in ablations.get("fig3", []) if (r := store.get(k)) is not None]
    if fig3:
        parts += ["## Fig. 3 shape: transfer and feature distortion against iterations\n",
                  f"I-FGSM and MI-FGSM (step eps / iterations) crafted on {fig3[0]['source']}, scored on the target "
                  f"(no defense); distortion = mean {fig3[0]['layer']} feature distance d(F(x), F(x_adv)) on the "
                  "purifier's feature network. Paper: I-FGSM's distortion and transfer fall with more iterations, "
                  "MI-FGSM's do not.\n",
                  "| Attack | iterations | target accuracy (%) | feature distortion ± s.e. | images |",
                  "|---|---|---|---|---|"]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        for kind in dict.fromkeys(r["attack"]["name"] for r in fig3):
            rows = [r for r in fig3 if r["attack"]["name"] == kind]
            for r in rows:
                parts.append(f"| {kind} | {r['steps']} | {100 * r['accuracy']:.1f} ± {100 * r['stderr']:.1f} | "
                             f"{r['feature_distortion']:.4f} ± {r['feature_distortion_se']:.4f} | {r['n_images']} |")
            left.plot([r["steps"] for r in rows], [100 - 100 * r["accuracy"] for r in rows], marker="o", label=kind)
            right.plot([r["steps"] for r in rows], [r["feature_distortion"] for r in rows], marker="o", label=kind)
        left.set_ylabel("target error rate (%)")
        right.set_ylabel("mean feature distortion")
        for ax in (left, right):
            ax.set_xscale("log")
            ax.set_xlabel("iterations")
            ax.legend(fontsize=8)
        fig.suptitle("Transfer and feature distortion against iterations (cf. Fig. 3)", fontsize=10)
        pngs.append(save_figure(fig, out / "nrp_fig3_iterations.png"))
        parts.append("")
    fig4 = [r for k in ablations.get("fig4", []) if (r := store.get(k)) is not None]
    if fig4:
        parts += ["## Fig. 4 shape: SSP at each layer of the VGG source\n",
                  "SSP (MAE, the attack steps and eps of Table 5) at one layer at a time, scored on the target "
                  "(no defense). Lower accuracy = more transferable.\n",
                  "| layer | target accuracy (%) | images |", "|---|---|---|"]
        for r in fig4:
            parts.append(f"| {r['attack']['attack']['layer']} | {100 * r['accuracy']:.1f} ± {100 * r['stderr']:.1f} "
                         f"| {r['n_images']} |")
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        ax.errorbar([r["attack"]["attack"]["layer"] for r in fig4], [100 - 100 * r["accuracy"] for r in fig4],
                    yerr=[100 * r["stderr"] for r in fig4], marker="o", capsize=3)
        ax.set_xlabel("SSP layer of the VGG source")
        ax.set_ylabel("target error rate (%)")
        ax.set_title("SSP's transfer by layer (cf. Fig. 4)", fontsize=10)
        pngs.append(save_figure(fig, out / "nrp_fig4_layers.png"))
        parts.append("")
    fig5 = ablations.get("fig5", [])
    if fig5:
        labels = list(fig5[0]["cells"])
        parts += ["## Fig. 5 shape: the purifier without each loss\n",
                  "Purifiers trained like NRP with one Eq. 8 weight set to zero (lambda: feature loss, gamma: pixel "
                  f"loss, alpha: the critic), in front of the target; DIM-TI from {fig5[0]['source']}. Paper: "
                  "without the feature loss NRP performs poorly; without the pixel loss slightly worse."
                  + (f" `nrp` is the zoo's purifier (its recipe above); the others, `nrp-{ALL_LOSSES}` included, "
                     f"are trained here with {_recipe_words(cfg.purifier_recipe)}, so compare them with "
                     f"`nrp-{ALL_LOSSES}`." if cfg.zoo else "") + "\n",
                  "| Purifier | " + " | ".join(f"{row['attack']} (%)" for row in fig5) + " |",
                  "|---|" + "---|" * len(fig5)]
        for label in labels:
            cells = [store.get(row["cells"][label]) for row in fig5]
            parts.append(f"| {label} | " + " | ".join(
                f"{100 * c['accuracy']:.1f} ± {100 * c['stderr']:.1f}" if c else "-" for c in cells) + " |")
        parts.append("")
    table3 = ablations.get("table3", [])
    if table3:
        parts += ["## Table 3 shape: an attacker with its own purifier\n",
                  "The attacker trains a purifier the same way (same data, loss and feature network, another "
                  "seed"
                  + (f"; {_recipe_words(cfg.purifier_recipe)}, less than the zoo's NRP had" if cfg.zoo else
                     ", same recipe")
                  + ") and crafts DIM-TI through it on each source (exact gradients: the local purifier is "
                  "differentiable), then transfers to the target behind NRP. Target accuracy (%).\n",
                  "| Source | DIM-TI crafted | target alone | target + NRP | images |", "|---|---|---|---|---|"]
        for row in table3:
            none, nrp = store.get(row["none"]), store.get(row["nrp"])
            if none and nrp:
                parts.append(f"| {row['source']} | {row['kind']} | {100 * none['accuracy']:.1f} ± "
                             f"{100 * none['stderr']:.1f} | {100 * nrp['accuracy']:.1f} ± {100 * nrp['stderr']:.1f} | "
                             f"{nrp['n_images']} |")
        parts.append("")
    return parts
