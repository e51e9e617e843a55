"""Ray scaling: the same evaluation (PGD on a SmallCNN, with and without a defense) with 1 and
with 2 workers of a local Ray cluster, against the single-process harness as the peer, all
in the same run. Reports images per second, the speed-up over one process, and whether
the merged results equal the single-process ones (they must).

    python bench/ray_scaling.py [--images 400] [--steps 10] [--workers 1 2] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from advrepair.data import ImageDataset
from advrepair.defenses import MedianFilter
from advrepair.evaluation import AttackSpec, ModelEntry, ResultsStore, evaluate_matrix
from advrepair.evaluation.distributed import evaluate_matrix_ray
from advrepair.models import SmallCNN


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench/results/ray_scaling.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(args.images, 1, 28, 28, generator=gen) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (args.images,), generator=gen)
    data = ImageDataset(name="random", images=images, labels=labels, classes=[str(i) for i in range(10)], split="test")
    model = SmallCNN().eval()
    entries = [ModelEntry("cnn", model, card={"weights_sha256": "bench"}, defenses={"median": MedianFilter(3)})]
    specs = [AttackSpec("pgd", {"eps": 0.1, "alpha": 0.025, "steps": args.steps})]
    torch.set_num_threads(1)  # what each Ray worker uses: compare like with like
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        single = evaluate_matrix(data, entries, specs, ResultsStore(Path(tmp) / "one"), batch_size=100,
                                 progress=False)
        single_seconds = time.perf_counter() - start
        rows = [{"runner": "single process, 1 thread", "workers": 1, "seconds": single_seconds,
                 "images_per_second": args.images / single_seconds, "speedup": 1.0}]
        for workers in args.workers:
            start = time.perf_counter()
            merged = evaluate_matrix_ray(data, entries, specs, ResultsStore(Path(tmp) / f"ray{workers}"),
                                         workers=workers, batch_size=100)
            seconds = time.perf_counter() - start
            equal = [(a["key"], a["n_correct"]) for a in single] == [(b["key"], b["n_correct"]) for b in merged]
            rows.append({"runner": f"ray, {workers} worker(s)", "workers": workers, "seconds": seconds,
                         "images_per_second": args.images / seconds, "speedup": single_seconds / seconds,
                         "equal_to_single_process": equal})
            print(f"ray {workers} worker(s): {seconds:.1f} s ({single_seconds / seconds:.2f}x one process), "
                  f"results equal: {equal}")
    result = {"benchmark": "ray_scaling", "images": args.images, "attack": specs[0].params, "cpus": os.cpu_count(),
              "load_average_1min": os.getloadavg()[0], "platform": platform.platform(), "torch": torch.__version__,
              "note": "wall seconds include starting the local Ray cluster", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
