"""Self-supervised tasks: a head on the classifier's features plus a per-image loss."""
from advrepair.ssl.augment import N_AUG_NUMBERS, AugmentConfig, augment, augment_views
from advrepair.ssl.contrastive import (ContrastiveHead, ContrastiveTask, multiview_contrastive_loss,
                                       nt_xent)
from advrepair.ssl.task import SelfSupervisedTask

__all__ = [
    "N_AUG_NUMBERS", "AugmentConfig", "augment", "augment_views", "ContrastiveHead",
    "ContrastiveTask", "multiview_contrastive_loss", "nt_xent", "SelfSupervisedTask",
]
