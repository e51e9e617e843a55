"""Checkpoints: weights in safetensors plus a JSON card (RobustBench-style model card).

``save_checkpoint(model, "dir/name", card)`` writes ``dir/name.safetensors`` and
``dir/name.json``. The card records the architecture and its config (enough to rebuild
the module), what it was trained on and how, its measured accuracies with the attack that
measured them, and the SHA-256 of the weights file, so a card never vouches for other
weights. Nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from advrepair.durable import write_durably, write_text_durably
from advrepair.errors import CheckpointError
from advrepair.models.registry import build_model

CARD_VERSION = 1
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # raw pickle protocol >= 2, and torch.save's zip


@dataclass
class ModelCard:
    """What a checkpoint is, how it was made and how good it is."""

    kind: str
    arch: str
    config: dict[str, Any]
    dataset: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    parent: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    card_version: int = CARD_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> "ModelCard":
        missing = [k for k in ("kind", "arch", "config", "weights_sha256") if k not in data]
        if missing:
            raise CheckpointError(f"model card {source} lacks the fields {missing}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def checkpoint_paths(stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    p = Path(stem)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(model: nn.Module, stem: str | os.PathLike[str], card: ModelCard) -> Path:
    """Write ``stem.safetensors`` and ``stem.json``; returns the weights path."""
    weights, card_path = checkpoint_paths(stem)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # one metadata key: safetensors writes several in hash-map order, which would make two
    # saves of the same weights differ in bytes and SHA-256
    blob = save(state, metadata={"advrepair": json.dumps({"kind": card.kind, "arch": card.arch}, sort_keys=True)})
    write_durably(weights, lambda f: f.write(blob))
    card.weights_sha256 = sha256_file(weights)
    write_text_durably(card_path, card.to_json())
    return weights


def read_card(stem: str | os.PathLike[str]) -> ModelCard:
    """Read and check a checkpoint's card (without loading the weights)."""
    weights, card_path = checkpoint_paths(stem)
    if not card_path.exists():
        raise CheckpointError(f"no model card at {card_path} (a checkpoint is {weights.name} plus {card_path.name})")
    try:
        data = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"model card {card_path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"model card {card_path} must be a JSON object")
    return ModelCard.from_dict(data, str(card_path))


def load_checkpoint(stem: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                    expected_kind: str | None = None) -> tuple[nn.Module, ModelCard]:
    """Rebuild the module a card describes and load its safetensors weights, in eval mode.

    Raises:
        CheckpointError: missing files, a file that is not safetensors (a pickle, say),
            weights whose hash differs from the card's, or tensors that do not fit the
            architecture.
    """
    weights, _ = checkpoint_paths(stem)
    if not weights.exists():
        raise CheckpointError(f"no weights at {weights}")
    with open(weights, "rb") as f:
        head = f.read(9)
    # safetensors: a little-endian u64 header length, then the JSON header; a length whose
    # low byte is 0x80 looks like pickle's magic, so only call it a pickle if no JSON follows
    looks_safetensors = len(head) == 9 and head[8:9] == b"{"
    if not looks_safetensors and any(head.startswith(m) for m in _PICKLE_MAGIC):
        raise CheckpointError(
            f"{weights} looks like a pickle / torch.save file; advrepair only loads safetensors "
            "(convert it yourself with safetensors.torch.save_file after loading it with "
            "torch.load(..., weights_only=True) if you trust it)"
        )
    card = read_card(stem)
    if expected_kind is not None and card.kind != expected_kind:
        raise CheckpointError(f"{weights} is a {card.kind!r} checkpoint, expected {expected_kind!r}")
    actual = sha256_file(weights)
    if actual != card.weights_sha256:
        raise CheckpointError(
            f"{weights} does not match its card: SHA-256 {actual[:12]}... but the card says "
            f"{card.weights_sha256[:12]}...; the weights or the card were replaced"
        )
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}") from exc
    model = build_model(card.arch, **card.config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not fit architecture {card.arch!r}: {exc}") from exc
    return model.to(map_location).eval(), card
