"""A first look at mao2021's Fig. 7 on the zoo's robust CNN: clean and PGD-20 accuracy after the
reverse attack at several eps_v, beside uniform noise of the same budget (the paper's control).
Not the full experiment of issue 20 (static attacks only, one seed, 300 images); run:
    python docs/results/probes/eps_v_probe.py > docs/results/probes/eps_v_probe.md
"""
import torch

from advrepair import zoo
from advrepair.attacks import PGD
from advrepair.data import balanced_subset, load_dataset
from advrepair.defenses import ReverseAttack
from advrepair.seeding import per_image_uniform

N, EPS = 300, 0.1
clf, _ = zoo.load("fmnist-cnn-pgd")
task, _ = zoo.load("fmnist-cnn-pgd-contrastive")
x, y = balanced_subset(load_dataset("fashion-mnist", split="test"), N, seed=0).tensors()
adv = PGD(clf, eps=EPS, alpha=2.5 * EPS / 20, steps=20)(x, y)


def acc(images: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        c = (clf(images).argmax(1) == y).float()
    return 100 * c.mean().item(), 100 * (c.std() / len(c) ** 0.5).item()


def noise(images: torch.Tensor, eps_v: float) -> torch.Tensor:
    u = per_image_uniform(images, 0, tuple(images.shape[1:]), "noise-control")
    return (images + eps_v * (2 * u - 1)).clamp(0, 1)


print(f"Robust CNN (fmnist-cnn-pgd), {N} balanced test images, PGD-20 eps {EPS} crafted on the classifier;"
      " accuracy % ± s.e.\n")
print("| eps_v | clean, repaired | clean, noise | PGD-20, repaired | PGD-20, noise |")
print("|---|---|---|---|---|")
print("| 0 (none) | %.1f ± %.1f | - | %.1f ± %.1f | - |" % (*acc(x), *acc(adv)))
for eps_v in (0.02, 0.05, 0.1, 0.2):
    rev = ReverseAttack(clf, task, eps_v=eps_v, steps=40, seed=0)
    cells = [acc(rev(x)), acc(noise(x, eps_v)), acc(rev(adv)), acc(noise(adv, eps_v))]
    print(f"| {eps_v:g} | " + " | ".join("%.1f ± %.1f" % c for c in cells) + " |")
