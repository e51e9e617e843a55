"""Is a defense randomized? Found out by running it, never by reading its attribute names.

Two behaviours count as randomized:

- ``PER_CALL``: two calls on the same images give different outputs (fresh draws each call);
- ``INPUT_KEYED``: repeated calls agree, but a nudge of the input a hundred times smaller than
  another moves the output about as much: a deterministic defense's change shrinks with the
  nudge (smoothly, or for a quantizer such as JPEG in how many values cross a level), a new
  random draw's does not. Randomness seeded from the image's content (advrepair's own defenses) behaves
  so; so does a chaotic deterministic defense.
  Either way a gradient taken at one point says little about its neighbours, so the attacker
  averages over draws (EOT).

``fresh_draws`` then finds a version of the defense that draws anew on every call, through
the contract (``adaptive.contract``), and checks by running it that it does.
"""
from __future__ import annotations

import copy
import dataclasses
import enum
from typing import Any, Callable

import torch
from torch import nn

from advrepair.errors import InputError
from advrepair.validation import check_images

#: the input nudge of the detection: 1e-3 is 1/4 of one 8-bit level and 1/100 of eps 0.1
NUDGE = 1e-3
#: the second nudge, 100x smaller (still far above float32 resolution at 0.5, 6e-8)
SMALL_NUDGE = NUDGE / 100
#: input-keyed when the small nudge's output change keeps more than this share of the large one's
PERSISTENCE = 0.3


class Randomness(str, enum.Enum):
    DETERMINISTIC = "deterministic"
    PER_CALL = "per-call"
    INPUT_KEYED = "input-keyed"

    @property
    def randomized(self) -> bool:
        return self is not Randomness.DETERMINISTIC


@dataclasses.dataclass(frozen=True)
class RandomnessProbe:
    """What the detection measured: the largest difference between two calls on the same
    images, and the mean output change per unit of mean input nudge."""

    kind: Randomness
    repeat_difference: float
    nudge_amplification: float
    small_nudge_share: float
    n_images: int

    def detail(self) -> str:
        return (f"{self.kind.value}: two calls on the same {self.n_images} images differ by up to "
                f"{self.repeat_difference:.3g}; a {NUDGE:g} nudge of the input moves the output "
                f"{self.nudge_amplification:.3g}x as much, a {SMALL_NUDGE:g} nudge "
                f"{self.small_nudge_share:.2g} of that")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "repeat_difference": self.repeat_difference,
                "nudge_amplification": self.nudge_amplification, "small_nudge_share": self.small_nudge_share,
                "n_images": self.n_images}


def _nudged(images: torch.Tensor, size: float) -> torch.Tensor:
    """The images moved by +-size per pixel (signs from a fixed generator), towards the
    inside of [0, 1] so that no pixel is clipped back."""
    gen = torch.Generator().manual_seed(20211)
    signs = (torch.randint(0, 2, images.shape, generator=gen) * 2 - 1).to(images.device, images.dtype)
    signs = torch.where(images + size > 1, -torch.ones_like(signs), signs)
    signs = torch.where(images - size < 0, torch.ones_like(signs), signs)
    return images + size * signs


def detect_randomness(defense: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> RandomnessProbe:
    """Run ``defense`` twice on ``images`` and once on a nudged copy (see the module docstring).

    Raises:
        InputError: ``defense`` is not callable, or its output is not an image batch of the input's shape.
    """
    if not callable(defense):
        raise InputError(f"a defense must be callable (images -> images), got {type(defense).__name__}")
    check_images(images)
    with torch.no_grad():
        first, second = defense(images), defense(images)
        nudged_in, small_in = _nudged(images, NUDGE), _nudged(images, SMALL_NUDGE)
        nudged_out, small_out = defense(nudged_in), defense(small_in)
    for out in (first, second, nudged_out, small_out):
        if not isinstance(out, torch.Tensor) or out.shape != images.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"the defense must return images of the input's shape {tuple(images.shape)}, got {got}")
    repeat = float((first - second).abs().max())
    moved = float((nudged_out - first).abs().mean())
    pushed = float((nudged_in - images).abs().mean())
    amplification = moved / pushed
    small_moved = float((small_out - first).abs().mean())
    share = small_moved / moved if moved > 1e-6 else 0.0
    if repeat > 1e-6:
        kind = Randomness.PER_CALL
    elif share > PERSISTENCE:
        kind = Randomness.INPUT_KEYED
    else:
        kind = Randomness.DETERMINISTIC
    return RandomnessProbe(kind, repeat, amplification, share, int(images.shape[0]))


class NudgedDraws(nn.Module):
    """A new draw of an input-keyed defense on every call: the defense sees the input moved by
    uniform noise of at most ``scale`` per pixel (a new key each call); the output is the
    defense's, and the gradient flows to the input as if the nudge were not there."""

    #: every pixel gets its own nudge, so every row keys its own draw (EOT may stack copies)
    rowwise_randomness = True

    def __init__(self, defense: Callable[[torch.Tensor], torch.Tensor], scale: float = NUDGE) -> None:
        super().__init__()
        self.defense = defense
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = (torch.rand_like(x) * 2 - 1) * self.scale
        return self.defense(x + ((x + noise).clamp(0, 1) - x).detach())

    def params(self) -> dict[str, Any]:
        inner = getattr(self.defense, "params", None)
        return {"name": "nudged-draws", "scale": self.scale,
                "defense": inner() if callable(inner) else type(self.defense).__name__}


def _draws_anew(candidate: Any, images: torch.Tensor) -> bool:
    try:
        return detect_randomness(candidate, images).kind is Randomness.PER_CALL
    except InputError:
        return False


def fresh_draws(defense: Callable[[torch.Tensor], torch.Tensor], probe: RandomnessProbe,
                images: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """A version of ``defense`` that draws fresh randomness on every call, and how it was got.

    ``None`` for a deterministic defense. For an input-keyed one, the contract's ways in order:
    ``fresh_randomness()``, ``variant(seed=None)``, a copy with ``seed = None``; the first that
    really draws anew on every call is used, else ``NudgedDraws``.
    """
    if probe.kind is Randomness.DETERMINISTIC:
        return None, "deterministic (by running it): BPDA+EOT would equal BPDA and is skipped"
    if probe.kind is Randomness.PER_CALL:
        return defense, "randomized: fresh draws on every call (by running it)"
    tries: list[tuple[str, Callable[[], Any]]] = []
    offered: Any = defense  # the contract's optional methods, looked up by name
    if callable(getattr(offered, "fresh_randomness", None)):
        tries.append(("its fresh_randomness()", offered.fresh_randomness))
    if callable(getattr(offered, "variant", None)):
        tries.append(("its variant(seed=None)", lambda: offered.variant(seed=None)))
    if hasattr(defense, "seed"):
        def unseeded() -> Any:
            twin = copy.copy(defense)
            setattr(twin, "seed", None)  # noqa: B010 - a plain attribute; the stubs type Module attributes as tensors
            return twin
        tries.append(("a copy with seed=None", unseeded))
    for how, make in tries:
        try:
            candidate = make()
        except (TypeError, ValueError):
            continue
        if _draws_anew(candidate, images):
            return candidate, f"randomness keyed to the input (by running it); EOT draws from {how}"
    return NudgedDraws(defense), (f"randomness keyed to the input (by running it) and no way to draw anew "
                                  f"found; EOT draws by nudging the input by at most {NUDGE:g} per pixel")


__all__ = ["NUDGE", "PERSISTENCE", "SMALL_NUDGE", "NudgedDraws", "Randomness", "RandomnessProbe", "detect_randomness",
           "fresh_draws"]
