"""End-of-epoch training state, so an interrupted training run continues where it stopped.

``<stem>.safetensors`` holds the parameters, every tensor of the optimizer state, the
batch-order generator and torch's global RNG state; ``<stem>.json`` the epoch count, the
loss history, the non-tensor optimizer state and an identity (recipe, seed, anything the
caller passes) that must match for the state to be used. Both are written to temporary
names and renamed; the JSON names the SHA-256 of the tensors file, so a torn pair is
ignored. No pickle anywhere.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from advrepair.durable import write_durably, write_text_durably
from advrepair.models.checkpoint import sha256_file


class EpochCheckpoint:
    """Save after an epoch / restore before training; ``identity`` guards against reuse by
    another recipe or seed."""

    def __init__(self, stem: str | os.PathLike[str], identity: dict[str, Any]) -> None:
        self.stem = Path(stem)
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        self.tensors_path = self.stem.with_name(self.stem.name + ".safetensors")
        self.meta_path = self.stem.with_name(self.stem.name + ".json")

    def save(self, epochs_done: int, history: list[dict[str, float]], params: list[nn.Parameter],
             opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {f"param/{i}": p.detach().cpu().contiguous() for i, p in enumerate(params)}
        scalars: dict[str, Any] = {}
        for i, p in enumerate(params):
            for k, v in opt.state.get(p, {}).items():
                if isinstance(v, torch.Tensor):
                    tensors[f"opt/{i}/{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars[f"{i}/{k}"] = v
        tensors["rng/batch_order"] = gen.get_state()
        tensors["rng/torch"] = torch.get_rng_state()
        blob = save(tensors)
        write_durably(self.tensors_path, lambda f: f.write(blob))
        meta = {"identity": self.identity, "epochs_done": epochs_done, "history": history, "opt_scalars": scalars,
                "tensors_sha256": sha256_file(self.tensors_path)}
        write_text_durably(self.meta_path, json.dumps(meta))

    def restore(self, params: list[nn.Parameter], opt: torch.optim.Optimizer,
                gen: torch.Generator) -> tuple[int, list[dict[str, float]]] | None:
        """Load a matching saved state into ``params``/``opt``/``gen``; returns (epochs done,
        history), or None when there is none, it belongs to another run, or it is torn."""
        if not (self.meta_path.exists() and self.tensors_path.exists()):
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
        except json.JSONDecodeError:
            return None
        if meta.get("identity") != self.identity or meta.get("tensors_sha256") != sha256_file(self.tensors_path):
            return None
        tensors = load_file(str(self.tensors_path))
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(tensors[f"param/{i}"].to(p.device))
        for i, p in enumerate(params):
            state = {k.split("/", 2)[2]: v.to(p.device) for k, v in tensors.items() if k.startswith(f"opt/{i}/")}
            state.update({k.split("/", 1)[1]: v for k, v in meta["opt_scalars"].items() if k.split("/", 1)[0] == str(i)})
            if state:
                opt.state[p] = state
        gen.set_state(tensors["rng/batch_order"])
        torch.set_rng_state(tensors["rng/torch"])
        return int(meta["epochs_done"]), list(meta["history"])

    def clear(self) -> None:
        for path in (self.tensors_path, self.meta_path):
            path.unlink(missing_ok=True)
