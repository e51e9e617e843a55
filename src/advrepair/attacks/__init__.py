"""Attacks with the torchattacks call shape: ``Attack(model, eps=...)(images, labels)``."""
from advrepair.attacks.base import Attack, AttackStats
from advrepair.attacks.fgsm import FGSM
from advrepair.attacks.pgd import PGD
from advrepair.attacks.registry import ATTACKS, make_attack, parse_spec

__all__ = ["Attack", "AttackStats", "FGSM", "PGD", "ATTACKS", "make_attack", "parse_spec"]
