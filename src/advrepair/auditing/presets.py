"""The audit's presets: how hard it attacks, stated in every report.

``standard`` follows the budgets of the reference evaluations of test-time defenses
(Croce et al., ICML 2022, with AutoAttack's budgets, Croce & Hein 2020): APGD-CE and
APGD-T (9 target classes) with 100 steps through BPDA, BPDA+EOT and the full gradient,
EOT over 20 draws, Square with 5,000 queries, on 1,000 images. ``quick`` keeps every row
but cuts every budget, so a first answer takes minutes on a CPU; it is a smoke test, not a
robustness number to publish. ``thorough`` raises restarts, steps and draws beyond the
reference.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any

from advrepair.errors import InputError
from advrepair.evaluation.adaptive import AdaptiveConfig


class AuditPreset(str, enum.Enum):
    QUICK = "quick"
    STANDARD = "standard"
    THOROUGH = "thorough"

    @classmethod
    def parse(cls, value: "str | AuditPreset") -> "AuditPreset":
        if isinstance(value, AuditPreset):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise InputError(f"unknown audit preset {value!r}; choose from {[p.value for p in cls]}") from None


@dataclasses.dataclass(frozen=True)
class PresetBudget:
    """One preset's budgets (the protocol's ``AdaptiveConfig`` less eps and norm), the image
    count it is meant for, and what it claims."""

    steps: int
    restarts: int
    target_classes: int
    eot_draws: int
    unroll_steps: int
    square_queries: int
    randomized_draws: int
    lambdas: tuple[float, ...]
    recommended_images: int
    claim: str

    def config(self, eps: float, norm: str, seed: int) -> AdaptiveConfig:
        return AdaptiveConfig(eps=eps, norm=norm, seed=seed, attack="apgd", steps=self.steps, restarts=self.restarts,
                              target_classes=self.target_classes, eot_draws=self.eot_draws,
                              unroll_steps=self.unroll_steps, square_queries=self.square_queries,
                              randomized_draws=self.randomized_draws, lambdas=self.lambdas)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[AuditPreset, PresetBudget] = {
    AuditPreset.QUICK: PresetBudget(
        steps=10, restarts=1, target_classes=0, eot_draws=2, unroll_steps=3, square_queries=100, randomized_draws=2,
        lambdas=(0.0, 1.0), recommended_images=100,
        claim="smoke test: every row, with APGD at 10 steps, EOT over 2 draws, a 3-step unroll and Square at 100 "
              "queries; an upper bound on robustness that the standard preset will usually lower"),
    AuditPreset.STANDARD: PresetBudget(
        steps=100, restarts=1, target_classes=9, eot_draws=20, unroll_steps=10, square_queries=5000,
        randomized_draws=10, lambdas=(0.0, 1.0, 4.0, 16.0), recommended_images=1000,
        claim="the reference budgets: APGD-CE and APGD-T (9 targets) with 100 steps, EOT over 20 draws, "
              "Square with 5,000 queries, 1,000 images"),
    AuditPreset.THOROUGH: PresetBudget(
        steps=200, restarts=5, target_classes=9, eot_draws=40, unroll_steps=40, square_queries=10000,
        randomized_draws=20, lambdas=(0.0, 0.5, 1.0, 4.0, 16.0, 64.0), recommended_images=1000,
        claim="beyond the reference: 5 restarts of 200 steps, EOT over 40 draws, the full unroll of an "
              "iterative defense up to 40 steps, Square with 10,000 queries"),
}


def budget_of(preset: "str | AuditPreset") -> PresetBudget:
    return PRESETS[AuditPreset.parse(preset)]


__all__ = ["AuditPreset", "PRESETS", "PresetBudget", "budget_of"]
