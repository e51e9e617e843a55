"""The audit's cost: seconds per image for a preset on the zoo's robust CNN, per defense, and the
same cost in units of one defended forward pass measured in the same run.

"defended forwards per image" = audit seconds per image / seconds of one ``classifier(defense(x))``
per image (batched, no gradient). It says how many repairs an audit costs, independent of the
machine, and is the number issue 18's savings must lower. The same audit without the savings
(APGD stepping every image to the end, every row scored by running the defense again) runs in
the same run as the reference: the JSON gives
the speed-up and checks that both reports agree.

    python bench/audit_presets.py [--images 20] [--preset quick] [--defenses none,jpeg,reverse-attack]
                                  [--classifier fmnist-cnn-pgd] [--cascade] [--device cpu|cuda|auto] [--out FILE]

The reverse attack runs with the classifier's zoo contrastive head (``CLASSIFIER-contrastive``).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

import advrepair
from advrepair import zoo
from advrepair.attacks.apgd import APGD
from advrepair.data import balanced_subset, load_dataset
from advrepair.defenses import ReverseAttack, make_defense
from advrepair.evaluation import adaptive
from advrepair.runtime import resolve_device
from _timing import device_name, timed  # bench/ is sys.path[0] when a script runs


def build(name: str, classifier: torch.nn.Module, classifier_name: str, device: torch.device) -> torch.nn.Module:
    if name == "none":
        return torch.nn.Identity()
    if name == "reverse-attack":
        task, _ = zoo.load(f"{classifier_name}-contrastive", device)
        return ReverseAttack(classifier, task, eps_v=0.2, steps=40, seed=0)  # type: ignore[arg-type]
    return make_defense(name, seed=0).to(device)


def run_audit(classifier: torch.nn.Module, defense: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
              preset: str, cascade: bool) -> tuple[advrepair.AuditReport, float]:
    with tempfile.TemporaryDirectory() as folder:
        return timed(lambda: advrepair.audit(classifier, defense, images, labels, eps=0.1, preset=preset, out=folder,
                                             progress=False, cascade=cascade, device=str(images.device)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--defenses", default="none,jpeg,reverse-attack")
    parser.add_argument("--classifier", default="fmnist-cnn-pgd", help="a zoo classifier")
    parser.add_argument("--cascade", action="store_true", help="the audit's cascade (rows attack the survivors)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/audit_presets.json"))
    parser.add_argument("--no-reference", action="store_true", help="skip the audit without the savings")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    classifier, _ = zoo.load(args.classifier, device)
    images, labels = balanced_subset(load_dataset("fashion-mnist", split="test"), args.images, seed=0).tensors()
    images, labels = images.to(device), labels.to(device)
    rows = []
    for name in args.defenses.split(","):
        defense = build(name, classifier, args.classifier, device)
        with torch.no_grad():
            classifier(defense(images))  # warm-up
            _, forward_seconds = timed(lambda d=defense: classifier(d(images)))
        report, seconds = run_audit(classifier, defense, images, labels, args.preset, args.cascade)
        per_image = seconds / len(images)
        row = {"defense": name, "preset": args.preset, "classifier": args.classifier, "cascade": args.cascade,
               "images": len(images), "wall_seconds": seconds,
               "seconds_per_image": per_image, "row_seconds_per_image": report.seconds_per_image,
               "defended_forward_seconds_per_image": forward_seconds / len(images),
               "defended_forwards_per_image": per_image / (forward_seconds / len(images)),
               "worst_case_accuracy": report.worst_case_accuracy,
               "row_costs": [{"row": r.name, "defended": r.defended, "images": r.n_images,
                              "seconds_per_image": r.seconds_per_image, "accuracy": r.accuracy}
                             for r in report.rows]}
        if not args.no_reference:
            APGD.drop_fooled = False
            adaptive.SHARE_DEFENSE_OUTPUTS = False
            try:
                plain, plain_seconds = run_audit(classifier, defense, images, labels, args.preset, args.cascade)
            finally:
                APGD.drop_fooled = True
                adaptive.SHARE_DEFENSE_OUTPUTS = True
            row["without_savings"] = {
                "wall_seconds": plain_seconds,
                "defended_forwards_per_image": plain_seconds / len(images) / (forward_seconds / len(images)),
                "worst_case_accuracy": plain.worst_case_accuracy}
            row["speedup_from_savings"] = plain_seconds / seconds
            # rows attacked with fresh randomness (EOT draws with seed=None) differ from run to run
            # by design; every other row must agree
            row["rows_differing"] = [{"row": a.name, "accuracy": a.accuracy, "without_savings": b.accuracy,
                                      "attack_model": a.attack.get("model")}
                                     for a, b in zip(report.rows, plain.rows) if a.accuracy != b.accuracy]
        print(json.dumps(row))
        rows.append(row)
    result = {"benchmark": "audit_presets", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "device": str(device),
              "device_name": device_name(device),
              "retains_freed_memory": advrepair.allocator.retaining_freed_memory(),
              "tap_input_gradients": advrepair.engine.tap_input_gradients_enabled(),
              "fused_conv_pool": advrepair.engine.fused_conv_pool_available(),
              "machine": platform.machine(), "processor": platform.processor(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
