"""Defenses: nn.Modules mapping images to images, so nn.Sequential(defense, classifier) is the defended model."""
from advrepair.defenses.adversarial_transformation import (AdversarialTransformation, BPDASurrogate,
                                                           selection_statistic)
from advrepair.defenses.bit_depth import BitDepthReduction
from advrepair.defenses.jpeg import DifferentiableJPEG, JPEGCompression
from advrepair.defenses.median import MedianFilter
from advrepair.defenses.registry import DEFENSES, make_defense, register_defense
from advrepair.defenses.purifier import NRPDefense, load_purifier, save_purifier
from advrepair.defenses.random_noise import RandomNoise
from advrepair.defenses.resize_pad import RandomResizePad
from advrepair.defenses.reverse_attack import ReverseAttack
from advrepair.defenses.ride import RIDE, RIDE_NETWORKS, RideNetSpec
from advrepair.defenses.total_variation import TotalVariation

__all__ = [
    "AdversarialTransformation", "BPDASurrogate", "selection_statistic", "BitDepthReduction",
    "DifferentiableJPEG", "JPEGCompression", "MedianFilter", "NRPDefense", "load_purifier", "save_purifier",
    "RandomNoise", "RandomResizePad", "ReverseAttack", "RIDE", "RIDE_NETWORKS", "RideNetSpec", "TotalVariation", "DEFENSES",
    "make_defense", "register_defense",
]
