"""Training loops for classifiers (standard, PGD adversarial) and self-supervised heads."""
from advrepair.training.adversarial_transformation import (compare_training_cost, fit_imitator,
                                                           measure_training_cost, train_on_transformation)
from advrepair.training.purifier import PurifierRecipe, train_purifier
from advrepair.training.loops import train_classifier, train_ssl_task
from advrepair.training.recipe import ClassifierRecipe, SSLRecipe

__all__ = [
    "PurifierRecipe", "train_purifier", "compare_training_cost", "fit_imitator", "measure_training_cost",
    "train_on_transformation", "train_classifier", "train_ssl_task", "ClassifierRecipe", "SSLRecipe",
]
