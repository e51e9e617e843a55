"""The audit's result: typed rows, the per-image worst case, the flags, as JSON, Markdown and figures."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from advrepair.durable import make_folder
from advrepair.evaluation.store import atomic_write_text, jsonable

SAVED_FILES = ("audit.json", "audit.md", "audit_rows.png", "audit_iterates.png")


@dataclasses.dataclass(frozen=True)
class AuditRow:
    """One attack against the defended model (``defended``) or the bare classifier."""

    name: str
    defended: bool
    accuracy: float
    stderr: float
    n_images: int
    attack: dict[str, Any]
    budget: str
    forward_per_image: float
    backward_per_image: float
    seconds: float
    worst_over_iterates: float | None = None
    #: accuracy at each iterate of the defense (start, ..., output), when it exposes them
    iterate_accuracy: list[float] | None = None

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(self.n_images, 1)


@dataclasses.dataclass(frozen=True)
class AuditFlag:
    """A reliability check (AutoAttack-style): ``fired`` means the number may be too good."""

    name: str
    fired: bool
    detail: str


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """What ``advrepair.audit`` found. Every accuracy is a fraction in [0, 1] with its
    binomial standard error; ``worst_case_accuracy`` counts an image as robust only if every
    attacked row, and every iterate of the defense, left it correct. ``defense_gain`` is the
    worst case minus the classifier's own accuracy under the transfer rows, per image on the
    same images, with its paired standard error."""

    classifier: str
    defense: dict[str, Any]
    preset: str
    preset_budget: dict[str, Any]
    eps: float
    norm: str
    n_images: int
    rows: tuple[AuditRow, ...]
    worst_case_accuracy: float
    worst_case_stderr: float
    worst_case_outputs_only: float
    undefended_robust_accuracy: float
    undefended_robust_stderr: float
    defense_gain: float
    defense_gain_stderr: float
    flags: tuple[AuditFlag, ...]
    randomness: dict[str, Any]
    notes: tuple[str, ...]
    seconds: float
    out: str | None = None
    #: rows after the static one attacked only the images still standing (their n_images)
    cascade: bool = False

    @property
    def clean_accuracy(self) -> float:
        return next(r.accuracy for r in self.rows if r.name == "clean" and r.defended)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(self.n_images, 1)

    @property
    def fired_flags(self) -> list[AuditFlag]:
        return [f for f in self.flags if f.fired]

    def row(self, name: str, defended: bool = True) -> AuditRow:
        return next(r for r in self.rows if r.name == name and r.defended == defended)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seconds_per_image"] = self.seconds_per_image
        d["clean_accuracy"] = self.clean_accuracy
        for row, raw in zip(self.rows, d["rows"]):
            raw["seconds_per_image"] = row.seconds_per_image
        return jsonable(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "AuditReport":
        d = json.loads(text)
        for derived in ("seconds_per_image", "clean_accuracy"):
            d.pop(derived, None)
        rows = []
        for r in d.pop("rows"):
            r.pop("seconds_per_image", None)
            rows.append(AuditRow(**r))
        flags = tuple(AuditFlag(**f) for f in d.pop("flags"))
        return cls(rows=tuple(rows), flags=flags, notes=tuple(d.pop("notes")), **d)

    def to_markdown(self) -> str:
        pct = 100.0
        lines = [f"# Audit: {self.defense.get('name', '?')} in front of {self.classifier}", "",
                 f"Preset **{self.preset}** ({self.preset_budget['claim']}); {self.norm} eps = {self.eps:g}; "
                 f"{self.n_images} images; {self.seconds:.0f} s ({self.seconds_per_image:.2f} s per image).", "",
                 f"**Worst case per image over every row and the defense's iterates: "
                 f"{pct * self.worst_case_accuracy:.1f} ± {pct * self.worst_case_stderr:.1f}%** "
                 f"(outputs only: {pct * self.worst_case_outputs_only:.1f}%). Clean with the defense: "
                 f"{pct * self.clean_accuracy:.1f}%. The classifier alone under the transfer attack: "
                 f"{pct * self.undefended_robust_accuracy:.1f} ± {pct * self.undefended_robust_stderr:.1f}%, so the "
                 f"defense {'adds' if self.defense_gain > 0 else 'costs'} "
                 f"{pct * abs(self.defense_gain):.1f} ± {pct * self.defense_gain_stderr:.1f} points (paired s.e.).", "",
                 *(["Cascade: after the static row, each row attacked only the images every earlier row left "
                    "correct (its image count below); the worst case is that of the full protocol, a row's "
                    "accuracy is over the images it attacked.", ""] if self.cascade else []),
                 "| row | model | images | accuracy (%) | attack and budget | passes per image (fwd / bwd) "
                 "| s per image |", "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r.name} | {'defended' if r.defended else 'classifier alone'} | {r.n_images} | "
                         f"{pct * r.accuracy:.1f} ± {pct * r.stderr:.1f} | {r.budget} | "
                         f"{r.forward_per_image:.0f} / {r.backward_per_image:.0f} | {r.seconds_per_image:.3f} |")
        lines += ["", "Flags (fired = the number may be too good):", ""]
        lines += [f"- [{'FIRED' if f.fired else 'ok'}] {f.name}: {f.detail}" for f in self.flags]
        lines += ["", "Notes:", ""] + [f"- {n}" for n in self.notes]
        lines += ["", "Passes count calls of the model the attack runs on; through BPDA or an unroll each includes "
                  "the defense. Standard errors are binomial, sqrt(p (1 - p) / n)."]
        return "\n".join(lines) + "\n"

    def save(self, folder: str | Path) -> Path:
        """Write audit.json, audit.md, audit_rows.png and (for a defense that exposes its
        iterates) audit_iterates.png into ``folder``; returns audit.md."""
        folder = Path(folder)
        make_folder(folder)
        atomic_write_text(folder / "audit.json", self.to_json() + "\n")
        self._plot_rows(folder / "audit_rows.png")
        figures = "\n![rows](audit_rows.png)\n"
        if any(r.iterate_accuracy for r in self.rows):
            self._plot_iterates(folder / "audit_iterates.png")
            figures += "\n![accuracy over the defense's iterates](audit_iterates.png)\n"
        atomic_write_text(folder / "audit.md", self.to_markdown() + figures)
        return folder / "audit.md"

    def _plot_iterates(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
        curves = [(r.name, r.iterate_accuracy) for r in self.rows if r.defended and r.iterate_accuracy]
        for i, (name, curve) in enumerate(curves):
            # ten colours, then a new dash pattern: no two rows share a line's look
            ax.plot(range(len(curve)), [100 * a for a in curve], label=name,
                    linewidth=1.2, color=f"C{i % 10}", linestyle=("-", "--", ":", "-.")[i // 10 % 4])
        ax.set_xlabel("iterate of the defense (0 = its start; last = its output)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"accuracy along the defense's own iterates, per attack row ({self.n_images} images)",
                     fontsize=10)
        fig.legend(loc="outside right center", fontsize=7, frameon=False)
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def _plot_rows(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.rows if r.defended]
        fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 2.2), layout="constrained")
        ys = list(range(len(rows)))[::-1]
        if self.cascade:  # a cascaded row saw only the images still standing: show its share of all of them
            share = [r.accuracy * r.n_images / self.n_images for r in rows]
            ax.barh(ys, [100 * p for p in share], xerr=[100 * (p * (1 - p) / self.n_images) ** 0.5 for p in share],
                    color="#4c72b0", capsize=3, label="defended, cascade: correct after the row, % of all images")
        else:
            ax.barh(ys, [100 * r.accuracy for r in rows], xerr=[100 * r.stderr for r in rows], color="#4c72b0",
                    capsize=3, label="defended model, per row")
        ax.set_yticks(ys)
        ax.set_yticklabels([r.name for r in rows], fontsize=8)
        ax.axvline(100 * self.worst_case_accuracy, color="#c44e52", linestyle="--",
                   label=f"worst case per image {100 * self.worst_case_accuracy:.1f}%")
        ax.axvline(100 * self.undefended_robust_accuracy, color="#55a868", linestyle=":",
                   label=f"classifier alone, transfer attack {100 * self.undefended_robust_accuracy:.1f}%")
        ax.set_xlim(0, 100)
        ax.set_xlabel(f"accuracy (%), {self.norm} eps {self.eps:g}, {self.n_images} images, ± s.e.")
        ax.set_title(f"audit ({self.preset}): {self.defense.get('name', '?')} + {self.classifier}", fontsize=10)
        fig.legend(loc="outside lower center", fontsize=8, ncol=1 if self.cascade else 2, frameon=False)
        fig.savefig(path, dpi=120)
        plt.close(fig)


def comparison_table(reports: list[AuditReport], names: list[str] | None = None) -> str:
    """One Markdown row per audit: clean, the worst case, the classifier alone, the paired gain,
    the strongest single row, the flags that fired and the cost."""
    pct = 100.0
    lines = ["| audit | preset | images | clean | worst case | classifier alone (transfer) | gain (paired) | "
             "strongest row | flags fired | s per image |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(reports):
        attacked = [row for row in r.rows if row.defended and row.name != "clean"]
        if r.cascade:  # rows attacked different images: the one that left the most of them wrong
            top = max(attacked, key=lambda row: round((1 - row.accuracy) * row.n_images))
            strongest_text = f"{top.name} (wrong on {round((1 - top.accuracy) * top.n_images)} of {top.n_images})"
        else:
            top = min(attacked, key=lambda row: row.accuracy)
            strongest_text = f"{top.name} {pct * top.accuracy:.1f}"
        fired = ", ".join(f.name for f in r.fired_flags) or "none"
        label = names[i] if names else f"{r.defense.get('name', '?')} + {r.classifier}"
        lines.append(f"| {label} | {r.preset} | {r.n_images} | {pct * r.clean_accuracy:.1f} | "
                     f"**{pct * r.worst_case_accuracy:.1f} ± {pct * r.worst_case_stderr:.1f}** | "
                     f"{pct * r.undefended_robust_accuracy:.1f} ± {pct * r.undefended_robust_stderr:.1f} | "
                     f"{pct * r.defense_gain:+.1f} ± {pct * r.defense_gain_stderr:.1f} | "
                     f"{strongest_text} | {fired} | {r.seconds_per_image:.2f} |")
    return "\n".join(lines) + "\n"


__all__ = ["AuditFlag", "AuditReport", "AuditRow", "SAVED_FILES", "comparison_table"]
