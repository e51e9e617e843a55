"""The defense-aware attack of mao2021 (Sec. 3.3, Eq. 8) and its lambda sweep (Figure 4).

The attacker maximizes ``L_l = L_c(x_a, y) - lambda_s * L_s(x_a)``: the classification loss
while keeping the self-supervised loss low, so the reverse attack has less to undo.
lambda_s = 0 is the plain attack. The paper crafts it on the classifier and then applies
the defense; so do we (the adaptive protocol adds attacks through the defense).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from advrepair.adaptive.contract import HasSSLLoss
from advrepair.attacks.pgd import PGD
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.evaluation.metrics import Accuracy
from advrepair.validation import check_images, check_int_at_least, check_labels, check_positive


class DefenseAwarePGD(PGD):
    """PGD on ``L_c - lambda_s * L_s`` (mao2021 Eq. 8); ``defense`` provides ``ssl_loss``.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = DefenseAwarePGD(classifier, reverse_attack, lambda_s=1.0, eps=0.1, alpha=0.01, steps=20)(x, y)
    """

    name = "defense-aware-pgd"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], defense: HasSSLLoss, lambda_s: float = 1.0,
                 eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10, random_start: bool = True,
                 restarts: int = 1, norm: str | Norm = Norm.LINF, loss: str = "ce", seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start, restarts=restarts,
                         norm=norm, loss=loss, seed=seed)
        self.defense = defense
        self.lambda_s = check_positive(lambda_s, "lambda_s", allow_zero=True)
        if self.lambda_s and not callable(getattr(defense, "ssl_loss", None)):
            raise InputError(f"lambda_s={self.lambda_s:g} needs a defense with an ssl_loss method (e.g. a "
                             f"ReverseAttack), got {type(defense).__name__}")
        classification_loss = self.loss

        def combined(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            value = classification_loss(logits, labels)
            if self.lambda_s and self._current is not None:
                value = value - self.lambda_s * self.defense.ssl_loss(self._current, stream="attack",
                                                                      differentiable=True)
            return value

        self.loss = combined
        self._current: torch.Tensor | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self._current = x  # the combined loss needs the image the logits came from
        return super().logits(x)

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(lambda_s=self.lambda_s)
        inner = getattr(self.defense, "params", None)
        p["defense"] = inner()["name"] if callable(inner) else type(self.defense).__name__
        return p


def lambda_sweep(classifier: nn.Module, defense: HasSSLLoss, images: torch.Tensor, labels: torch.Tensor,
                 lambdas: Sequence[float], *, eps: float, alpha: float, steps: int,
                 batch_size: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Robust accuracy without and with the defense for each lambda_s (mao2021 Figure 4).

    Returns one dict per lambda: lambda_s, accuracy_standard, accuracy_repaired, n_images,
    the attack's parameters and the mean L_s of the adversarial images.
    """
    if not callable(defense) or not callable(getattr(defense, "ssl_loss", None)):
        raise InputError(f"lambda_sweep needs a defense with an ssl_loss method (e.g. a ReverseAttack), "
                         f"got {type(defense).__name__}")
    check_images(images)
    check_labels(labels, images.shape[0])
    batch_size = check_int_at_least(batch_size, "batch_size", 1)
    try:
        lambdas = list(lambdas)
    except TypeError:
        lambdas = []
    if not lambdas:
        raise InputError("lambdas must be a non-empty sequence of numbers >= 0 (one row per lambda_s)")
    rows = []
    for lam in lambdas:
        attack = DefenseAwarePGD(classifier, defense, lambda_s=lam, eps=eps, alpha=alpha, steps=steps, seed=seed)
        std, rep, ls = [], [], []
        for start in range(0, len(images), batch_size):
            x, y = images[start:start + batch_size], labels[start:start + batch_size]
            adv = attack(x, y)
            with torch.no_grad():
                std.append(classifier(adv).argmax(1) == y)
                rep.append(classifier(defense(adv)).argmax(1) == y)
                ls.append(defense.ssl_loss(adv))
        s, r = torch.cat(std), torch.cat(rep)
        rows.append(sweep_entry(float(lam), Accuracy.of(s.numpy()), Accuracy.of(r.numpy()), attack.params(),
                                mean_ssl_loss_adversarial=torch.cat(ls).mean().item()))
    return rows


def sweep_entry(lambda_s: float, standard: Accuracy, repaired: Accuracy, attack: dict[str, Any],
                **extra: Any) -> dict[str, Any]:
    """One row of the lambda sweep (mao2021 Figure 4), as ``lambda_sweep`` and the adaptive
    protocol both report it: accuracy without and with the defense, each with its s.e."""
    return {"lambda_s": float(lambda_s), "accuracy_standard": standard.value, "stderr_standard": standard.stderr,
            "accuracy_repaired": repaired.value, "stderr_repaired": repaired.stderr, "n_images": repaired.n,
            "attack": attack, **extra}
