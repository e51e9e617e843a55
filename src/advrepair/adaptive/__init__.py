"""Adaptive-attack building blocks: modules and attacks that let an attacker see a defense."""
from advrepair.adaptive.bpda import BPDA
from advrepair.adaptive.defense_aware import DefenseAwarePGD, lambda_sweep
from advrepair.adaptive.eot import EOT
from advrepair.adaptive.reliability import (black_box_flag, gradient_flag, monotonicity_flag, randomized_accuracy,
                                            randomness_flag)

__all__ = ["BPDA", "DefenseAwarePGD", "EOT", "lambda_sweep", "black_box_flag", "gradient_flag",
           "monotonicity_flag", "randomized_accuracy", "randomness_flag"]
