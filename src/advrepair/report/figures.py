"""Matplotlib figures from stored results (never from running attacks)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from advrepair.report.tables import attack_label  # noqa: E402


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (120 dpi) and close ``fig``; returns ``path``. Every report figure ends here."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def ssl_loss_histogram(panels: list[dict[str, Any]], path: Path) -> Path:
    """mao2021 Figure 3: the self-supervised loss on clean, attacked and repaired images.

    ``panels``: one dict per model with keys ``title``, ``clean``, ``attacked``, ``repaired``
    (1-D arrays) and ``attack`` (a label).
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, p in zip(axes[0], panels):
        values = [v for v in (p["clean"], p["attacked"], p["repaired"]) if v is not None and len(v)]
        lo, hi = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
        bins = np.linspace(lo, hi, 40)
        for key, color, label in (("clean", "tab:green", "clean"), ("attacked", "tab:red", f"{p['attack']} attacked"),
                                  ("repaired", "tab:blue", f"{p['attack']} + reverse attack")):
            v = p.get(key)
            if v is not None and len(v):
                ax.hist(v, bins=bins, alpha=0.5, color=color, label=f"{label} (mean {v.mean():.3f})")
        ax.set_title(p["title"])
        ax.set_xlabel("contrastive loss $L_s$ per image")
        ax.set_ylabel("images")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def accuracy_bars(records: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: accuracy (± s.e.) without and with the defense, per model and attack."""
    models = list(dict.fromkeys(r["model"] for r in records))
    attacks = list(dict.fromkeys(attack_label(r["attack"]) for r in records))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False, sharey=True)
    for ax, m in zip(axes[0], models):
        x = np.arange(len(attacks))
        for i, (defended, color, label) in enumerate(((False, "tab:gray", "standard"), (True, "tab:blue", "repaired"))):
            vals, errs = [], []
            for a in attacks:
                r = next((r for r in records if r["model"] == m and attack_label(r["attack"]) == a
                          and bool(r.get("defense")) == defended), None)
                vals.append(100 * r["accuracy"] if r else np.nan)
                errs.append(100 * r["stderr"] if r else 0)
            ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, yerr=errs, color=color, label=label, capsize=3)
        ax.set_xticks(x, attacks)
        ax.set_title(m)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def image_grid(rows: list[tuple[str, np.ndarray]], path: Path, title: str = "") -> Path:
    """Rows of images (N, C, H, W) in [0, 1]; a row named with 'difference' is shown centered."""
    n = min(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)), squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j in range(n):
            img = np.transpose(imgs[j], (1, 2, 0))
            ax = axes[i][j]
            if "difference" in name:
                lim = max(float(np.abs(imgs[:n]).max()), 1e-6)
                ax.imshow(img.mean(-1), cmap="seismic", vmin=-lim, vmax=lim)
            elif img.shape[-1] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.clip(0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def lambda_sweep_figure(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """mao2021 Figure 4: robust accuracy against lambda_s, without and with the defense."""
    lam = [r["lambda_s"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for key, style, label in (("standard", "--", "standard (no defense)"), ("repaired", "-", "with reverse attack")):
        acc = np.array([100 * r[f"accuracy_{key}"] for r in rows])
        err = np.array([100 * r[f"stderr_{key}"] for r in rows])
        ax.errorbar(lam, acc, yerr=err, fmt=style + "o", capsize=3, label=label)
    attack = rows[0]["attack"] if rows else {}
    ax.set_xlabel(r"$\lambda_s$ of the defense-aware attack $L_c - \lambda_s L_s$")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(title or f"defense-aware PGD-{attack.get('steps')} eps={attack.get('eps')}, "
                          f"n={rows[0]['n_images'] if rows else 0}", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def iterate_accuracy_figure(curves: list[tuple[str, list[float]]], path: Path, title: str = "") -> Path:
    """Accuracy of the classifier at each iterate of the defense's optimization, one curve per attack."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, acc in curves:
        ax.plot(range(len(acc)), [100 * a for a in acc], marker=".", label=label)
    ax.set_xlabel("iterate of the defense (0 = start)")
    ax.set_ylabel("accuracy (%)")
    # long titles wrap instead of running off the figure; the legend sits beside the axes so it
    # never covers a curve
    ax.set_title(textwrap.fill(title, 60), fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return save_figure(fig, path)
