"""Reverse-attack throughput against a plain batched PyTorch implementation of the same
algorithm and against the machine's fp32 matmul peak, all measured in the same run.

The plain reference is what a careful but speed-unaware researcher writes: every view of a
batch of images in one computation, the model as its checkpoint loads, one
``torch.autograd.grad`` per step, the same K, views, negatives, augmentations and per-image
random numbers. Ours is ``ReverseAttack`` on the model as the evaluations prepare it
(``zoo.load``: channels-last) with its default (automatic) chunk size. The reference is also
timed on the channels-last model, so the JSON shows how much of the gain is the layout; ours
runs twice more: without the fused first convolution + max-pool (``ADVREPAIR_FUSED_CONV_POOL=0``,
what the native kernel adds) and with PyTorch's own input gradients throughout
(``ADVREPAIR_TAP_INPUT_GRADIENTS=0``, which turns off the tap gradients and the fusion both).
The five run in paired rounds (order rotating); the JSON keeps every round and reports medians.

Useful FLOPs are counted analytically per image-step: the forward of every convolution and
linear layer on each view, the backward to the image through them (input gradients only: the
weights are frozen), and the loss's similarity products; the negatives' embeddings are
computed once per call and not counted.

On a GPU (``--device cuda``) the same sides run there (the tap gradients and the fusion are
CPU-only, so ours with and without them is the same computation) and the peak is that of ``torch.mm`` on the device.

    python bench/reverse_attack_throughput.py [--images 256] [--reference-batch 64] [--rounds 3]
        [--device cpu|cuda|auto] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advrepair import zoo
from advrepair.allocator import retaining_freed_memory
from advrepair.data import load_dataset
from advrepair.defenses import ReverseAttack
from advrepair.engine import random_start, random_start_numbers
from advrepair.engine import fused_conv_pool_available
from advrepair.engine import fused_conv_pool as fusion
from advrepair.engine import thin_convolutions as taps
from advrepair.runtime import layout_of, resolve_device
from advrepair.seeding import per_image_uniform
from advrepair.ssl import ContrastiveTask
from advrepair.ssl.augment import _augment_views
from _timing import device_name, matmul_peak_gflops, timed  # bench/ is sys.path[0] when a script runs


def plain_reverse_attack(defense: ReverseAttack, classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 for one batch, written plainly (the reference)."""
    task: ContrastiveTask = defense.tasks[0]  # type: ignore[assignment]
    n_views, tau = task.n_views, task.tau
    with torch.no_grad():
        negatives = F.normalize(task.context(classifier), dim=1)
    numbers = defense._draw(images, defense.steps, "reverse-views")[0]
    u0 = per_image_uniform(images, defense.seed, random_start_numbers(images, defense.norm), "reverse-start")
    x = random_start(images, defense.eps_v, defense.norm, u0)
    b = images.shape[0]
    eye = torch.eye(n_views, dtype=torch.bool, device=images.device)
    for k in range(defense.steps):
        x = x.detach().requires_grad_(True)
        views = _augment_views(x, numbers[:, k], task.augment_cfg)
        z = F.normalize(task.head(classifier.features(views)), dim=1).view(b, n_views, -1)
        s_vv = z @ z.transpose(1, 2) / tau
        s_vn = z @ negatives.t() / tau
        denom = torch.logsumexp(torch.cat([s_vv.masked_fill(eye, float("-inf")), s_vn], 2), 2)
        loss = (denom - s_vv.masked_fill(eye, 0.0).sum(2) / (n_views - 1)).mean(1).sum()
        (g,) = torch.autograd.grad(loss, x)
        x = x.detach() - defense.step_size * g.sign()
        x = torch.min(torch.max(x, images - defense.eps_v), images + defense.eps_v).clamp(0, 1)
    return x.detach()


def switched_off(switch: str, defense: ReverseAttack, images: torch.Tensor) -> torch.Tensor:
    """Ours with one of its fast paths switched off (``switch=0``)."""
    os.environ[switch] = "0"
    try:
        return defense(images)
    finally:
        del os.environ[switch]


