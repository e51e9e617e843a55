"""Adaptive-attack building blocks: modules around a defense that let any attack see it."""
from advrepair.adaptive.bpda import BPDA
from advrepair.adaptive.eot import EOT

__all__ = ["BPDA", "EOT"]
