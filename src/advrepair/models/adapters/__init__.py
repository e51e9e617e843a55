"""Adapters: any image classifier -> our model contract (images in [0, 1], logits out).

Our attacks, defenses and SSL heads expect a model that takes float NCHW images in
[0, 1], normalizes them itself and returns logits, and (for the reverse attack's heads)
offers ``features(x)`` and the attributes ``num_classes``, ``input_size``,
``in_channels`` and ``feature_dim``. :func:`wrap_model` puts any ``nn.Module`` that maps
*normalized* images to logits into that shape; :func:`from_timm` and
:func:`from_robustbench` do it for models of those two libraries, which are imported
lazily (neither is a dependency of advrepair).

No paper is implemented here. Conventions we chose:

- ``features(x)`` reads one named submodule with a hook and flattens it to (B, D). If
  that submodule runs several times in one forward pass, its *first* call is read and
  the rest of the forward pass is skipped (a feature read costs only the layers up to it).
- Attributes the caller does not give are inferred by one dry run in eval mode, without
  gradient, on two seeded random images: ``num_classes`` from the logits' width,
  ``feature_dim`` from the feature width. ``input_size`` is never guessed: it is the
  given value, the module's own ``input_size`` attribute, or the ``input_size`` of a timm
  config; otherwise it stays ``None`` (the dry run then tries 32x32, then 224x224 images).
- A module whose dry-run outputs look like probabilities (rows in [0, 1] summing to 1)
  is accepted with a warning, as the attacks do (``attacks/base.py``): attacks want logits.
- The wrapped module should be float32; reduced precision belongs to
  :mod:`advrepair.runtime` (autocast), not to the weights.
"""
from advrepair.models.adapters.constants import IMAGENET_MEAN, IMAGENET_STD, ROBUSTBENCH_DATASETS, ROBUSTBENCH_THREAT_MODELS
from advrepair.models.adapters.hubs import from_robustbench, from_timm, timm_architecture
from advrepair.models.adapters.wrap import wrap_model
from advrepair.models.adapters.wrappers import WrappedClassifier, WrappedFeatureClassifier

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ROBUSTBENCH_DATASETS", "ROBUSTBENCH_THREAT_MODELS", "WrappedClassifier",
           "WrappedFeatureClassifier", "from_robustbench", "from_timm", "timm_architecture", "wrap_model"]
