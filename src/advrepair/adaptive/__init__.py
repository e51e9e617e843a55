"""Adaptive-attack building blocks: modules and attacks that let an attacker see a defense."""
from advrepair.adaptive.bpda import BPDA
from advrepair.adaptive.defense_aware import DefenseAwarePGD, lambda_sweep
from advrepair.adaptive.eot import EOT

__all__ = ["BPDA", "DefenseAwarePGD", "EOT", "lambda_sweep"]
