"""Attacks with the torchattacks call shape: ``Attack(model, eps=...)(images, labels)``."""
from advrepair.attacks.apgd import APGD, APGDCE, APGDDLR
from advrepair.attacks.apgd_t import APGDT
from advrepair.attacks.autoattack import AutoAttack
from advrepair.attacks.base import Attack, AttackStats
from advrepair.attacks.bim import BIM
from advrepair.attacks.cw import CW, CWPGD
from advrepair.attacks.difgsm import DIFGSM
from advrepair.attacks.fab import FAB, FABT
from advrepair.attacks.fgsm import FGSM
from advrepair.attacks.genattack import GenAttack
from advrepair.attacks.hopskipjump import HopSkipJump
from advrepair.attacks.mifgsm import MIFGSM
from advrepair.attacks.rfgsm import RFGSM
from advrepair.attacks.pgd import PGD
from advrepair.attacks.registry import ATTACKS, make_attack, parse_spec
from advrepair.attacks.spsa import SPSA
from advrepair.attacks.square import Square
from advrepair.attacks.ssp import SSP
from advrepair.attacks.tifgsm import TIFGSM
from advrepair.attacks.transfer import Transfer

__all__ = [
    "APGD", "APGDCE", "APGDDLR", "APGDT", "AutoAttack", "Attack", "AttackStats", "BIM", "CW", "CWPGD",
    "DIFGSM", "FGSM", "GenAttack", "MIFGSM", "PGD", "RFGSM", "SSP", "TIFGSM", "ATTACKS", "make_attack", "parse_spec", "FAB",
    "FABT", "HopSkipJump", "SPSA", "Square", "Transfer",
]
