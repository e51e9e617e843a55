"""The RIDE defense module (see the package docstring for the algorithm and our choices)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from advrepair.defenses.ride.batched import fit_chunk
from advrepair.defenses.ride.native_engine import fit_chunk_native, native_engine_covers
from advrepair.defenses.ride.networks import MODES, RIDE_NETWORKS, RideNetSpec, resolve_network
from advrepair.defenses.ride.reference import fit_one
from advrepair.defenses.ride.results import RideResult, RideTrajectory
from advrepair.errors import InputError
from advrepair.seeding import image_generators
from advrepair.validation import check_images, check_int_at_least, check_positive, check_seed


class RIDE(nn.Module):
    """Per-input self-supervised data estimation (DAE / RIDE / DIP / I-DIP), images -> images.

    Args:
        mode: "ride" (Alg. 2, default), "dae" (Alg. 1), "dip" (Eq. 4) or "idip" (I-DIP).
        network: "auto", "mnist", "cifar", "imagenet" (Table 3) or a ``RideNetSpec``.
        sigma: Gaussian std of the DAE input and target noise (paper: 0.5).
        alpha: interpolation of Alg. 2 / Eq. 9 (paper: 0.9); ignored by "dae" and "dip".
        iterations: K, Adam steps per checkpoint (paper: 2000).
        checkpoints: T (paper: 5). Every mode runs T * K steps.
        batch: mini-batch n of noisy samples per step (paper: 1).
        lr: Adam learning rate (paper: 1e-4).
        weight_decay: Adam's L2 weight decay (paper: 1e-4).
        dropout: dropout probability at the Table 3 layers (paper: 0.5; 0 disables).
        estimate_samples: noisy inputs averaged for x_est (default: ``batch``).
        seed: seeds the per-image randomness (with the image content); None = truly random.
        chunk_size: images fitted together; speed/memory only (16: the grouped engine's fastest
            per image on the project's CPU, bench/reference/ride_throughput-cpu-2026-12-06; the
            native engine is as fast at 8-64, ride_throughput-native-cpu-2026-12-07).
        progress: show a tqdm bar over the steps.

    Shapes: (B, C, H, W) in [0, 1] -> (B, C, H, W) in [0, 1], detached (use BPDA to attack it).

    Example:
        >>> defense = RIDE(iterations=100, checkpoints=5, seed=0)
        >>> cleaned = defense(torch.rand(8, 1, 28, 28))
    """

    def __init__(self, mode: str = "ride", network: str | RideNetSpec = "auto", sigma: float = 0.5,
                 alpha: float = 0.9, iterations: int = 2000, checkpoints: int = 5, batch: int = 1,
                 lr: float = 1e-4, weight_decay: float = 1e-4, dropout: float = 0.5,
                 estimate_samples: int | None = None, seed: int | None = 0, chunk_size: int = 16,
                 progress: bool = False) -> None:
        super().__init__()
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(network, RideNetSpec) and network != "auto" and network not in RIDE_NETWORKS:
            raise InputError(f"network must be 'auto', one of {sorted(RIDE_NETWORKS)} or a RideNetSpec, "
                             f"got {network!r}")
        if isinstance(network, RideNetSpec):
            check_int_at_least(network.width, "network.width", 1)
            check_int_at_least(network.depth, "network.depth", 2)
            if any(not 1 <= k < network.depth for k in network.dropout_layers):
                raise InputError(f"network.dropout_layers must be hidden layers 1..{network.depth - 1}, "
                                 f"got {network.dropout_layers}")
        self.mode = mode
        self.network = network
        self.sigma = check_positive(sigma, "sigma", allow_zero=True)
        alpha = check_positive(alpha, "alpha", allow_zero=True)
        if alpha > 1:
            raise InputError(f"alpha must lie in [0, 1], got {alpha}")
        self.alpha = alpha
        self.iterations = check_int_at_least(iterations, "iterations", 1)
        self.checkpoints = check_int_at_least(checkpoints, "checkpoints", 1)
        self.batch = check_int_at_least(batch, "batch", 1)
        self.lr = check_positive(lr, "lr")
        self.weight_decay = check_positive(weight_decay, "weight_decay", allow_zero=True)
        dropout = check_positive(dropout, "dropout", allow_zero=True)
        if dropout >= 1:
            raise InputError(f"dropout must lie in [0, 1), got {dropout}")
        self.dropout = dropout
        self.estimate_samples = self.batch if estimate_samples is None else check_int_at_least(
            estimate_samples, "estimate_samples", 1)
        check_seed(seed)
        self.seed = seed
        self.chunk_size = check_int_at_least(chunk_size, "chunk_size", 1)
        self.progress = progress
        self.last_result: RideResult | None = None

    # ---------------------------------------------------------------- configuration helpers
    @property
    def is_dae(self) -> bool:
        """True for the DAE-based modes (noisy input and target), False for DIP ones."""
        return self.mode in ("ride", "dae")

    @property
    def effective_alpha(self) -> float:
        """alpha of Eq. 9; 1 (a fixed target) for the non-iterative modes."""
        return self.alpha if self.mode in ("ride", "idip") else 1.0

    @property
    def total_steps(self) -> int:
        return self.iterations * self.checkpoints

    def params(self) -> dict[str, Any]:
        """Name and parameters, as recorded in results.json."""
        net = self.network if isinstance(self.network, str) else {
            "width": self.network.width, "depth": self.network.depth,
            "dropout_layers": list(self.network.dropout_layers)}
        return {"name": "ride", "mode": self.mode, "network": net, "sigma": self.sigma,
                "alpha": self.alpha, "iterations": self.iterations, "checkpoints": self.checkpoints,
                "batch": self.batch, "lr": self.lr, "weight_decay": self.weight_decay,
                "dropout": self.dropout, "estimate_samples": self.estimate_samples, "seed": self.seed}

    def _check(self, images: object, clean: object, adversarial: object
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        images = check_images(images)
        refs: list[torch.Tensor | None] = []
        for ref, name in ((clean, "clean"), (adversarial, "adversarial")):
            if ref is None:
                refs.append(None)
                continue
            checked = check_images(ref, name)
            if checked.shape != images.shape:
                raise InputError(f"{name} must have the images' shape {tuple(images.shape)}, "
                                 f"got {tuple(checked.shape)}")
            refs.append(checked.detach().to(images.device, images.dtype))
        adv = images.detach() if refs[1] is None else refs[1]
        return images.detach(), refs[0], adv

    # ---------------------------------------------------------------- public entry points
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        result = self.fit(images)
        return result.estimate

    def fit(self, images: torch.Tensor, clean: torch.Tensor | None = None,
            adversarial: torch.Tensor | None = None, trajectory: bool = False) -> RideResult:
        """Fit one network per image with the native engine where it covers the network, else the
        grouped engine, and return the estimates.

        Args:
            images: (B, C, H, W) in [0, 1], the (possibly adversarial) inputs x~.
            clean: (B, C, H, W) clean references for the trajectory (optional).
            adversarial: (B, C, H, W) adversarial references (default: ``images``).
            trajectory: record per-step L2 distances of the estimate to the references.

        Returns:
            RideResult with ``estimate`` (B, C, H, W) and ``checkpoints`` (T, B, C, H, W).
        """
        x, clean, adv = self._check(images, clean, adversarial)
        spec = resolve_network(self.network, x.shape[1])
        gens = image_generators(x, self.seed, "ride")
        trace_gens = image_generators(x, self.seed, "ride-trajectory") if trajectory else None
        bar = tqdm(total=self.total_steps * math.ceil(x.shape[0] / self.chunk_size),
                   disable=not self.progress, desc="RIDE", leave=False)
        fit_images = (fit_chunk_native if native_engine_covers(spec, x.shape[1], self.dropout, x.device, x.dtype)
                      else fit_chunk)
        parts = []
        with torch.inference_mode(False), torch.enable_grad(), bar:
            x, adv = x.clone(), adv.clone()
            clean = None if clean is None else clean.clone()
            for start in range(0, x.shape[0], self.chunk_size):
                sl = slice(start, start + self.chunk_size)
                parts.append(fit_images(self,
                    x[sl], spec, gens[sl], None if clean is None else clean[sl], adv[sl],
                    None if trace_gens is None else trace_gens[sl], bar))
        result = RideResult(
            estimate=torch.cat([p.estimate for p in parts]),
            checkpoints=torch.cat([p.checkpoints for p in parts], 1),
            final_loss=torch.cat([p.final_loss for p in parts]),
            trajectory=RideTrajectory.cat([p.trajectory for p in parts if p.trajectory is not None])
            if trajectory else None)
        self.last_result = result
        return result

    def fit_sequential(self, images: torch.Tensor, clean: torch.Tensor | None = None,
                       adversarial: torch.Tensor | None = None, trajectory: bool = False) -> RideResult:
        """The reference path: the same algorithm one image at a time, ``nn.Conv2d`` networks and
        ``torch.optim.Adam``, same per-image random numbers. Same arguments and result as ``fit``.
        """
        x, clean, adv = self._check(images, clean, adversarial)
        spec = resolve_network(self.network, x.shape[1])
        gens = image_generators(x, self.seed, "ride")
        trace_gens = image_generators(x, self.seed, "ride-trajectory") if trajectory else None
        parts = []
        with torch.inference_mode(False), torch.enable_grad():
            x, adv = x.clone(), adv.clone()
            clean = None if clean is None else clean.clone()
            for i in tqdm(range(x.shape[0]), disable=not self.progress, desc="RIDE (sequential)",
                          leave=False):
                parts.append(fit_one(self,
                    x[i], spec, gens[i], None if clean is None else clean[i], adv[i],
                    None if trace_gens is None else trace_gens[i]))
        result = RideResult(
            estimate=torch.stack([p.estimate for p in parts]),
            checkpoints=torch.stack([p.checkpoints for p in parts], 1),
            final_loss=torch.stack([p.final_loss for p in parts]),
            trajectory=RideTrajectory.cat([p.trajectory for p in parts if p.trajectory is not None])
            if trajectory else None)
        self.last_result = result
        return result
