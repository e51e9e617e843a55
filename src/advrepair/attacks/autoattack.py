"""AutoAttack (Croce & Hein 2020): a cascade of complementary parameter-free attacks.

Each member attacks only the images every earlier member failed on, so the reported
robust accuracy is the per-image worst case over the members at the cost of running the
expensive later members on few images.
"""
from __future__ import annotations

import inspect
import time
from typing import Any, Callable, Sequence, Union

import torch

from advrepair.attacks.base import Attack
from advrepair.enums import Norm
from advrepair.errors import InputError
import advrepair.attacks.registry as registry
from advrepair.attacks.registry import parse_spec, register_attack

#: A member: a spec string ``"apgd-ce:steps=50"`` or a ``(name, params)`` pair.
MemberSpec = Union[str, tuple[str, dict[str, Any]]]

#: The paper's evaluation. The fab-t and square parameter names are the ones their
#: advrepair implementations are expected to take (FAB's own default is 100 iterations).
STANDARD: tuple[tuple[str, dict[str, Any]], ...] = (
    ("apgd-ce", {"steps": 100, "n_restarts": 1}),
    ("apgd-t", {"steps": 100, "n_restarts": 1, "n_target_classes": 9}),
    ("fab-t", {"n_target_classes": 9, "n_restarts": 1}),
    ("square", {"n_queries": 5000, "n_restarts": 1}),
)

#: For randomized defenses: both APGD losses with gradients averaged over 20 draws.
RAND: tuple[tuple[str, dict[str, Any]], ...] = (
    ("apgd-ce", {"steps": 100, "n_restarts": 1, "eot_iter": 20}),
    ("apgd-dlr", {"steps": 100, "n_restarts": 1, "eot_iter": 20}),
)

VERSIONS = {"standard": STANDARD, "rand": RAND}

# The budget is AutoAttack's: a member with its own eps or norm would make the cascade's
# robust accuracy a mix of threat models.
_RESERVED = ("eps", "norm")


def _parse_member(spec: Any) -> tuple[str, dict[str, Any]]:

    if isinstance(spec, str):
        name, params = parse_spec(spec)
    elif (isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str)
          and isinstance(spec[1], dict)):
        name, params = spec[0].strip().lower(), dict(spec[1])
    else:
        raise InputError(f"an AutoAttack member must be a spec string like 'apgd-ce:steps=50' or a "
                         f"(name, params) pair, got {spec!r}")
    if not name:
        raise InputError(f"AutoAttack member {spec!r} has no attack name")
    if name == "autoattack":
        raise InputError("AutoAttack cannot contain itself as a member")
    reserved = sorted(set(params) & set(_RESERVED))
    if reserved:
        raise InputError(f"AutoAttack member {name!r} sets {reserved}; the budget is set on AutoAttack "
                         "itself and shared by every member")
    return name, params


