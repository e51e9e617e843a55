"""Randomness that belongs to an image, not to its batch.

Every stochastic step in advrepair (random starts, augmentations of a reverse attack,
noise of a randomized defense) draws from a generator seeded by ``(seed, image content,
stream)``. The same image with the same seed therefore gets the same random numbers
whatever other images share its batch, however the data is sharded, and after a resume.
The exception is ``seed=None`` (an attacker's fresh draws for EOT, a defense built unseeded):
those come from torch's global generator, which every evaluation seeds per row and batch
(:func:`seeded_global_draws`).
"""
from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global generators (for training loops)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _hashed_seed(data: bytes, key: bytes) -> int:
    """A 63-bit seed: keyed BLAKE2b of ``data`` (stable across processes and Python versions)."""
    digest = hashlib.blake2b(data, digest_size=8, key=key[:64]).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for a named stream of ``seed``."""
    return _hashed_seed(stream.encode(), f"{seed}".encode())


@contextlib.contextmanager
def seeded_global_draws(seed: int, stream: str) -> Iterator[None]:
    """Within the block torch's global generators start from a state derived from ``seed`` and
    ``stream``; the caller's states come back afterwards.

    ``seed=None`` paths (an attacker's fresh EOT draws, a defense that is random by design) draw
    from the global generator, which torch seeds at random in every process. Run inside this
    block, a protocol row's fresh draws are the same on every run and after a resume, whatever
    ran before it. They still depend on the row's batches (fresh draws are drawn per batch).

    Example:
        >>> with seeded_global_draws(0, "row:bpda-eot"):
        ...     a = torch.rand(2)
        >>> with seeded_global_draws(0, "row:bpda-eot"):
        ...     b = torch.rand(2)
        >>> bool(torch.equal(a, b))
        True
    """
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        torch.manual_seed(stream_seed(seed, stream))
        yield


def image_seeds(images: torch.Tensor, seed: int, stream: str = "") -> list[int]:
    """One 63-bit seed per image, a hash of the image's bytes, ``seed`` and ``stream``."""
    data = images.detach().to("cpu", torch.float32).contiguous().numpy()
    tag = f"{seed}:{stream}".encode()
    return [_hashed_seed(row.tobytes(), tag) for row in data]


def per_image_uniform(
    images: torch.Tensor, seed: int | None, shape: tuple[int, ...], stream: str
) -> torch.Tensor:
    """Uniform [0, 1) numbers of shape ``(B, *shape)`` on the images' device.

    With ``seed=None`` the numbers come from torch's global generator (reproducible only inside
    :func:`seeded_global_draws`, as the evaluations run them).
    """
    b = images.shape[0]
    if seed is None:
        return torch.rand((b, *shape), device=images.device)
    out = torch.empty((b, *shape))
    gen = torch.Generator()
    for i, s in enumerate(image_seeds(images, seed, stream)):
        gen.manual_seed(s)
        out[i] = torch.rand(shape, generator=gen)
    return out.to(images.device)


def image_generators(images: torch.Tensor, seed: int | None, stream: str) -> list[torch.Generator]:
    """One CPU generator per image, seeded from the image's content (``seed=None``: from torch).

    Stateful generators let an attack draw an unknown number of random numbers per image in
    a fixed per-image order, so an image's draws never depend on its batch-mates.
    """
    if seed is None:
        seeds = torch.randint(0, 2**62, (images.shape[0],)).tolist()
    else:
        seeds = image_seeds(images, seed, stream)
    gens = []
    for s in seeds:
        g = torch.Generator()
        g.manual_seed(int(s))
        gens.append(g)
    return gens
