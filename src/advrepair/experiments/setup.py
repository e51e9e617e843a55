"""What every experiment does first: threads, device, and the train and test splits."""
from __future__ import annotations

import torch

from advrepair.data import ImageDataset, load_dataset
from advrepair.runtime import resolve_device


def start_run(dataset: str, data_root: str | None, device: str, threads: int | None = None
              ) -> tuple[torch.device, ImageDataset, ImageDataset]:
    """Set torch's thread count (``None``: leave it), resolve ``device`` ("auto" included) and
    load ``dataset``'s train and test splits from ``data_root``."""
    if threads is not None:
        torch.set_num_threads(threads)
    return (resolve_device(device), load_dataset(dataset, split="train", root=data_root),
            load_dataset(dataset, split="test", root=data_root))
