"""Attack throughput, ours against torchattacks in the same run, with robust accuracy beside it.

Models: the zoo's Fashion-MNIST CNNs (adversarially trained "fashion-cnn" = fmnist-cnn-pgd and
"fashion-cnn-standard" = fmnist-cnn-standard) on balanced test images, and a
PreAct-ResNet-18 at 32x32 (random weights, random images, labels = its own predictions so
every image starts correctly classified: a throughput measurement only).

    python bench/attack_throughput.py [--n-cnn 200] [--n-resnet 16] [--device cpu|cuda|auto] [--out FILE]

Output: JSON with images/second for each (model, attack, library), the ratio ours/theirs
(> 1: ours is faster) and the robust accuracy each produced, per paired round and as medians.
AutoAttack rows also give ours over three model-time floors (the model passes it made, without
its own work): each member's passes at its first batch size (``ours_over_floor``), each call at
its own batch size (``ours_over_floor_per_call``; both time each size alone and keep the best of
three short timings), and every call replayed in order (``ours_over_replayed_calls``: as long
a stretch as the attack, so it sees the same machine). The floors make the passes the way
our attacks do (thin first convolutions' input gradients by taps, ``advrepair.engine``);
torchattacks gets the model as it is.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torchattacks

from advrepair.allocator import retaining_freed_memory
from advrepair.attacks import APGD, FGSM, PGD, AutoAttack, Square
from advrepair.engine import fast_input_gradients, fused_conv_pool_available, tap_input_gradients_enabled
from advrepair.models import PreActResNet18
from advrepair.runtime import resolve_device
from _timing import device_name, synchronize  # bench/ is sys.path[0] when a script runs


def fashion_cnn(n: int, name: str = "fmnist-cnn-pgd", device: torch.device = torch.device("cpu"),
                ) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]:
    """A zoo CNN, in the layout the evaluations use (both libraries attack the same module)."""
    from advrepair import zoo
    from advrepair.data import balanced_subset, load_dataset
    from advrepair.runtime import layout_of

    test = load_dataset("fashion-mnist", split="test")
    x, y = balanced_subset(test, n, seed=0).tensors()
    model, card = zoo.load(name, device)
    return model, x.to(device), y.to(device), f"zoo {name} (sha256 {card.weights_sha256[:12]}, {layout_of(model)})"


def resnet(n: int, device: torch.device = torch.device("cpu")) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]:
    torch.manual_seed(0)
    model = PreActResNet18().eval().to(device)
    x = torch.rand(n, 3, 32, 32).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, "preact-resnet18, random weights, labels = own predictions"


def pairs(eps: float, n_classes: int, fast: bool) -> list[tuple[str, Callable[[Any], Any], Callable[[Any], Any]]]:
    alpha = 2.5 * eps / 20
    out = [
        ("fgsm", lambda m: FGSM(m, eps=eps), lambda m: torchattacks.FGSM(m, eps=eps)),
        ("pgd-20", lambda m: PGD(m, eps=eps, alpha=alpha, steps=20),
         lambda m: torchattacks.PGD(m, eps=eps, alpha=alpha, steps=20)),
        ("apgd-ce-100", lambda m: APGD(m, eps=eps, steps=100), lambda m: torchattacks.APGD(m, eps=eps, steps=100)),
        ("square-1000", lambda m: Square(m, eps=eps, n_queries=1000),
         lambda m: torchattacks.Square(m, eps=eps, n_queries=1000)),
    ]
    if not fast:
        # torchattacks' AutoAttack(version="standard") runs APGD-CE, APGD-T and FAB-T at their
        # default 10 iterations; the published AutoAttack uses 100. Compare like with like:
        # ours (100) against a torchattacks MultiAttack with the published parameters, and
        # ours restricted to 10 iterations against torchattacks' AutoAttack as shipped.
        out.append(("autoattack-standard", lambda m: AutoAttack(m, eps=eps, version="standard"),
                    lambda m: torchattacks.MultiAttack([
                        torchattacks.APGD(m, eps=eps, steps=100, n_restarts=1, loss="ce", seed=0),
                        torchattacks.APGDT(m, eps=eps, steps=100, n_restarts=1, n_classes=n_classes, seed=0),
                        torchattacks.FAB(m, eps=eps, steps=100, n_restarts=1, multi_targeted=True,
                                         n_classes=n_classes, seed=0),
                        torchattacks.Square(m, eps=eps, n_queries=5000, n_restarts=1, seed=0)])))
        ten = [("apgd-ce", {"steps": 10}), ("apgd-t", {"steps": 10}), ("fab-t", {"steps": 10}),
               ("square", {"n_queries": 5000})]
        out.append(("autoattack-10-iterations", lambda m: AutoAttack(m, eps=eps, version="custom", attacks=ten),
                    lambda m: torchattacks.AutoAttack(m, eps=eps, version="standard", n_classes=n_classes, seed=0)))
    return out


def pass_costs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seconds: float = 0.2) -> dict[str, float]:
    """Seconds per image of one forward and of one backward pass at this batch size (best of 3
    timings of repeated passes, each timing at least ``seconds`` long)."""
    xg = x.clone().requires_grad_(True)

    def timed(fn: Callable[[], Any]) -> float:
        fn()
        best = float("inf")
        for _ in range(3):
            synchronize()
            start, repeats = time.perf_counter(), 0
            while repeats == 0 or time.perf_counter() - start < seconds:
                fn()
                synchronize()
                repeats += 1
            best = min(best, (time.perf_counter() - start) / repeats)
        return best / len(x)

    with torch.no_grad():
        forward = timed(lambda: model(x))
    both = timed(lambda: torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg))
    return {"forward": forward, "backward": max(both - forward, 0.0)}


def model_time_floor(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ours: dict[str, Any]) -> dict[str, Any]:
    """What the model passes alone cost: an AutoAttack member's counted forward and backward
    passes times the per-image cost of a pass at that member's batch size (the images it
    attacked). No implementation of the same algorithm can be faster than this sum, so
    torchattacks' time over it bounds the speed ratio any implementation could reach."""
    members = []
    for m in ours.get("members", []):
        if not m["n_images"]:
            continue
        cost = pass_costs(model, x[: m["n_images"]], y[: m["n_images"]])
        members.append({"attack": m["attack"], "seconds": m["seconds"],
                        "model_seconds": m["forward"] * cost["forward"] + m["backward"] * cost["backward"]})
    return {"members": members, "model_seconds": sum(m["model_seconds"] for m in members)}