def plain_in_batches(defense: ReverseAttack, classifier: nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([plain_reverse_attack(defense, classifier, chunk) for chunk in images.split(batch)])


def useful_flops_per_image_step(classifier: nn.Module, task: ContrastiveTask, image: torch.Tensor) -> float:
    """Forward + input-gradient FLOPs of every conv / linear layer on ``task.n_views`` views,
    plus the loss's view-view and view-negative similarities."""
    flops = [0.0]

    def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            flops[0] += 2.0 * output.numel() * per_output
        elif isinstance(module, nn.Linear):
            flops[0] += 2.0 * output.numel() * module.in_features

    layers = [m for m in [*classifier.modules(), *task.head.modules()] if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad():
            task.head(classifier.features(image.expand(task.n_views, -1, -1, -1)))
    finally:
        for h in hooks:
            h.remove()
    d, m, n = task.head.config["out_dim"], task.negatives.shape[0], task.n_views
    return 2 * flops[0] + 2 * 2.0 * n * (n + m) * d  # forward + backward of layers and similarities


@torch.no_grad()
def same_predictions(model_a: nn.Module, a: torch.Tensor, model_b: nn.Module, b: torch.Tensor) -> float:
    return float((model_a(a).argmax(1) == model_b(b).argmax(1)).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--reference-batch", type=int, default=64, help="the plain reference's batch (the issue's 64)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--out", type=Path, default=Path("bench/results/reverse_attack_throughput.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    plain_model, _ = zoo.load("fmnist-cnn-pgd", device, channels_last=False)
    fast_model, _ = zoo.load("fmnist-cnn-pgd", device)
    task, _ = zoo.load("fmnist-cnn-pgd-contrastive", device)
    assert isinstance(task, ContrastiveTask)
    try:
        x, _ = next(iter(load_dataset("fashion-mnist", split="test").batches(args.images)))
        image_source = "fashion-mnist test"
    except Exception:  # no dataset on this machine: the shipped bank's real images
        x, image_source = zoo.load_negatives()[: args.images], "zoo negative bank"
    x = x.to(device)
    ours = ReverseAttack(fast_model, task, eps_v=0.2, steps=args.steps, seed=0)
    reference = ReverseAttack(plain_model, task, eps_v=0.2, steps=args.steps, seed=0)
    ours(x[:8])
    plain_in_batches(reference, plain_model, x[:8], 8)  # warm-up of both paths
    peak = matmul_peak_gflops(device)
    sides: dict[str, Any] = {
        "ours": lambda: ours(x),
        "ours_without_tap_gradients": lambda: switched_off(taps.SWITCH, ours, x),
        "ours_without_fused_conv_pool": lambda: switched_off(fusion.SWITCH, ours, x),
        "plain": lambda: plain_in_batches(reference, plain_model, x, args.reference_batch),
        "plain_on_channels_last": lambda: plain_in_batches(reference, fast_model, x, args.reference_batch),
    }
    rounds: list[dict[str, float]] = []
    outputs: dict[str, torch.Tensor] = {}
    for r in range(args.rounds):  # paired rounds, order rotating: the VM's speed drifts
        order = list(sides)[r % len(sides):] + list(sides)[: r % len(sides)]
        seconds = {}
        for name in order:
            outputs[name], seconds[name] = timed(sides[name])
        rounds.append(seconds)
    peak_after = matmul_peak_gflops(device)
    flops = useful_flops_per_image_step(plain_model, task, x[:1]) * args.steps
    n = args.images
    best_peak = max(max(peak.values()), max(peak_after.values()))
    one_step = ReverseAttack(plain_model, task, eps_v=0.2, steps=1, seed=0)
    median = {name: statistics.median(r[name] for r in rounds) for name in sides}

    def ratio(slow: str, fast: str) -> dict[str, Any]:
        per_round = [r[slow] / r[fast] for r in rounds]
        return {"median": statistics.median(per_round), "rounds": per_round}

    repaired, plain = outputs["ours"], outputs["plain"]
    result = {
        "benchmark": "reverse_attack_throughput",
        "model": "zoo fmnist-cnn-pgd + fmnist-cnn-pgd-contrastive (small-cnn width 32, 28x28x1)",
        "images_from": image_source, "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "retains_freed_memory": retaining_freed_memory(),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "steps": args.steps, "views": task.n_views, "negatives": int(task.negatives.shape[0]), "images": n,
        "rounds": args.rounds, "seconds_per_round": rounds,
        "useful_gflop_per_image": flops / 1e9,
        "matmul_peak_gflops": {"before": peak, "after": peak_after, "best": best_peak},
        "ours": {"images_per_second": n / median["ours"], "seconds": median["ours"], "chunk_size": ours.chunk_for(x),
                 "layout": layout_of(fast_model), "tap_input_gradients": device.type == "cpu",
                 "fused_conv_pool": device.type == "cpu" and fused_conv_pool_available(),
                 "useful_gflops": n * flops / median["ours"] / 1e9,
                 "fraction_of_matmul_peak": n * flops / median["ours"] / 1e9 / best_peak},
        "ours_without_tap_gradients": {"images_per_second": n / median["ours_without_tap_gradients"],
                                       "seconds": median["ours_without_tap_gradients"]},
        "ours_without_fused_conv_pool": {"images_per_second": n / median["ours_without_fused_conv_pool"],
                                         "seconds": median["ours_without_fused_conv_pool"]},
        "plain_reference": {"images_per_second": n / median["plain"], "seconds": median["plain"],
                            "batch": args.reference_batch, "layout": layout_of(plain_model),
                            "useful_gflops": n * flops / median["plain"] / 1e9},
        "plain_reference_on_channels_last_model": {"images_per_second": n / median["plain_on_channels_last"],
                                                   "seconds": median["plain_on_channels_last"],
                                                   "batch": args.reference_batch},
        "speedup_ours_over_plain": ratio("plain", "ours"),
        "speedup_ours_over_plain_on_channels_last": ratio("plain_on_channels_last", "ours"),
        "speedup_from_tap_gradients": ratio("ours_without_tap_gradients", "ours"),
        "speedup_from_fused_conv_pool": ratio("ours_without_fused_conv_pool", "ours"),
        # one step on the same layout: the same computation up to the tap gradients' float order
        "max_abs_difference_after_one_step_same_layout": float(
            (one_step(x[:64]) - plain_in_batches(one_step, plain_model, x[:64], 64)).abs().max()),
        # K sign steps amplify float-order differences (layout, taps): reported, not asserted
        "fraction_of_pixels_differing_after_all_steps": float((repaired - plain).abs().gt(1e-6).float().mean()),
        "fraction_of_pixels_differing_from_ours_without_taps": float(
            (repaired - outputs["ours_without_tap_gradients"]).abs().gt(1e-6).float().mean()),
        "fraction_of_pixels_differing_from_ours_without_fusion": float(
            (repaired - outputs["ours_without_fused_conv_pool"]).abs().gt(1e-6).float().mean()),
        "same_prediction_as_ours_without_fusion": same_predictions(
            fast_model, repaired, fast_model, outputs["ours_without_fused_conv_pool"]),
        "same_prediction_after_all_steps": same_predictions(fast_model, repaired, plain_model, plain),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
