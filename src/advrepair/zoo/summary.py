"""What ``advrepair zoo list`` prints: one row per entry, its metrics from the shipped card."""
from __future__ import annotations

from typing import Any

from advrepair.zoo.registry import ENTRIES, ZooEntry, entry
from advrepair.zoo.store import card, is_shipped


def entries() -> list[ZooEntry]:
    return list(ENTRIES.values())


def describe(name: str) -> dict[str, Any]:
    """name, kind, dataset, parent, eps, metrics (empty until built), recipe and provenance."""
    e = entry(name)
    shipped = is_shipped(name)
    c = card(name) if shipped else None
    return {"name": e.name, "kind": e.kind.value, "dataset": e.dataset, "parent": e.parent, "eps": e.eps,
            "description": e.description, "arch": e.arch, "seed": e.seed,
            "recipe": (e.recipe.to_dict() if e.recipe is not None
                       else {"untrained": True} if e.kind.value == "classifier" else None),
            "transform": e.transform or None,
            "shipped": shipped, "weights_sha256": c.weights_sha256 if c else None,
            "metrics": c.metrics if c else [],
            "stopping_epoch": c.parent.get("stopping_epoch") if c else None,
            "provenance": c.parent.get("provenance") if c else None}


def metric_text(metric: dict[str, Any]) -> str:
    """'clean 91.2 ± 0.3 % (n=10000)' or 'AutoAttack eps=0.1: 70.1 ± 1.4 % (n=1000)'."""
    atk = metric.get("attack")
    value, se = metric["value"], metric.get("stderr")
    if metric["metric"].startswith("mean_ssl_loss"):
        label = metric["metric"].replace("mean_ssl_loss_", "L_s ")
        return f"{label} {value:.3f}" + (f" ± {se:.3f}" if se is not None else "")
    if metric["metric"].startswith("mean_"):  # a purifier's held-out distances (not accuracies)
        what = metric["metric"].removeprefix("mean_").replace("_", " ")
        return f"{what} {value:.4f}" + (f" ± {se:.4f}" if se is not None else "") + f" (n={metric['n_images']})"
    if metric["metric"] == "clean_accuracy_purified":
        return f"clean through P: {100 * value:.1f} ± {100 * (se or 0):.1f}% (n={metric['n_images']})"
    if atk is None:
        label = "clean"
    elif metric["metric"].endswith("_defended") and atk.get("gradient_of_g"):
        label = f"{atk['name']}-{atk.get('steps')} BPDA-I eps={atk['eps']:.3g}"
    else:
        steps = atk.get("steps")
        label = atk["name"] + (f"-{steps}" if steps and atk["name"] != "autoattack" else "")
        label += f" eps={atk['eps']:.3g}"
    if metric["metric"].endswith("_defended"):
        label = "f_a(g(x)) " + label
    err = f" ± {100 * se:.1f}" if se is not None else ""
    return f"{label}: {100 * value:.1f}{err}% (n={metric['n_images']})"


def markdown_table() -> str:
    """ZOO.md's table: every entry with what its card measured (``advrepair zoo list --markdown``)."""
    lines = ["| name | kind | parent | trained | measured (attack, images, ± s.e.) |", "|---|---|---|---|---|"]
    for e in entries():
        d = describe(e.name)
        prov = d["provenance"] or {}
        recipe = d["recipe"] or {}
        if e.kind.value == "classifier" and recipe.get("untrained"):
            how = "untrained (seeded initialization)"
        elif e.kind.value == "classifier":
            how = (f"{recipe.get('epochs')} ep" + (f", PGD-{recipe['steps']} eps {recipe['eps']:g}"
                                                   if recipe.get("adversarial") else
                                                   f", on g(x) of {e.parent}" if e.transform else ", standard"))
        elif e.kind.value == "ssl head":
            last = d["stopping_epoch"] == recipe.get("epochs")
            how = (f"all {recipe.get('epochs')} epochs (held-out loss still falling; best = last)" if last
                   else f"stopped at epoch {d['stopping_epoch']} of {recipe.get('epochs')} (held-out loss)")
        elif e.kind.value == "purifier":
            images = recipe.get("train_subset") or "all"
            how = (f"{recipe.get('epochs')} ep on {images} training images, against SSP at "
                   f"{e.parent} {recipe.get('layer')}")
        else:
            how = "selected, not trained"
        if prov.get("training_seconds") is not None:
            how += f", {prov['training_seconds'] / 60:.1f} min"
        measured = "<br>".join(metric_text(m) for m in d["metrics"]) if d["shipped"] else "not built"
        lines.append(f"| `{e.name}` | {e.kind.value} | {d['parent'] or ''} | {how} | {measured} |")
    return "\n".join(lines) + "\n"
