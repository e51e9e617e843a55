"""The multi-task ablation's task combinations and configuration (lawhon)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


from advrepair import zoo
from advrepair.errors import InputError
from advrepair.evaluation.adaptive import AdaptiveConfig
from advrepair.apps.experiments.setup import RunConfig  # noqa: E402
from advrepair.apps.pipeline import (QUICK_ADVERSARIAL, QUICK_SSL, QUICK_STANDARD)
from advrepair.ssl.registry import TASK_NAMES, check_task_name
from advrepair.training import ClassifierRecipe, SSLRecipe
from advrepair.validation import check_int_at_least, check_positive

import matplotlib

matplotlib.use("Agg")



#: one combination: ((task name, weight alpha_k), ...) in the order the tasks are summed
Combination = tuple[tuple[str, float], ...]

#: the demo's two classifiers, in table order; (model folder name, how it was trained)
CLASSIFIERS: tuple[tuple[str, str], ...] = (("fmnist-cnn-standard", "standard CNN"),
                                            ("fmnist-cnn-pgd", "PGD-trained CNN"))
#: the paper's text: alpha_k = 1 for every task
PAPER_TEXT_WEIGHTS: tuple[float, float, float] = (1.0, 1.0, 1.0)
#: the paper's code: contrastive 1, rotation 50, inpainting 10
PAPER_CODE_WEIGHTS: tuple[float, float, float] = (1.0, 50.0, 10.0)
SHORT = {"contrastive": "C", "rotation": "R", "inpainting": "I"}


def default_combinations() -> tuple[Combination, ...]:
    """The ablation's 8 repairs: each task, each pair (weights 1), all three at (1, 1, 1)
    and at (1, 50, 10); tasks in the order contrastive, rotation, inpainting."""
    c, r, i = TASK_NAMES
    singles = tuple(((t, 1.0),) for t in (c, r, i))
    pairs = (((c, 1.0), (r, 1.0)), ((c, 1.0), (i, 1.0)), ((r, 1.0), (i, 1.0)))
    triples = (tuple(zip((c, r, i), PAPER_TEXT_WEIGHTS)), tuple(zip((c, r, i), PAPER_CODE_WEIGHTS)))
    return singles + pairs + triples


def combination_label(combo: Combination) -> str:
    """``(("contrastive", 1), ("rotation", 50))`` -> ``"contrastive:1+rotation:50"`` (the
    syntax of ``advrepair eval --ssl-tasks`` with '+' for ',')."""
    return "+".join(f"{name}:{weight:g}" for name, weight in combo)


def combination_title(combo: Combination) -> str:
    """A table row name: ``"C + R + I (1, 50, 10)"``; single tasks by their full name."""
    if len(combo) == 1:
        name, w = combo[0]
        return name if w == 1 else f"{name} (x{w:g})"
    return " + ".join(SHORT[n] for n, _ in combo) + " (" + ", ".join(f"{w:g}" for _, w in combo) + ")"


def check_combinations(combos: Sequence[Sequence[tuple[str, float]]]) -> tuple[Combination, ...]:
    """Validate and normalize combinations; raises InputError naming the problem."""
    if isinstance(combos, (str, bytes)) or len(combos) == 0:
        raise InputError("combinations must be a non-empty sequence of ((task, weight), ...) tuples")
    out: list[Combination] = []
    for combo in combos:
        if not isinstance(combo, (tuple, list)) or len(combo) == 0:
            raise InputError(f"a combination must name at least one (task, weight) pair, got {combo!r}")
        items = []
        for pair in combo:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InputError(f"each entry of a combination must be (task, weight), got {pair!r}")
            name, weight = pair
            check_task_name(name)
            items.append((name, check_positive(weight, f"the weight of {name}")))
        names = [n for n, _ in items]
        if len(set(names)) != len(names):
            raise InputError(f"combination {combination_label(tuple(items))} names a task twice")
        out.append(tuple(items))
    labels = [combination_label(c) for c in out]
    if len(set(labels)) != len(labels):
        raise InputError(f"combinations repeat: {labels}")
    return tuple(out)


def parse_combination(spec: str) -> Combination:
    """``"contrastive:1+rotation:50+inpainting:10"`` -> a combination (weight 1 if omitted),
    the inverse of :func:`combination_label`; for command lines.

    Raises:
        InputError: an unknown task, a weight that is not a positive number, a repeated task.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"a combination spec must be 'task:weight+task:weight...', got {spec!r}")
    items = []
    for part in spec.split("+"):
        name, _, weight = part.strip().partition(":")
        try:
            w = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise InputError(f"the weight of {name!r} in {spec!r} must be a number, got {weight!r}") from None
        items.append((name.strip(), w))
    return check_combinations([items])[0]


