"""Training loops for classifiers (standard, PGD adversarial) and self-supervised heads."""
from advrepair.training.loops import train_classifier, train_ssl_task
from advrepair.training.recipe import ClassifierRecipe, SSLRecipe

__all__ = ["train_classifier", "train_ssl_task", "ClassifierRecipe", "SSLRecipe"]
