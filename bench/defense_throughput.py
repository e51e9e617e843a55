"""Throughput of every defense: images per second and classifier passes per image, with the
classifier's own forward pass as the peer measured in the same run (ratio = how many
classifier forwards one defended image costs in time), on CPU and on CUDA when present.

Defenses run with untrained parts (random heads, purifier, f_b): speed does not depend
on the weights. The JSON records the machine's load average, since 2-core timings taken
beside other work are not comparable.

    python bench/defense_throughput.py [--images 64] [--device auto] [--only NAME ...] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from advrepair.defenses import (AdversarialTransformation, BitDepthReduction, JPEGCompression, MedianFilter,
                                NRPDefense, RandomResizePad, ReverseAttack, TotalVariation)
from advrepair.models import Purifier, SmallCNN, SmallVGG
from advrepair.ssl import build_task
from advrepair.runtime import resolve_device
from _timing import device_name, timed  # bench/ is sys.path[0] when a script runs


class PassCounter:
    """Counts images through the classifier's first convolution: every forward or
    ``features`` call of the classifier passes there."""

    def __init__(self, model: nn.Module) -> None:
        self.images = 0
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        first.register_forward_hook(lambda _m, inputs, _out: self._add(inputs[0].shape[0]))

    def _add(self, n: int) -> None:
        self.images += n


def builders(clf: SmallCNN, device: torch.device) -> dict[str, Callable[[], nn.Module]]:
    negatives = torch.rand(64, 1, 28, 28, device=device)
    contrastive = lambda: build_task("contrastive", clf, negatives=negatives).to(device)  # noqa: E731
    out: dict[str, Callable[[], nn.Module]] = {
        "reverse-attack (contrastive, K=40)": lambda: ReverseAttack(clf, contrastive(), eps_v=0.2, steps=40),
        "reverse-attack (3 tasks, K=40)": lambda: ReverseAttack(clf, [
            (contrastive(), 1.0), (build_task("rotation", clf).to(device), 50.0),
            (build_task("inpainting", clf).to(device), 10.0)], eps_v=0.2, steps=40),
        "adversarial-transformation (N=13)": lambda: AdversarialTransformation(SmallVGG().to(device).eval()),
        "nrp": lambda: NRPDefense(Purifier().to(device).eval()),
        "nrp dynamic": lambda: NRPDefense(Purifier().to(device).eval(), dynamic=True),
        "jpeg q75": lambda: JPEGCompression(75),
        "tv (split-Bregman)": lambda: TotalVariation(0.03, "bregman"),
        "median 3x3": lambda: MedianFilter(3),
        "bit depth 4": lambda: BitDepthReduction(4),
        "resize-pad": lambda: RandomResizePad(seed=0),
    }
    try:
        from advrepair.defenses.ride import RIDE

        out["ride (K=20 x T=5 steps)"] = lambda: RIDE(iterations=20)
    except (ImportError, TypeError):
        pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", nargs="*", default=None, help="substrings of defense names to run")
    parser.add_argument("--out", type=Path, default=Path("bench/results/defense_throughput.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    base = SmallCNN().to(device).eval()
    images = torch.rand(args.images, 1, 28, 28, device=device)
    with torch.no_grad():
        base(images)  # warm-up
        peer_seconds = timed(lambda: [base(images) for _ in range(5)])[1] / 5
    clf = PassCounter(base)
    rows = []
    for name, build in builders(base, device).items():
        if args.only and not any(s in name for s in args.only):
            continue
        try:
            defense = build()
        except TypeError as exc:  # a defense whose constructor changed: say so rather than guess
            rows.append({"defense": name, "error": str(exc)})
            continue
        clf.images = 0
        with torch.enable_grad():
            out, seconds = timed(defense, images)
        assert out.shape == images.shape
        rows.append({"defense": name, "seconds": seconds, "images_per_second": args.images / seconds,
                     "classifier_passes_per_image": clf.images / args.images,
                     "ratio_to_one_classifier_forward": seconds / peer_seconds})
        print(f"{name:40s} {args.images / seconds:9.1f} img/s  {seconds / peer_seconds:9.1f}x a classifier pass")
    result = {"benchmark": "defense_throughput", "device": str(device), "device_name": device_name(device),
              "images": args.images,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
              "load_average_1min": os.getloadavg()[0], "classifier_forward_seconds": peer_seconds, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
