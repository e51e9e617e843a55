"""GenAttack (Alzantot et al. 2019): a genetic search over perturbations using only the scores."""
from __future__ import annotations

from typing import Any, Callable

import torch

from advrepair.attacks.base import Attack
from advrepair.attacks.registry import register_attack
from advrepair.engine import project
from advrepair.enums import Norm
from advrepair.seeding import image_generators
from advrepair.validation import check_fraction, check_int_at_least, check_positive


def log_odds_fitness(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log sum_{j != y} p_j - log p_y`` per image: positive exactly when the image is
    misclassified (the paper's untargeted fitness; its targeted one is the negative of this
    at the target class)."""
    logp = torch.log_softmax(logits.float(), dim=1)
    true = logp.gather(1, labels[:, None]).squeeze(1)
    others = logp.scatter(1, labels[:, None], float("-inf")).logsumexp(1)
    return others - true


@register_attack("genattack")
class GenAttack(Attack):
    """GenAttack: evolve a population of perturbations of each image, scored by the logits only.

    Alzantot, Sharma, Chakraborty, Zhang, Hsieh, Srivastava, "GenAttack: practical black-box
    attacks with gradient-free optimization", GECCO 2019 (Algorithm 1). Each generation keeps
    the fittest member (elitism), draws parents with probabilities softmax(fitness / tau),
    makes each child by uniform crossover (a pixel from the first parent with probability
    p1 / (p1 + p2)), mutates each pixel with probability ``rho`` by ``U(-alpha, alpha) * eps``,
    and projects onto the budget. The paper's adaptive scaling shrinks rho and alpha
    (``max(rho_min, 0.5 * 0.9^k)``, ``max(alpha_min, 0.4 * 0.9^k)``) with the number k of
    plateaus: stretches of ``plateau`` generations without a better elite.

    Queries: the first generation costs ``population`` forward passes per image, every later
    one ``population - 1`` (the elite keeps its score); an image stops as soon as a member
    fools the model, and never goes past ``n_queries``. Every random number comes from a
    generator seeded by the image, so results do not depend on batch-mates. L2: the start
    and the mutations are scaled to the ball (a mutation's expected norm is ``alpha * eps``),
    then projected. Deviation: no dimensionality reduction (the paper uses it for ImageNet
    only) and fitness on the model's logits in fp32.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = GenAttack(model, eps=0.1, n_queries=10000, population=6, mutation_rate=0.05)(images, labels)
    """

    name = "genattack"
    supports_targets = True

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 norm: str | Norm = Norm.LINF, n_queries: int = 10000, population: int = 6,
                 mutation_rate: float = 0.05, alpha: float = 0.15, temperature: float = 0.1,
                 adaptive: bool = True, plateau: int = 20, seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.population = check_int_at_least(population, "population", 2)
        self.n_queries = check_int_at_least(n_queries, "n_queries", self.population)
        self.mutation_rate = check_fraction(mutation_rate, "mutation_rate")
        self.alpha = check_fraction(alpha, "alpha")
        self.temperature = check_positive(temperature, "temperature")
        self.adaptive = bool(adaptive)
        self.plateau = check_int_at_least(plateau, "plateau", 1)

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(n_queries=self.n_queries, population=self.population, mutation_rate=self.mutation_rate,
                 alpha=self.alpha, temperature=self.temperature, adaptive=self.adaptive, plateau=self.plateau)
        return p

    def _score(self, members: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fitness, fooled) of (A, N, C, H, W) members of A images: N counted passes per image."""
        a, n = members.shape[:2]
        logits = self.logits(members.flatten(0, 1))
        repeat = labels.repeat_interleave(n)
        targets = self.targets
        if targets is not None:
            self.targets = targets.repeat_interleave(n)
        try:
            fitness = self.objective(logits, repeat, loss=log_odds_fitness)
            fooled = self.succeeded(logits, repeat)
        finally:
            self.targets = targets
        return fitness.view(a, n), fooled.view(a, n)

    def _project(self, members: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a, n = members.shape[:2]
        centers = x[:, None].expand_as(members).flatten(0, 1)
        return project(members.flatten(0, 1), centers, self.eps, self.norm).view_as(members)

    def _pixel_scale(self, d: int, rate: torch.Tensor | float) -> torch.Tensor | float:
        if self.norm is Norm.LINF:
            return self.eps
        return self.eps * torch.sqrt(3.0 / (torch.as_tensor(rate) * d))

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._evolve(images, labels)

    def _evolve(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape[0], self.population, x[0].numel()
        shape = x.shape[1:]
        gens = image_generators(x, self.seed, f"genattack-{self.norm.value}")
        u0 = torch.stack([torch.rand(n, d, generator=g) for g in gens]).to(x.device)
        start_scale = self._pixel_scale(d, 1.0)
        pop = self._project(x[:, None] + ((2 * u0 - 1) * start_scale).view(b, n, *shape), x)
        fitness, fooled = self._score(pop, y)
        adv = pop[torch.arange(b), fitness.argmax(1)].clone()
        done = fooled.any(1)
        first = fooled.float().argmax(1)
        adv[done] = pop[torch.arange(b), first][done]
        targets_all = self.targets
        act = (~done).nonzero().flatten()
        x_a, y_a, pop_a, fit_a = x[act], y[act], pop[act], fitness[act]
        gens_a = [gens[i] for i in act.tolist()]
        best = fit_a.max(1).values
        stale = torch.zeros(len(act), dtype=torch.long, device=x.device)
        plateaus = torch.zeros(len(act), dtype=torch.long, device=x.device)
        used = n
        while act.numel() and used + n - 1 <= self.n_queries:
            if targets_all is not None:
                self.targets = targets_all[act]
            a = act.numel()
            elite = fit_a.argmax(1)
            probs = torch.softmax(fit_a / self.temperature, dim=1)
            u = torch.stack([torch.rand(n - 1, 2 + 3 * d, generator=g) for g in gens_a]).to(x.device)
            cdf = probs.cumsum(1)
            pick1 = torch.searchsorted(cdf, u[:, :, 0].contiguous()).clamp(max=n - 1)
            pick2 = torch.searchsorted(cdf, u[:, :, 1].contiguous()).clamp(max=n - 1)
            rows = torch.arange(a, device=x.device)[:, None]
            p1, p2 = probs[rows, pick1], probs[rows, pick2]
            share = (p1 / (p1 + p2).clamp_min(1e-30))[..., None]
            flat = pop_a.flatten(2)
            child = torch.where(u[:, :, 2:2 + d] < share, flat[rows, pick1], flat[rows, pick2])
            if self.adaptive:
                rate = torch.clamp(0.5 * 0.9 ** plateaus.float(), min=self.mutation_rate)[:, None, None]
                reach = torch.clamp(0.4 * 0.9 ** plateaus.float(), min=self.alpha)[:, None, None]
            else:
                rate = torch.full((a, 1, 1), self.mutation_rate, device=x.device)
                reach = torch.full((a, 1, 1), self.alpha, device=x.device)
            step = (2 * u[:, :, 2 + 2 * d:] - 1) * reach * self._pixel_scale(d, rate)
            child = child + torch.where(u[:, :, 2 + d:2 + 2 * d] < rate, step, torch.zeros_like(step))
            children = self._project(child.view(a, n - 1, *shape), x_a)
            child_fit, child_fooled = self._score(children, y_a)
            used += n - 1
            elite_member = pop_a[torch.arange(a), elite]
            pop_a = torch.cat([elite_member[:, None], children], 1)
            fit_a = torch.cat([fit_a[torch.arange(a), elite][:, None], child_fit], 1)
            improved = fit_a.max(1).values > best
            best = torch.maximum(best, fit_a.max(1).values)
            stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
            hit = stale >= self.plateau
            plateaus, stale = plateaus + hit.long(), torch.where(hit, torch.zeros_like(stale), stale)
            won = child_fooled.any(1)
            adv[act] = pop_a[torch.arange(a), fit_a.argmax(1)]
            if bool(won.any()):
                firsts = child_fooled.float().argmax(1)
                adv[act[won]] = children[torch.arange(a), firsts][won]
                keep = ~won
                act, x_a, y_a, pop_a, fit_a, best, stale, plateaus = (
                    t[keep] for t in (act, x_a, y_a, pop_a, fit_a, best, stale, plateaus))
                gens_a = [g for g, k in zip(gens_a, keep.tolist()) if k]
        self.targets = targets_all
        return adv


__all__ = ["GenAttack", "log_odds_fitness"]