@dataclass
class MultiTaskConfig(RunConfig):
    """Everything the ablation needs; defaults reproduce issue 5 on the demo's models.

    Args:
        out: report folder (results.json, report.md, figures).
        models_dir: where the demo's ``fmnist-cnn-standard`` / ``fmnist-cnn-pgd`` folders are
            (or will be trained); default the demo's.
        n_images: balanced test images (600: binomial s.e. <= 2.04 points).
        eps, pgd_steps, pgd_alpha: the static L-inf PGD crafted on the classifier.
        eps_v, reverse_steps, n_views: the repair (eps_v = 2 eps, K = 40, views of the contrastive task).
        standard, adversarial, ssl: training recipes; defaults are the demo's, so its
            checkpoints are reused (the same ``ssl`` recipe trains rotation and inpainting).
        inpainting_mask: "center" (the paper) or "random" (its future work).
        arch_config: options of the classifiers' ``small-cnn`` (``None``: the demo's); and
        head_width: width of the rotation and inpainting nets (``None``: their defaults);
            both only to shrink tests, a change retrains the heads (or the classifiers
            when trained from scratch).
        combinations: the repairs to compare (default :func:`default_combinations`).
        adaptive: the adaptive protocol's budgets, or ``None`` to skip it; it attacks
            ``adaptive_combination`` on the classifiers in ``adaptive_models`` with
            ``adaptive_images`` balanced images out of the ``n_images``.
        batch_size: images per attack/defense batch.
        zoo: the classifiers and their heads from the zoo (the default): ``fmnist-cnn-standard``
            and ``fmnist-cnn-pgd`` with their ``-contrastive``, ``-rotation`` and ``-inpainting``
            (``-inpainting-random``) heads, when shipped and matching ``tau`` / ``n_views``;
            a head the zoo lacks is trained on demand in ``models_dir`` with ``ssl``.
            ``zoo=False`` trains everything with the recipes above (the tests' tiny runs).
    """

    out: Path = Path("reports/multitask")
    n_images: int = 600
    pgd_steps: int = 20
    pgd_alpha: float = 0.0125
    eps_v: float = 0.2
    reverse_steps: int = 40
    n_views: int = 4
    tau: float = 0.2
    standard: ClassifierRecipe = QUICK_STANDARD
    adversarial: ClassifierRecipe = QUICK_ADVERSARIAL
    ssl: SSLRecipe = QUICK_SSL
    inpainting_mask: str = "center"
    arch_config: dict[str, Any] | None = None
    head_width: int | None = None
    combinations: tuple[Combination, ...] = field(default_factory=default_combinations)
    adaptive: AdaptiveConfig | None = field(default_factory=lambda: AdaptiveConfig(
        eps=0.1, steps=10, alpha=0.025, eot_draws=2, unroll_steps=5, lambdas=(0.0, 1.0, 4.0),
        square_queries=100))
    adaptive_images: int = 100
    adaptive_combination: Combination = tuple(zip(TASK_NAMES, PAPER_TEXT_WEIGHTS))
    adaptive_models: tuple[str, ...] = ("fmnist-cnn-pgd",)
    zoo: bool = True

    def __post_init__(self) -> None:
        self.check_run_fields()
        self.pgd_steps = check_int_at_least(self.pgd_steps, "pgd_steps", 1)
        check_positive(self.pgd_alpha, "pgd_alpha")
        check_positive(self.eps_v, "eps_v")
        self.reverse_steps = check_int_at_least(self.reverse_steps, "reverse_steps", 1)
        self.n_views = check_int_at_least(self.n_views, "n_views", 2)
        check_positive(self.tau, "tau")
        if self.inpainting_mask not in ("center", "random"):
            raise InputError(f"inpainting_mask must be 'center' or 'random', got {self.inpainting_mask!r}")
        self.combinations = check_combinations(self.combinations)
        self.adaptive_combination = check_combinations([self.adaptive_combination])[0]
        self.adaptive_images = check_int_at_least(self.adaptive_images, "adaptive_images", 1)
        known = [name for name, _ in CLASSIFIERS]
        unknown = [m for m in self.adaptive_models if m not in known]
        if unknown:
            raise InputError(f"adaptive_models {unknown} are not among the ablation's classifiers {known}")
        if self.head_width is not None:
            self.head_width = check_int_at_least(self.head_width, "head_width", 1)

    def task_options(self, name: str) -> dict[str, Any]:
        """What ``ensure_ssl_task`` records for ``name`` (as ``advrepair train ssl`` does)."""
        if name == "contrastive":
            return {"tau": self.tau, "n_views": self.n_views}
        options: dict[str, Any] = {"mask": self.inpainting_mask} if name == "inpainting" else {}
        return options if self.head_width is None else {**options, "width": self.head_width}

    def zoo_head(self, classifier: str, task: str) -> str | None:
        """The zoo head of ``task`` for ``classifier`` with this config's options, or None."""
        suffix = "inpainting-random" if task == "inpainting" and self.inpainting_mask == "random" else task
        name = f"{classifier}-{suffix}"
        if name not in zoo.ENTRIES or not zoo.is_shipped(name) or self.head_width is not None:
            return None
        options = zoo.card(name).parent.get("task", {})
        if task == "contrastive" and (options.get("tau"), options.get("n_views")) != (self.tau, self.n_views):
            return None
        return name

    def recipe_for(self, model: str) -> ClassifierRecipe:
        return self.standard if model == "fmnist-cnn-standard" else self.adversarial
