"""What every experiment shares: its run fields (``RunConfig``) and what it does first
(threads, device, and the train and test splits)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import time

from tqdm.auto import tqdm

from advrepair.data import ImageDataset, load_dataset
from advrepair.evaluation.store import jsonable
from advrepair import zoo
from advrepair.models import Classifier, ModelCard
from advrepair.training.recipe import ClassifierRecipe
from advrepair.apps.pipeline import DEFAULT_MODELS_DIR, ensure_classifier
from advrepair.runtime import resolve_device
from advrepair.validation import check_int_at_least, check_positive


def start_run(dataset: str, data_root: str | None, device: str, threads: int | None = None
              ) -> tuple[torch.device, ImageDataset, ImageDataset]:
    """Set torch's thread count (``None``: leave it), resolve ``device`` ("auto" included) and
    load ``dataset``'s train and test splits from ``data_root``."""
    if threads is not None:
        torch.set_num_threads(threads)
    return (resolve_device(device), load_dataset(dataset, split="train", root=data_root),
            load_dataset(dataset, split="test", root=data_root))


def experiment_classifier(name: str, models_dir: Path, train: ImageDataset, test: ImageDataset, *,
                          recipe: ClassifierRecipe, seed: int, eval_eps: float, device: torch.device,
                          progress: bool) -> tuple[Classifier, ModelCard]:
    """The zoo's classifier ``name`` when the zoo ships it for this dataset (experiments run
    on zoo models by default); any other name is trained on demand (or reused) in
    ``models_dir / name`` with ``recipe``."""
    if name in zoo.ENTRIES and zoo.is_shipped(name) and zoo.entry(name).dataset == train.name:
        model, card = zoo.load(name, device)
        assert isinstance(model, Classifier)
        tqdm.write(f"classifier: zoo {name} ({card.weights_sha256[:12]})")
        return model, card
    return ensure_classifier(models_dir / name, train, test, arch="small-cnn", recipe=recipe, seed=seed,
                             eval_eps=eval_eps, device=device, progress=progress)


def frozen_zoo_model(name: str, device: torch.device) -> tuple[torch.nn.Module, ModelCard]:
    """A shipped zoo model (a classifier, a purifier) in eval mode with frozen weights:
    experiments score and attack the zoo's models, they never train them."""
    model, card = zoo.load(name, device)
    assert isinstance(model, torch.nn.Module)
    for p in model.parameters():
        p.requires_grad_(False)
    tqdm.write(f"zoo: {name} ({card.weights_sha256[:12]})")
    return model.eval(), card


@dataclass
class RunConfig:
    """The fields every experiment shares; each experiment's config extends it and sets its
    own defaults. Paths: ``out`` receives results.json, arrays/, report.md and the figures;
    ``models_dir`` the models the experiment trains on demand."""

    out: Path = Path("reports/run")
    models_dir: Path = DEFAULT_MODELS_DIR
    data_root: str | None = None
    dataset: str = "fashion-mnist"
    seed: int = 0
    device: str = "cpu"
    #: torch threads for the run (``None``: leave torch's setting alone)
    threads: int | None = None
    progress: bool = True
    batch_size: int = 250
    n_images: int = 500
    eps: float = 0.1

    def check_run_fields(self) -> None:
        """Normalize and check the shared fields (each config's ``__post_init__`` calls this)."""
        self.out, self.models_dir = Path(self.out), Path(self.models_dir)
        self.n_images = check_int_at_least(self.n_images, "n_images", 1)
        self.batch_size = check_int_at_least(self.batch_size, "batch_size", 1)
        self.seed = check_int_at_least(self.seed, "seed", 0)
        if self.threads is not None:
            check_int_at_least(self.threads, "threads", 1)
        self.eps = check_positive(self.eps, "eps")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"], d["models_dir"] = str(self.out), str(self.models_dir)
        return jsonable(d)

    def start(self) -> tuple[torch.device, ImageDataset, ImageDataset]:
        """Threads, device and the dataset's splits for this run (see ``start_run``)."""
        return start_run(self.dataset, self.data_root, self.device, self.threads)


class StageClock:
    """Prints, before each stage, the expected remaining time of a multi-stage run.

    ``plan`` holds (stage name, cost in units); the first estimate uses ``seconds_per_unit``
    (measured on a probe), later ones the rate of the stages that really ran. A stage that
    took under a fifth of its estimate was mostly read back from stored records (a resumed
    run) and would make the rest look free, so it does not count."""

    def __init__(self, plan: list[tuple[str, float]], seconds_per_unit: float, progress: bool) -> None:
        self.plan, self.rate, self.progress = plan, seconds_per_unit, progress
        self.probe_rate = seconds_per_unit
        self.ran_seconds, self.ran_units, self.stage_start = 0.0, 0.0, time.perf_counter()

    def stage(self, index: int) -> None:
        self.stage_start = time.perf_counter()
        if self.ran_units:
            self.rate = self.ran_seconds / self.ran_units
        left = sum(units for _, units in self.plan[index:]) * self.rate
        name = self.plan[index][0]
        tqdm.write(f"[{index + 1}/{len(self.plan)}] {name}: about {left / 60:.1f} min left in the run")

    def finished(self, index: int) -> None:
        took, units = time.perf_counter() - self.stage_start, self.plan[index][1]
        if took >= 0.2 * units * self.probe_rate:
            self.ran_seconds += took
            self.ran_units += units
