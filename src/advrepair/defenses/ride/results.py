"""What a RIDE fit returns: estimates, checkpoints, losses and the per-step trajectory."""
from __future__ import annotations

from dataclasses import dataclass

import torch

@dataclass
class RideTrajectory:
    """Per-step record of a fit (Fig. 2e / Fig. 6 of the paper), row 0 = before any step.

    Attributes:
        steps: (L,) global step index 0..T*K.
        loss: (L, B) training loss of each image's network at that step (row 0: NaN).
        to_adv: (L, B) L2 distance of the current estimate to the adversarial reference.
        to_clean: (L, B) L2 distance to the clean reference, or None if none was given.

    The estimate recorded at every step uses a fixed per-image noise draw (its own stream), so
    recording a trajectory never changes the fit.
    """

    steps: torch.Tensor
    loss: torch.Tensor
    to_adv: torch.Tensor
    to_clean: torch.Tensor | None = None

    @staticmethod
    def cat(parts: list["RideTrajectory"]) -> "RideTrajectory":
        """Join the trajectories of consecutive image chunks along the image axis."""
        cleans = [p.to_clean for p in parts if p.to_clean is not None]
        clean = torch.cat(cleans, 1) if len(cleans) == len(parts) else None
        return RideTrajectory(parts[0].steps, torch.cat([p.loss for p in parts], 1),
                              torch.cat([p.to_adv for p in parts], 1), clean)


@dataclass
class RideResult:
    """Output of ``RIDE.fit``: the defended images and what happened on the way.

    Attributes:
        estimate: (B, C, H, W) in [0, 1], x_est^(T) (what the defense returns).
        checkpoints: (T, B, C, H, W), x_est^(t) for t = 1..T.
        final_loss: (B,) the last step's training loss of each network.
        trajectory: per-step distances, if asked for.
    """

    estimate: torch.Tensor
    checkpoints: torch.Tensor
    final_loss: torch.Tensor
    trajectory: RideTrajectory | None = None


# --------------------------------------------------------------------------------------------
# The reference network (one image)
# --------------------------------------------------------------------------------------------


class _Recorder:
    """Collects per-step L2 distances (and losses) of the estimates of a chunk of images."""

    def __init__(self, steps: int, b: int, clean: torch.Tensor | None, adv: torch.Tensor) -> None:
        self.clean, self.adv = clean, adv
        self.loss = torch.full((steps + 1, b), float("nan"))
        self.to_adv = torch.empty(steps + 1, b)
        self.to_clean = torch.empty(steps + 1, b) if clean is not None else None

    def add(self, step: int, est: torch.Tensor, loss: torch.Tensor | None) -> None:
        self.to_adv[step] = (est - self.adv).flatten(1).norm(dim=1).cpu()
        if self.to_clean is not None and self.clean is not None:
            self.to_clean[step] = (est - self.clean).flatten(1).norm(dim=1).cpu()
        if loss is not None:
            self.loss[step] = loss.cpu()

    def result(self) -> RideTrajectory:
        return RideTrajectory(torch.arange(self.loss.shape[0]), self.loss, self.to_adv, self.to_clean)
