"""Defenses: nn.Modules mapping images to images, so nn.Sequential(defense, classifier) is the defended model."""
from advrepair.defenses.reverse_attack import ReverseAttack

__all__ = ["ReverseAttack"]
