"""Self-supervised tasks: a head (on the classifier's features or the image) plus a per-image loss."""
from advrepair.ssl.augment import N_AUG_NUMBERS, AugmentConfig, augment, augment_views
from advrepair.ssl.contrastive import (ContrastiveHead, ContrastiveTask, multiview_contrastive_loss,
                                       nt_xent)
from advrepair.ssl.inpainting import InpaintingNet, InpaintingTask, center_mask, random_rect_mask
from advrepair.ssl.registry import TASK_NAMES, build_task, check_task_name, task_from_checkpoint_parts
from advrepair.ssl.rotation import RotationHead, RotationTask, rotate_all, rotation_accuracy
from advrepair.ssl.task import SelfSupervisedTask

__all__ = [
    "N_AUG_NUMBERS", "AugmentConfig", "augment", "augment_views", "ContrastiveHead",
    "ContrastiveTask", "multiview_contrastive_loss", "nt_xent", "SelfSupervisedTask",
    "InpaintingNet", "InpaintingTask", "center_mask", "random_rect_mask", "RotationHead", "RotationTask",
    "rotate_all", "rotation_accuracy", "TASK_NAMES", "build_task", "check_task_name", "task_from_checkpoint_parts",
]