@register_attack("autoattack")
class AutoAttack(Attack):
    """A cascade of attacks with the per-image worst case as the result.

    Images misclassified clean count as non-robust and are never attacked. Each member
    then runs only on the images still correctly classified (the survivors), and an image
    it fools keeps that member's adversarial; a survivor of every member gets the output
    of the last member that attacked it. Members are built by registry name when the
    attack is called, with AutoAttack's ``eps``, ``norm`` and (unless given) ``seed``.

    Versions: ``"standard"`` (apgd-ce, apgd-t, fab-t, square with the paper's
    parameters), ``"rand"`` (apgd-ce and apgd-dlr with EOT over 20 draws) and
    ``"custom"`` (the members in ``attacks``).

    After each call ``report`` holds one dict per member, summed over all calls so far
    (``reset_report`` clears it): ``attack``, ``params``, ``robust_accuracy`` (after that
    member, over every image seen), ``n_images`` (images it attacked), ``seconds``, and
    the member's ``forward`` / ``backward`` image-passes. ``clean_accuracy`` is kept too.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = AutoAttack(model, eps=8/255, version="custom", attacks=["apgd-ce", "apgd-dlr"])(x, y)
    """

    name = "autoattack"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 norm: str | Norm = Norm.LINF, version: str = "standard",
                 attacks: Sequence[MemberSpec] | None = None, seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        if not isinstance(version, str) or version.lower() not in (*VERSIONS, "custom"):
            raise InputError(f"unknown AutoAttack version {version!r}; expected one of "
                             f"{[*VERSIONS, 'custom']}")
        self.version = version.lower()
        if self.version == "custom":
            if attacks is None or isinstance(attacks, str) or len(attacks) == 0:
                raise InputError("AutoAttack version 'custom' needs a non-empty list of attacks, "
                                 "e.g. attacks=['apgd-ce', 'apgd-dlr']")
            self.members = [_parse_member(a) for a in attacks]
        else:
            if attacks is not None:
                raise InputError(f"attacks= is only for version='custom'; version {self.version!r} "
                                 "has fixed members")
            self.members = [(n, dict(p)) for n, p in VERSIONS[self.version]]
        self.reset_report()

    def reset_report(self) -> None:
        """Forget the per-member totals accumulated over earlier calls."""
        self.report: list[dict[str, Any]] = []
        self.clean_accuracy: float | None = None
        self._seen = 0
        self._clean_correct = 0
        self._totals: list[dict[str, Any]] = [
            {"robust": 0, "n_images": 0, "seconds": 0.0, "forward": 0, "backward": 0, "params": None}
            for _ in self.members]

    def _build(self, name: str, params: dict[str, Any]) -> Attack:

        if name not in registry.ATTACKS:
            raise InputError(f"AutoAttack member {name!r} is not a registered attack; registered "
                             f"attacks: {sorted(registry.ATTACKS)}")
        accepted = set(inspect.signature(registry.ATTACKS[name].__init__).parameters)
        if "eps" not in accepted:
            raise InputError(f"AutoAttack member {name!r} takes no eps, so it cannot share AutoAttack's budget")
        kwargs = dict(params, eps=self.eps)
        if "norm" in accepted:
            kwargs["norm"] = self.norm.value
        if "seed" in accepted and "seed" not in kwargs:
            kwargs["seed"] = self.seed
        member = registry.make_attack(name, self.model, **kwargs)
        if member.norm is not self.norm:
            raise InputError(f"AutoAttack member {name!r} attacks in {member.norm.value}, not in "
                             f"AutoAttack's {self.norm.value}")
        return member

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Build every member first so a missing name fails before any time is spent.
        members = [self._build(n, p) for n, p in self.members]
        with torch.no_grad():
            robust = self.logits(images).argmax(1) == labels
        self._seen += images.shape[0]
        self._clean_correct += int(robust.sum())
        adv = images.clone()
        for member, totals in zip(members, self._totals):
            idx = robust.nonzero().squeeze(1)
            totals["params"] = member.params()
            if idx.numel():
                t0 = time.perf_counter()
                member_adv = member(images[idx], labels[idx])
                with torch.no_grad():
                    fooled = self.logits(member_adv).argmax(1) != labels[idx]
                totals["seconds"] += time.perf_counter() - t0
                adv[idx] = member_adv
                robust[idx[fooled]] = False
                totals["n_images"] += idx.numel()
                totals["forward"] += member.stats.forward
                totals["backward"] += member.stats.backward
                self.stats.forward += member.stats.forward
                self.stats.backward += member.stats.backward
            totals["robust"] += int(robust.sum())
        self._update_report()
        return adv

    def _update_report(self) -> None:
        n = max(self._seen, 1)
        self.clean_accuracy = self._clean_correct / n
        self.report = [
            {"attack": name, "params": t["params"], "robust_accuracy": t["robust"] / n,
             "n_images": t["n_images"], "seconds": t["seconds"], "forward": t["forward"],
             "backward": t["backward"]}
            for (name, _), t in zip(self.members, self._totals)]

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(version=self.version, attacks=[{"name": n, **prm} for n, prm in self.members])
        return p