def per_call_floor(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   calls: list[tuple[int, bool]]) -> dict[str, Any]:
    """The model time of exactly these calls: each (batch size, gradient or not) costed at its
    own batch size (a forward, or a forward and a backward, timed alone at that size). An
    attack that drops the images it has fooled runs smaller and smaller batches, which cost
    more per image than its first batch; `model_time_floor` prices them all at the first."""
    sizes = sorted({b for b, _ in calls})
    cost: dict[tuple[int, bool], float] = {}
    for b in sizes:
        per_image = pass_costs(model, x[:b], y[:b], seconds=0.05)
        cost[(b, False)] = b * per_image["forward"]
        cost[(b, True)] = b * (per_image["forward"] + per_image["backward"])
    seconds = sum(cost[c] for c in calls)
    return {"model_seconds": seconds, "calls": len(calls), "distinct_batch_sizes": len(sizes),
            "gradient_images": sum(b for b, g in calls if g), "forward_images": sum(b for b, _ in calls)}


def floor_of(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             ours: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The model-time floors of one AutoAttack run of ours ({} for single attacks), keyed by
    the ratio they give."""
    if "members" not in ours:
        return {}
    calls = [tuple(c) for c in ours.pop("calls")]
    with fast_input_gradients(model):  # the passes as our attacks make them
        return {"ours_over_floor": model_time_floor(model, x, y, ours),
                "ours_over_floor_per_call": per_call_floor(model, x, y, calls),
                "ours_over_replayed_calls": replayed_calls(model, x, y, calls)}


def replayed_calls(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   calls: list[tuple[int, bool]]) -> dict[str, Any]:
    """The model time of exactly these calls, run again in their order and back to back: the
    attack's model work without the attack, over as long a stretch as the attack itself (the
    other floors time each batch size alone for a fraction of a second and keep the best, which
    a long run on this VM rarely matches)."""
    repeats = -(-max(b for b, _ in calls) // len(x))
    pool_x, pool_y = x.repeat(repeats, 1, 1, 1), y.repeat(repeats)
    synchronize()
    start = time.perf_counter()
    for b, gradient in calls:
        if gradient:
            xb = pool_x[:b].clone().requires_grad_(True)
            torch.autograd.grad(torch.nn.functional.cross_entropy(model(xb), pool_y[:b]), xb)
        else:
            with torch.no_grad():
                model(pool_x[:b])
    synchronize()
    return {"model_seconds": time.perf_counter() - start, "calls": len(calls)}


def measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, make: Callable[[Any], Any]) -> dict[str, Any]:
    """Seconds of one call; short calls are repeated (for about 3 s, at most 30 times) and the
    best kept, so scheduler noise does not decide a ratio."""
    times, passes, call_logs = [], [], []
    calls: list[tuple[int, bool]] = []
    # images through the model, counted the same way for both libraries: random-search attacks
    # stop when every image is fooled, so their time also depends on how many queries that took
    hook = model.register_forward_hook(lambda _m, inputs, _o: calls.append((inputs[0].shape[0],
                                                                            torch.is_grad_enabled())))
    try:
        while True:
            attack = make(model)
            calls = []
            synchronize()
            start = time.perf_counter()
            adv = attack(x, y)
            synchronize()
            times.append(time.perf_counter() - start)
            passes.append(sum(b for b, _ in calls))
            call_logs.append(calls)
            if sum(times) > 3.0 or len(times) == 30:
                break
    finally:
        hook.remove()
    best = min(range(len(times)), key=times.__getitem__)
    seconds = times[best]
    with torch.no_grad():
        robust = (model(adv).argmax(1) == y).float().mean().item()
    out = {"seconds": seconds, "repeats": len(times), "images_per_second": len(x) / seconds,
           "robust_accuracy": robust, "model_calls_per_image": passes[best] / len(x),
           "seconds_per_model_call_image": seconds / max(passes[best], 1)}
    stats = getattr(attack, "stats", None)
    if stats is not None and hasattr(stats, "forward"):  # ours counts its model passes
        out["forward_passes_per_image"] = stats.forward / len(x)
        out["backward_passes_per_image"] = stats.backward / len(x)
    if isinstance(getattr(attack, "report", None), list):  # AutoAttack: where the time went
        out["members"] = [{k: m[k] for k in ("attack", "n_images", "seconds", "forward", "backward",
                                              "robust_accuracy")} for m in attack.report]
        out["calls"] = call_logs[best]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-cnn", type=int, default=200)
    parser.add_argument("--n-resnet", type=int, default=16)
    parser.add_argument("--eps-cnn", type=float, default=0.1)
    parser.add_argument("--eps-resnet", type=float, default=8 / 255)
    parser.add_argument("--rounds", type=int, default=2,
                        help="paired rounds (order alternating); the JSON gives every round and the "
                             "median ratios (this VM's speed drifts; one round can mislead)")
    parser.add_argument("--models", nargs="*",
                        default=["fashion-cnn", "fashion-cnn-standard", "preact-resnet18-32x32"])
    parser.add_argument("--attacks", nargs="*", default=None, help="subset of attack names to run")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--out", type=Path, default=Path("bench/results/attack_throughput.json"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows: list[dict[str, Any]] = []
    result = {"benchmark": "attack_throughput", "device": str(device), "device_name": device_name(device),
              "torch_threads": torch.get_num_threads(), "retains_freed_memory": retaining_freed_memory(),
              "ours_tap_input_gradients": tap_input_gradients_enabled(),
              "ours_fused_conv_pool": fused_conv_pool_available(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    setups = [("fashion-cnn", lambda: fashion_cnn(args.n_cnn, device=device), args.eps_cnn),
              ("fashion-cnn-standard", lambda: fashion_cnn(args.n_cnn, "fmnist-cnn-standard", device), args.eps_cnn),
              ("preact-resnet18-32x32", lambda: resnet(args.n_resnet, device), args.eps_resnet)]
    for name, build, eps in setups:
        if name not in args.models:
            continue
        model, x, y, desc = build()
        with torch.no_grad():
            clean = (model(x).argmax(1) == y).float().mean().item()
        for attack_name, ours, theirs in pairs(eps, 10, False):
            if args.attacks and attack_name not in args.attacks:
                continue
            # paired rounds: this VM's speed drifts by up to 30% over minutes, so each round's
            # ratio compares measurements taken back to back (the order alternates, which cancels
            # a steady drift), the floor is timed right after ours, and the medians are reported
            rounds, records = [], []
            for index in range(args.rounds):
                measured: dict[str, dict[str, Any]] = {}
                for side in ("ours", "theirs") if index % 2 == 0 else ("theirs", "ours"):
                    measured[side] = measure(model, x, y, ours if side == "ours" else theirs)
                    if side == "ours":
                        floors = floor_of(model, x, y, measured["ours"])
                a, b = measured["ours"], measured["theirs"]
                records.append((a, b, floors))
                rounds.append({"ours_seconds": a["seconds"], "torchattacks_seconds": b["seconds"],
                               "ratio": b["seconds"] / a["seconds"],
                               **{k: a["seconds"] / f["model_seconds"] for k, f in floors.items()}})
            middle = sorted(range(len(rounds)), key=lambda i: rounds[i]["ratio"])[len(rounds) // 2]
            a, b, floors = records[middle]
            row = {"model": name, "model_source": desc, "attack": attack_name, "eps": eps, "n_images": len(x),
                   "clean_accuracy": clean, "ours": a, "torchattacks": b,
                   "speed_ratio_ours_over_torchattacks": statistics.median([r["ratio"] for r in rounds]),
                   # time per image through the model: the implementation's speed, apart from how
                   # many queries the search needed
                   "per_model_call_ratio_ours_over_torchattacks":
                       b["seconds_per_model_call_image"] / a["seconds_per_model_call_image"],
                   "robust_accuracy_difference": a["robust_accuracy"] - b["robust_accuracy"],
                   "rounds": rounds, "ours/torchattacks records": f"round {middle} (the median ratio)"}
            if floors:
                row["model_time_floor"] = floors["ours_over_floor"]
                row["model_time_floor_per_call"] = floors["ours_over_floor_per_call"]
                row["model_time_replayed_calls"] = floors["ours_over_replayed_calls"]
                row["max_ratio_at_model_floor"] = b["seconds"] / floors["ours_over_floor"]["model_seconds"]
                for key in floors:
                    row[key] = statistics.median([r[key] for r in rounds])
            rows.append(row)
            print(f"{name:24s} {attack_name:20s} ours {a['images_per_second']:8.1f} img/s "
                  f"(robust {a['robust_accuracy']:.3f})  torchattacks {b['images_per_second']:8.1f} img/s "
                  f"(robust {b['robust_accuracy']:.3f})  ratio {row['speed_ratio_ours_over_torchattacks']:.2f}",
                  flush=True)
            result["load_average_after"] = os.getloadavg()  # 2-core timings beside other work are not comparable
            args.out.write_text(json.dumps(result, indent=2) + "\n")  # after every row: a cut-off run keeps its rows
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
