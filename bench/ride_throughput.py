"""RIDE throughput: seconds per image of the batched engine (B networks fitted together as one
grouped convolution, per-model Adam on stacked tensors) at several batch sizes, against the
one-by-one reference path (``RIDE.fit_sequential``: an ``nn.Conv2d`` network and
``torch.optim.Adam`` per image), measured in the same run with the same settings; the one-by-one
path runs at one thread and at torch's thread count, and the faster is the baseline.

The JSON also bounds what any batching could reach here: the FLOPs of one image's training
step (analytic), the FLOP rate of the one-by-one path, and this machine's large-matmul peak
measured in the same run; ``max_speedup_at_matmul_peak`` = peak / one-by-one rate.

Where RIDE's native engine covers the network (the MNIST network on CPU: one channel, width 16;
``advrepair.defenses.ride.native_engine``) the batched rows run it, and ``grouped`` times the
grouped-convolution engine (``ADVREPAIR_NATIVE_KERNELS=0``) at ``--grouped-batch`` images in the
same rounds. The FLOPs are counted for direct convolutions; on even image sizes the native engine
computes the hidden layers by Winograd's F(2x2, 3x3), 2.25x fewer multiplications, so its rate in
those FLOPs can pass the matmul peak (``hidden_layers_by_winograd``).

Both paths draw the same per-image random numbers, so they compute the same estimates; the
JSON reports the largest difference between them as a correctness check. ``chunked`` fits the
same ``--chunk-images`` images at each chunk size: the evidence for ``RIDE``'s default chunk_size.

Each ratio is the median over paired rounds (both paths timed in the same round). The process
retains freed memory (``advrepair.allocator``) unless ADVREPAIR_RETAIN_FREED_MEMORY=0; the JSON
records which.

    python bench/ride_throughput.py [--batch-sizes 1,16,64,256] [--chunk-images 64] [--chunk-sizes 8,16,32,64] [--iterations 50]
        [--checkpoints 1] [--sequential-images 8] [--mode ride] [--size 28] [--channels 1]
        [--threads N] [--rounds 5] [--device cpu|cuda|auto] [--out bench/results/ride_throughput.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import torch

from advrepair.allocator import retaining_freed_memory
from advrepair.defenses.ride import RIDE, resolve_network
from advrepair.defenses.ride.native_engine import native_engine_covers
from advrepair.engine.native import SWITCH as NATIVE_SWITCH
from advrepair.runtime import resolve_device
from _timing import device_name, matmul_peak_gflops, timed  # bench/ is sys.path[0] when a script runs

#: issue 18: batched at least 10x faster per image than one by one
GOAL_SPEEDUP = 10.0


def flops_per_image_step(spec, channels: int, size: int, batch: int = 1) -> float:  # noqa: ANN001
    """Multiply-adds x 2 of one training step (forward, input and weight gradients; no input
    gradient for the first layer) of one image's network: the work no batching can remove."""
    planes = [channels] + [spec.width] * (spec.depth - 1) + [channels]
    forward = sum(2 * 9 * cin * cout * size * size for cin, cout in zip(planes[:-1], planes[1:]))
    first = 2 * 9 * planes[0] * planes[1] * size * size
    return batch * (3 * forward - first)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-sizes", default="1,16,64,256")
    parser.add_argument("--chunk-images", type=int, default=64,
                        help="images fitted at each of --chunk-sizes (the default chunk_size's evidence)")
    parser.add_argument("--chunk-sizes", default="8,16,32,64")
    parser.add_argument("--iterations", type=int, default=50, help="K (paper: 2000)")
    parser.add_argument("--checkpoints", type=int, default=1, help="T (paper: 5)")
    parser.add_argument("--sequential-images", type=int, default=8)
    parser.add_argument("--grouped-batch", type=int, default=16,
                        help="images of the grouped engine's row (0: none)")
    parser.add_argument("--mode", default="ride", choices=["ride", "dae", "dip", "idip"])
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds (medians reported)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ride_throughput.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    chunks = [int(s) for s in args.chunk_sizes.split(",")]
    images = torch.rand(max(sizes + [args.sequential_images, args.chunk_images]), args.channels, args.size, args.size,
                        generator=torch.Generator().manual_seed(0)).to(resolve_device(args.device))
    device = images.device
    load_before = os.getloadavg()

    def defense(chunk: int) -> RIDE:
        return RIDE(mode=args.mode, iterations=args.iterations, checkpoints=args.checkpoints,
                    seed=0, chunk_size=chunk)

    # warm-up (oneDNN primitive creation) for both paths
    defense(4).fit(images[:4])
    defense(1).fit_sequential(images[:1])

    seq_images = images[: args.sequential_images]
    # Paired rounds: this VM's speed drifts by tens of percent within minutes, so every ratio is
    # taken within one round (the one-by-one path timed in the same round), the order of the
    # measurements alternates between rounds, and the JSON reports the median over rounds.
    # The one-by-one path is timed at one thread too (its tiny convolutions can run faster on one)
    # and each round's faster of the two is the baseline.
    threads = torch.get_num_threads()
    seq_threads = sorted({1, threads})
    jobs: list[tuple[str, int, int]] = [("one_by_one", t, args.sequential_images) for t in seq_threads]
    jobs += [("batched", b, b) for b in sizes] + [("chunked", c, args.chunk_images) for c in chunks]
    spec = resolve_network("auto", args.channels)
    native = native_engine_covers(spec, args.channels, RIDE().dropout, device, images.dtype)
    if native and args.grouped_batch:
        jobs.append(("grouped", args.grouped_batch, args.grouped_batch))
    per_image: dict[tuple[str, int], list[float]] = {(kind, size): [] for kind, size, _ in jobs}
    seq = None
    for r in range(args.rounds):
        for kind, size, count in (jobs if r % 2 == 0 else jobs[::-1]):
            if kind == "one_by_one":
                torch.set_num_threads(size)
                seq, t = timed(defense(1).fit_sequential, seq_images)
                torch.set_num_threads(threads)
            elif kind == "grouped":
                os.environ[NATIVE_SWITCH] = "0"
                _, t = timed(defense(size).fit, images[:count])
                del os.environ[NATIVE_SWITCH]
            else:
                _, t = timed(defense(size).fit, images[:count])
            per_image[(kind, size)].append(t / count)
    assert seq is not None
    seq_rounds = [min(times) for times in zip(*(per_image[("one_by_one", t)] for t in seq_threads))]
    seq_per_image = statistics.median(seq_rounds)

    def speedups(kind: str, size: int) -> list[float]:
        return [one / other for one, other in zip(seq_rounds, per_image[(kind, size)])]

    rows = []
    for b in sizes:
        t_img = statistics.median(per_image[("batched", b)])
        rows.append({"batch_size": b, "seconds_per_image": t_img,
                     "seconds_per_image_per_step": t_img / (args.iterations * args.checkpoints),
                     "speedup_vs_one_by_one": statistics.median(speedups("batched", b)),
                     "speedup_rounds": speedups("batched", b)})
    chunk_rows = []
    for chunk in chunks:
        chunk_rows.append({"chunk_size": chunk, "images": args.chunk_images,
                           "seconds_per_image": statistics.median(per_image[("chunked", chunk)]),
                           "speedup_vs_one_by_one": statistics.median(speedups("chunked", chunk)),
                           "speedup_rounds": speedups("chunked", chunk)})
    check = defense(max(sizes)).fit(seq_images).estimate
    peak = max(matmul_peak_gflops(device).values())
    best = max(rows, key=lambda r: r["speedup_vs_one_by_one"])
    flops = flops_per_image_step(spec, args.channels, args.size)
    steps = args.iterations * args.checkpoints
    seq_gflops = flops * steps / seq_per_image / 1e9
    for row in rows:
        row["gflops"] = flops * steps / row["seconds_per_image"] / 1e9
    # Batching removes overhead, not arithmetic: even at the machine's matmul peak the batched
    # engine cannot beat one-by-one by more than peak / (one-by-one FLOP rate).
    bound = peak / seq_gflops
    result = {
        "benchmark": "ride_throughput",
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(), "retains_freed_memory": retaining_freed_memory(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "mode": args.mode,
        "image": [args.channels, args.size, args.size],
        "network": {"width": spec.width, "depth": spec.depth, "dropout_layers": list(spec.dropout_layers)},
        "iterations": args.iterations, "checkpoints": args.checkpoints,
        "steps_per_image": args.iterations * args.checkpoints,
        "rounds": args.rounds,
        "one_by_one": {"images": args.sequential_images, "seconds_per_image": seq_per_image,
                       "seconds_per_image_rounds": seq_rounds,
                       "seconds_per_image_rounds_by_threads": {t: per_image[("one_by_one", t)] for t in seq_threads},
                       "path": "RIDE.fit_sequential (nn.Conv2d + torch.optim.Adam per image)"},
        "batched": rows,
        "best": {"batch_size": best["batch_size"], "speedup_vs_one_by_one": best["speedup_vs_one_by_one"]},
        "chunked": chunk_rows,
        "engine": "native" if native else "grouped",
        "hidden_layers_by_winograd": native and args.size % 2 == 0,
        "grouped": None if ("grouped", args.grouped_batch) not in per_image else {
            "batch_size": args.grouped_batch,
            "seconds_per_image": statistics.median(per_image[("grouped", args.grouped_batch)]),
            "speedup_vs_one_by_one": statistics.median(speedups("grouped", args.grouped_batch)),
            "native_speedup_rounds": [g / b for g, b in zip(per_image[("grouped", args.grouped_batch)],
                                                            per_image[("batched", args.grouped_batch)])]
            if ("batched", args.grouped_batch) in per_image else None},
        "default_chunk_size": RIDE().chunk_size,
        "goal_speedup": GOAL_SPEEDUP,
        "goal_met": best["speedup_vs_one_by_one"] >= GOAL_SPEEDUP,
        "roofline": {
            "flops_per_image_step": flops,
            "one_by_one_gflops": seq_gflops,
            "best_batched_gflops": best["gflops"],
            "matmul_peak_gflops": peak,
            "max_speedup_at_matmul_peak": bound,
            "goal_reachable_on_this_machine": bound >= GOAL_SPEEDUP,
            "goal_share_of_matmul_peak": GOAL_SPEEDUP / bound,
        },
        "max_abs_difference_batched_vs_one_by_one": float((check - seq.estimate).abs().max()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
