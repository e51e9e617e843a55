"""Classifiers (normalization inside, logits out, features reachable) and their checkpoints."""
from advrepair.models.adapters import from_robustbench, from_timm, timm_architecture, wrap_model
from advrepair.models.base import Classifier, Normalize
from advrepair.models.checkpoint import ModelCard, load_checkpoint, read_card, save_checkpoint
from advrepair.models.preact_resnet import PreActResNet18
from advrepair.models.purifier import Critic, Purifier
from advrepair.models.registry import available_architectures, build_model, register_architecture
from advrepair.models.small_cnn import SmallCNN
from advrepair.models.vgg import SmallVGG
from advrepair.models.wide_resnet import WideResNet, wrn_28_10

register_architecture(SmallCNN.arch, SmallCNN)
register_architecture(PreActResNet18.arch, PreActResNet18)
register_architecture(WideResNet.arch, WideResNet)
register_architecture(SmallVGG.arch, SmallVGG)
register_architecture("timm", timm_architecture)

__all__ = [
    "from_robustbench", "from_timm", "wrap_model",
    "Classifier", "Normalize", "ModelCard", "load_checkpoint", "read_card", "save_checkpoint",
    "Critic", "PreActResNet18", "Purifier", "SmallCNN", "SmallVGG", "WideResNet", "wrn_28_10", "available_architectures",
    "build_model", "register_architecture",
]
