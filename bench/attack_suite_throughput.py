"""Throughput of every registered attack: images per second and model passes per image, with
the classifier's own forward + backward pass as the peer measured in the same run (ratio =
how many gradient evaluations one attacked image costs in time), on CPU and on CUDA when
present.

Budgets are the usual short settings (listed in the JSON with every row); speed per pass
does not depend on the weights, so the model is a random-weight SmallCNN unless
``--trained`` names a checkpoint stem. Every registered attack must appear: a new attack
without a row here makes the script fail, so the table cannot silently go stale.

    python bench/attack_suite_throughput.py [--images 64] [--device auto] [--only NAME ...]
        [--trained STEM] [--out bench/results/attack_suite_throughput.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from advrepair.attacks import ATTACKS, make_attack
from advrepair.models import SmallCNN, load_checkpoint
from advrepair.runtime import resolve_device
from _timing import device_name, timed  # bench/ is sys.path[0] when a script runs

EPS = 0.1


def settings(source: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Parameters per registry name (eps added for every attack)."""
    return {
        "fgsm": {},
        "pgd": {"alpha": 0.025, "steps": 20},
        "bim": {"alpha": 0.01, "steps": 10},
        "mifgsm": {"steps": 10},
        "difgsm": {"steps": 10},
        "tifgsm": {"steps": 10},
        "cw": {"steps": 50},
        "cw-pgd": {"steps": 20},
        "ssp": {"steps": 10, "layer": "body.3"},
        "apgd": {"steps": 100},
        "apgd-ce": {"steps": 100},
        "apgd-dlr": {"steps": 100},
        "apgd-t": {"steps": 100, "n_target_classes": 9},
        "autoattack": {"version": "standard"},
        "square": {"n_queries": 1000},
        "fab": {"steps": 100},
        "fab-t": {"steps": 100},
        "hopskipjump": {"max_queries": 1000},
        "rfgsm": {},
        "spsa": {"steps": 10, "samples": 128},
        "genattack": {"n_queries": 1000},
        "transfer": {"source": source, "attack": "pgd", "alpha": 0.025, "steps": 20},
    }


def accepts_eps(name: str) -> bool:
    import inspect

    return "eps" in inspect.signature(ATTACKS[name].__init__).parameters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="*", default=None, help="registry names to run")
    parser.add_argument("--trained", default=None, help="checkpoint stem of a classifier (default: random SmallCNN)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/attack_suite_throughput.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    if args.trained:
        model, _ = load_checkpoint(args.trained, map_location=device)
        model = model.to(device).eval()
    else:
        model = SmallCNN().to(device).eval()
    source = SmallCNN().to(device).eval()  # the transfer attack's surrogate
    images = torch.rand(args.images, 1, 28, 28, device=device)
    with torch.no_grad():
        labels = model(images).argmax(1)  # every image starts correctly classified
    table = settings(source)
    missing = sorted(set(ATTACKS) - set(table))
    if missing:
        raise SystemExit(f"registered attacks without a benchmark row: {missing}; add them to settings()")

    x = images.clone().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(x), labels), x)  # warm-up
    peer = timed(lambda: [torch.autograd.grad(F.cross_entropy(model(x), labels), x) for _ in range(5)])[1] / 5

    rows: list[dict[str, Any]] = []
    result = {"benchmark": "attack_suite_throughput", "device": str(device), "images": args.images,
              "eps": EPS, "model": args.trained or "SmallCNN, random weights; labels = its predictions",
              "device_name": device_name(device),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
              "load_average_1min": os.getloadavg()[0], "forward_backward_seconds": peer, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, params in table.items():
        if args.only and name not in args.only:
            continue
        kwargs = dict(params, eps=EPS) if accepts_eps(name) else dict(params)
        attack = make_attack(name, model, **kwargs)
        adv, seconds = timed(attack, images, labels)
        with torch.no_grad():
            robust = (model(adv).argmax(1) == labels).float().mean().item()
        per = attack.stats.per_image()
        shown = {k: (v if isinstance(v, (int, float, str, bool)) else type(v).__name__) for k, v in kwargs.items()}
        rows.append({"attack": name, "params": shown, "seconds": seconds,
                     "images_per_second": args.images / seconds,
                     "forward_passes_per_image": per["forward_per_image"],
                     "backward_passes_per_image": per["backward_per_image"],
                     "ratio_to_one_forward_backward": seconds / peer, "robust_accuracy": robust})
        print(f"{name:12s} {args.images / seconds:9.1f} img/s  fwd {per['forward_per_image']:8.1f} "
              f"bwd {per['backward_per_image']:7.1f} per image  {seconds / peer:8.1f}x one fwd+bwd  "
              f"robust {robust:.2f}", flush=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")  # after every row: a cut-off run keeps its rows
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
