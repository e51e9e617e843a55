"""The experiment's rows: every attack on every model, stored as records."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
from torch import nn  # noqa: E402

from advrepair.adaptive.bpda import BPDA  # noqa: E402
from advrepair.adaptive.eot import EOT  # noqa: E402
from advrepair.attacks.base import Attack  # noqa: E402
from advrepair.attacks.hopskipjump import HopSkipJump  # noqa: E402
from advrepair.attacks.pgd import PGD  # noqa: E402
from advrepair.attacks.genattack import GenAttack  # noqa: E402
from advrepair.attacks.spsa import SPSA  # noqa: E402
from advrepair.attacks.square import Square  # noqa: E402
from advrepair.attacks.transfer import Transfer  # noqa: E402
from advrepair.data.subsets import balanced_subset  # noqa: E402
from advrepair.defenses.adversarial_transformation import AdversarialTransformation  # noqa: E402
from advrepair.errors import InputError  # noqa: E402
from advrepair.evaluation.harness import ModelEntry, evaluate_attack  # noqa: E402
from advrepair.evaluation.metrics import Accuracy  # noqa: E402
from advrepair.evaluation.store import ResultsStore, record_key  # noqa: E402
from advrepair.evaluation.worst_case import worst_case  # noqa: E402
from advrepair.models.checkpoint import (ModelCard)
from advrepair import zoo  # noqa: E402
from advrepair.apps.experiments.adversarial_transformation.config import (DEPLOYED, IMITATOR_ARCH, PROTOCOL, ZOO_F_A,
                                                                          ZOO_INDEPENDENT, ZOO_NO_DEFENSE, ZOO_PGD_AT,
                                                                          XiaoConfig)
from advrepair.apps.experiments.adversarial_transformation.models import (_Run, _ensure_defended_pair, _ensure_f_b,
                                                                          _ensure_ablation_fa, _ensure_imitator,
                                                                          _ensure_independent, _log, _transform,
                                                                          transformation_statistics, zoo_classifier)
from advrepair.apps.experiments.adversarial_transformation.report import write_xiao_report



@dataclass
class _Model:
    name: str
    clf: nn.Module
    card: ModelCard

    def entry_card(self) -> dict[str, Any]:
        return self.card.__dict__


def _row(run: _Run, name: str, model: _Model, attack: Attack | None, crafted_on: str,
         defenses: Mapping[str, nn.Module], with_base: bool, attack_extra: dict[str, Any] | None = None,
         ) -> dict[str | None, dict[str, Any]]:
    """One attack row: craft once, score the classifier alone (``with_base``) and after each
    defense; one record per cell, skipped when already in the store. Returns {label: record}."""
    entry = ModelEntry(model.name, model.clf, card=model.entry_card(), defenses=dict(defenses))
    return evaluate_attack(run.data, entry, attack, run.store, row=name, row_field="xiao_row", crafted_on=crafted_on,
                           with_base=with_base, subset=run.subset, batch_size=run.cfg.batch_size, device=run.device,
                           progress=run.cfg.progress, extra={"protocol": PROTOCOL}, attack_extra=attack_extra,
                           announce=f"xiao2020 | {model.name} | {name}: crafted on {crafted_on}" if run.cfg.progress else None)


def _pgd(cfg: XiaoConfig, model: nn.Module) -> PGD:
    return PGD(model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.attack_steps, seed=cfg.seed)


def _eot_row(run: _Run, model: _Model, g: AdversarialTransformation, label: str, draws: int
             ) -> dict[str | None, dict[str, Any]]:
    cfg = run.cfg
    unseeded = _transform(g.f_b, g.delta, g.steps, None, g.random_start)
    attack_model = EOT(nn.Sequential(BPDA(unseeded), model.clf), draws=draws)
    torch.manual_seed(cfg.seed)  # the unseeded draws come from torch's generator: make the run reproducible
    return _row(run, f"bpda-eot-{draws}", model, _pgd(cfg, attack_model),
                f"EOT over {draws} unseeded draws of BPDA(g, identity) + f_a", {label: g}, False,
                {"gradient_of_g": "identity (BPDA-I)", "eot_draws": draws})


def _surrogate_row(run: _Run, model: _Model, g: AdversarialTransformation, label: str, kind: str
                   ) -> dict[str | None, dict[str, Any]]:
    cfg = run.cfg
    surrogate = g.bpda_surrogate(kind, cfg.surrogate_temperature)
    attack_model = nn.Sequential(BPDA(g, surrogate), model.clf)
    return _row(run, f"bpda-{kind}", model, _pgd(cfg, attack_model),
                f"BPDA(g, {kind} surrogate of sgn + Eq. 5 projection, {g.steps} steps unrolled) + f_a",
                {label: g}, False, {"gradient_of_g": surrogate.params(), "unrolled_steps": g.steps})


def _accuracy_dict(acc: Accuracy, over: list[str]) -> dict[str, Any]:
    return {"accuracy": acc.value, "stderr": acc.stderr, "n_correct": acc.correct, "n_images": acc.n, "over": over}


def run_xiao_experiment(cfg: XiaoConfig) -> Path:
    """Train or reuse every model, fill ``cfg.out``'s results store, write the report; returns report.md.

    Resumable: cached models (cards matching the config) are reused and records already in
    ``cfg.out/results.json`` are skipped, so a rerun recomputes nothing and adds no record.

    Example:
        >>> run_xiao_experiment(XiaoConfig(out=Path("/tmp/runs/xiao2020"), n_images=200))
    """
    if not isinstance(cfg, XiaoConfig):
        raise InputError(f"run_xiao_experiment takes a XiaoConfig, got {type(cfg).__name__}")
    start = time.perf_counter()
    device, train, test = cfg.start()
    data = balanced_subset(test, cfg.n_images, seed=cfg.seed)
    run = _Run(cfg, ResultsStore(cfg.out, resume=True), train, data,
               f"balanced {len(data)} (seed {cfg.seed})", device)
    cfg.models_dir.mkdir(parents=True, exist_ok=True)
    n_before = len(run.store.records)

    # -- Table 1: f_b columns and the selection statistic
    fbs = {v.name: _ensure_f_b(run, v) for v in cfg.fb_variants}
    stat_data = balanced_subset(test, min(cfg.stat_images, len(data)), seed=cfg.seed + 7)
    stat_images = stat_data.tensors()[0].to(device)
    table1_keys = []
    for v in cfg.fb_variants:
        f_b, card = fbs[v.name]
        g_v = _transform(f_b, cfg.delta, cfg.g_steps, cfg.seed)
        key = record_key(kind="xiao-table1", variant=v.name, f_b_sha256=card.weights_sha256, transform=g_v.params(),
                         samples=cfg.stat_samples, images=f"balanced {len(stat_data)} (seed {cfg.seed + 7})",
                         dataset=test.name)
        table1_keys.append(key)
        if run.store.has(key):
            continue
        _log(f"Table 1: selection statistic of f_b {v.name} ({cfg.stat_samples} draws x {len(stat_data)} images)")
        t0 = time.perf_counter()
        stats = transformation_statistics(g_v, stat_images, cfg.stat_samples)
        clean = next((m for m in card.metrics if m["metric"] == "clean_accuracy"), {})
        run.store.add({"kind": "xiao-table1", "key": key, "protocol": PROTOCOL, "variant": v.name,
                       "description": v.description, "recipe": card.recipe, "f_b_sha256": card.weights_sha256,
                       "f_b_clean_accuracy": clean.get("value"), "f_b_clean_n_images": clean.get("n_images"),
                       "linf": float(stats["linf"].mean()), "linf_se": float(stats["linf_se"].mean()),
                       "mean_abs": float(stats["mean_abs"].mean()), "mean_abs_se": float(stats["mean_abs_se"].mean()),
                       "linf_per_image_max": float(stats["linf"].max()), "samples": cfg.stat_samples,
                       "n_images": len(stat_data), "delta": cfg.delta, "g_steps": cfg.g_steps,
                       "training_seconds": (card.parent.get("training_cost") or {}).get("seconds"),
                       "seconds": time.perf_counter() - t0, "used_for_g": v.name == cfg.fb_for_g},
                      {"linf": stats["linf"].cpu().numpy(), "mean_abs": stats["mean_abs"].cpu().numpy(),
                       # Fig. 4: the first image and its expected transformation
                       "image": stat_images[:1].cpu().numpy(), "expected": stats["mean"][:1].cpu().numpy()})

    # -- the defended model, its PGD-AT twin (training cost), the independent model, the imitator
    f_b, fb_card = fbs[cfg.fb_for_g]
    for p in f_b.parameters():
        p.requires_grad_(False)
    g = _transform(f_b, cfg.delta, cfg.g_steps, cfg.seed)
    (fa_small, fa_small_card), (fa_at, at_card) = _ensure_defended_pair(run, g, fb_card)
    if cfg.zoo:
        g_zoo, fa, fa_card = zoo.load_defended(ZOO_F_A, device)
        if fa_card.parent.get("f_b_sha256") != fb_card.weights_sha256 or g_zoo.params() != g.params():
            raise InputError(f"{ZOO_F_A} was trained on another g than this run's ({g_zoo.params()})")
        indep, indep_card = zoo_classifier(run, ZOO_INDEPENDENT)
        no_defense, no_defense_card = zoo_classifier(run, ZOO_NO_DEFENSE)
        at_model = _Model(ZOO_PGD_AT, *zoo_classifier(run, ZOO_PGD_AT))
        main_name = ZOO_F_A
    else:
        fa, fa_card = fa_small, fa_small_card
        indep, indep_card = _ensure_independent(run)
        no_defense, no_defense_card = indep, indep_card
        at_model = _Model("fa-pgd-at", fa_at, at_card)
        main_name = f"fa-xiao-delta{cfg.delta:g}"
    h, h_card = _ensure_imitator(run, g, fb_card)
    cost_key = record_key(kind="xiao-training-cost", fa=fa_small_card.weights_sha256, pgd_at=at_card.weights_sha256)
    if not run.store.has(cost_key):
        fb_cost = fb_card.parent.get("training_cost") or {}
        run.store.add({"kind": "xiao-training-cost", "key": cost_key, "protocol": PROTOCOL,
                       "transformation": fa_small_card.parent["training_cost"], "pgd-at": at_card.parent["training_cost"],
                       "f_b_pretraining": fb_cost, "recipe_transformation": fa_small_card.recipe,
                       "recipe_pgd_at": at_card.recipe, "transform": g.params(),
                       "f_a_clean_defended": next(m["value"] for m in fa_small_card.metrics
                                                  if m["metric"] == "clean_accuracy_defended"),
                       "pgd_at_clean": next(m["value"] for m in at_card.metrics if m["metric"] == "clean_accuracy")})

    main = _Model(main_name, fa, fa_card)
    small = _Model(f"fa-xiao-delta{cfg.delta:g}", fa_small, fa_small_card)
    defended = nn.Sequential(g, fa).eval()
    rows: dict[str, dict[str | None, dict[str, Any]]] = {}
    d = {DEPLOYED: g}
    # -- Table 3 rows on the deployed defense
    rows["clean"] = _row(run, "clean", main, None, "-", d, True)
    rows["white-box-transfer"] = _row(run, "white-box-transfer", main, _pgd(cfg, fa),
                                      "f_a alone (WT, Sec. 4.2)", d, True)
    for kind in cfg.surrogates:
        rows[f"bpda-{kind}"] = _surrogate_row(run, main, g, DEPLOYED, kind)
    for r in cfg.eot_draws:
        rows[f"bpda-eot-{r}"] = _eot_row(run, main, g, DEPLOYED, r)
    rows["bpda-identity"] = _row(run, "bpda-identity", main, _pgd(cfg, nn.Sequential(BPDA(g), fa)),
                                 "BPDA(g, identity) + f_a (BPDA-I, Table 1's attack)", d, False,
                                 {"gradient_of_g": "identity (BPDA-I)"})
    rows["full-gradient"] = _row(run, "full-gradient", main, _pgd(cfg, defended),
                                 f"f_a(g(x)) by automatic differentiation through the {g.steps} unrolled steps of g "
                                 "(sgn' = 0: the masked identity)", d, False, {"gradient_of_g": "autograd, unrolled"})
    eg = _expected_transformation(g, cfg.eg_samples)
    rows["eg-start"] = _row(run, "eg-start", main,
                            PGD(nn.Sequential(BPDA(g), fa), eps=cfg.eps, alpha=cfg.alpha, steps=cfg.attack_steps,
                                seed=cfg.seed, start=eg, start_name=f"E[g(x)] over {cfg.eg_samples} draws, "
                                                                    "projected onto the eps-ball"),
                            "BPDA-I + f_a from E[g(x)] (Sec. 4.3), projected onto the eps-ball", d, False,
                            {"gradient_of_g": "identity (BPDA-I)", "eg_samples": cfg.eg_samples})
    g_small = _transform(f_b, cfg.delta, cfg.small_n, cfg.seed)
    fa_n, fa_n_card = _ensure_ablation_fa(run, g_small, fb_card, f"fa-xiao-N{cfg.small_n}", "App. A.3")
    small_source = nn.Sequential(BPDA(g_small, g_small.bpda_surrogate("tanh", cfg.surrogate_temperature)), fa_n).eval()
    small_name = f"BPDA(tanh) through f_a(g(x)) with N = {cfg.small_n} (another f_a, {_recipe_line(cfg)})"
    rows["transfer-small-n"] = _row(
        run, "transfer-small-n", main,
        Transfer(defended, source=small_source, attack="pgd", eps=cfg.eps, alpha=cfg.alpha, steps=cfg.attack_steps,
                 seed=cfg.seed, source_name=small_name),
        f"PGD on {small_name}", d, False, {"source_weights": fa_n_card.weights_sha256, "source_steps": cfg.small_n})
    rows["spsa"] = _row(run, "spsa", main, SPSA(defended, eps=cfg.eps, delta=cfg.spsa_delta, steps=cfg.spsa_steps,
                                                samples=cfg.spsa_samples, lr=2.5 * cfg.eps / cfg.spsa_steps,
                                                seed=cfg.seed),
                        "f_a(g(x)), scores only: finite-difference (SPSA) gradient estimates", d, False)
    h_params = {"arch": IMITATOR_ARCH, "weights_sha256": h_card.weights_sha256, **h_card.config}
    rows["reparameterization"] = _row(run, "reparameterization", main,
                                      _pgd(cfg, nn.Sequential(BPDA(g, h), fa)),
                                      "BPDA(g, imitator h) + f_a (Sec. 4.1)", d, False, {"imitator": h_params})
    source_name = (f"{ZOO_INDEPENDENT} (zoo)" if cfg.zoo else f"independent SmallCNN (seed {cfg.seed + 1})")
    rows["transfer-independent"] = _row(
        run, "transfer-independent", main,
        Transfer(defended, source=indep, attack="pgd", eps=cfg.eps, alpha=cfg.alpha, steps=cfg.attack_steps,
                 seed=cfg.seed, source_name=source_name),
        f"PGD on {source_name}", d, True, {"source_weights": indep_card.weights_sha256})
    rows["square"] = _row(run, "square", main, Square(defended, eps=cfg.eps, n_queries=cfg.square_queries,
                                                      seed=cfg.seed), "f_a(g(x)), scores only", d, False)
    rows["genattack"] = _row(run, "genattack", main,
                             GenAttack(defended, eps=cfg.eps, n_queries=cfg.genattack_queries,
                                       population=cfg.genattack_population, seed=cfg.seed),
                             "f_a(g(x)), scores only (the paper's Table 2)", d, False)
    rows["hopskipjump"] = _row(run, "hopskipjump", main,
                               HopSkipJump(defended, eps=cfg.eps, norm="Linf", steps=cfg.hsj_steps,
                                           max_queries=cfg.hsj_max_queries, init_num_evals=cfg.hsj_init_evals,
                                           max_num_evals=cfg.hsj_max_evals, init_size=20, seed=cfg.seed),
                               "f_a(g(x)), decisions only", d, False)

    # -- baselines (Table 3's other methods)
    baselines = {}
    no_defense_name = ZOO_NO_DEFENSE if cfg.zoo else f"fa-standard-seed{cfg.seed + 1}"
    for role, model in (("no-defense", _Model(no_defense_name, no_defense, no_defense_card)),
                        ("pgd-at", at_model)):
        clean = _row(run, "clean", model, None, "-", {}, True)[None]
        pgd = _row(run, "white-box-pgd", model, _pgd(cfg, model.clf), "the classifier itself", {}, True)[None]
        baselines[role] = {"model": model.name, "clean": clean["key"], "pgd": pgd["key"]}

    # -- Fig. 5: surrogate BPDA against N
    fig5 = []
    for n in cfg.bpda_steps:
        if n == cfg.g_steps and cfg.sweep_random_start:
            g_n, label = g, DEPLOYED
        else:
            g_n, label = _transform(f_b, cfg.delta, n, cfg.seed, cfg.sweep_random_start), f"{DEPLOYED}-N{n}"
        point = {"steps": n, "label": label, "clean": _row(run, "clean", main, None, "-", {label: g_n},
                                                           False)[label]["key"]}
        for kind in cfg.surrogates:
            point[f"bpda-{kind}"] = _surrogate_row(run, main, g_n, label, kind)[label]["key"]
        fig5.append(point)

    # -- Figs. 6 and 7: Delta sweep, each with its own f_a; EOT sample sweep per Delta
    fig6, fig7 = [], []
    for delta in cfg.deltas:
        if math.isclose(delta, cfg.delta) and not cfg.zoo:
            model_d, g_d, label = main, g, DEPLOYED
        elif math.isclose(delta, cfg.delta):
            model_d, g_d, label = small, g, DEPLOYED
        else:
            g_d = _transform(f_b, delta, cfg.g_steps, cfg.seed)
            fa_d, card_d = _ensure_ablation_fa(run, g_d, fb_card)
            model_d, label = _Model(f"fa-xiao-delta{delta:g}", fa_d, card_d), f"{DEPLOYED}-delta{delta:g}"
        clean_row = _row(run, "clean", model_d, None, "-", {label: g_d}, True)
        wt = _row(run, "white-box-transfer", model_d, _pgd(cfg, model_d.clf), "f_a alone (WT, Sec. 4.2)",
                  {label: g_d}, True)
        eot = {r: _eot_row(run, model_d, g_d, label, r)[label]["key"] for r in cfg.eot_draws}
        fig7 += [{"delta": delta, "draws": r, "key": k} for r, k in eot.items()]
        fig6.append({"delta": delta, "model": model_d.name, "clean": clean_row[label]["key"],
                     "white-box-transfer": wt[label]["key"], "bpda-eot": eot[max(cfg.eot_draws)],
                     "eot_draws": max(cfg.eot_draws),
                     "training_seconds": (model_d.card.parent.get("training_cost") or {}).get("seconds")})

    # -- Table 1's first two rows: a defense per f_b (ablation f_a), clean and under BPDA-I
    table1_defense = []
    for v in cfg.fb_variants:
        f_b_v, card_v = fbs[v.name]
        g_v = _transform(f_b_v, cfg.delta, cfg.g_steps, cfg.seed)
        if v.name == cfg.fb_for_g:
            model_v = small
        else:
            fa_v, fa_v_card = _ensure_ablation_fa(run, g_v, card_v, f"fa-xiao-fb-{v.name}", "Table 1")
            model_v = _Model(f"fa-xiao-fb-{v.name}", fa_v, fa_v_card)
        label_v = f"{DEPLOYED}-fb-{v.name}"
        clean_v = _row(run, "clean", model_v, None, "-", {label_v: g_v}, False)[label_v]
        bpda_v = _row(run, "bpda-identity", model_v, _pgd(cfg, nn.Sequential(BPDA(g_v), model_v.clf)),
                      "BPDA(g, identity) + f_a (BPDA-I, Table 1's attack)", {label_v: g_v}, False,
                      {"gradient_of_g": "identity (BPDA-I)"})[label_v]
        table1_defense.append({"variant": v.name, "model": model_v.name, "clean": clean_v["key"],
                               "bpda-identity": bpda_v["key"]})

    fig3_key = _finite_differences(run, g)
    fig2_key = _fig2_images(run, g, fa)

    # -- summary: per-image worst cases
    attacked = {name: cells[DEPLOYED] for name, cells in rows.items() if name != "clean"}
    bpda_names = [n for n in attacked if n.startswith("bpda") or n in ("reparameterization", "full-gradient",
                                                                        "eg-start")]
    summary_key = record_key(kind="xiao-summary", rows={n: c[DEPLOYED]["key"] for n, c in rows.items()},
                             baselines=baselines, fig5=fig5, fig6=fig6, fig7=fig7, table1=table1_keys,
                             table1_defense=table1_defense, fig2=fig2_key, fig3=fig3_key,
                             cost=cost_key, imitator=h_card.weights_sha256)
    if not run.store.has(summary_key):
        worst = worst_case(run.store, list(attacked.values()))
        worst_bpda = worst_case(run.store, [attacked[n] for n in bpda_names])
        strongest = min(attacked, key=lambda n: attacked[n]["accuracy"])
        run.store.add({
            "kind": "xiao-summary", "key": summary_key, "protocol": PROTOCOL, "dataset": data.name,
            "subset": run.subset, "n_images": len(data), "config": cfg.to_dict(),
            "deployed": {"model": main.name, "label": DEPLOYED, "defense": g.params(),
                         # a list, not a mapping: results.json sorts keys and the report keeps this order
                         "rows": [{"name": n, "defended": c[DEPLOYED]["key"],
                                   "base": c[None]["key"] if None in c else None} for n, c in rows.items()]},
            "baselines": baselines, "table1": table1_keys, "table1_defense": table1_defense,
            "fig2": fig2_key, "fig3": fig3_key, "zoo": cfg.zoo,
            "deployed_card": {"name": main.name, "recipe": fa_card.recipe, "weights_sha256": fa_card.weights_sha256,
                              "metrics": fa_card.metrics, "provenance": fa_card.parent.get("provenance"),
                              "training_cost": fa_card.parent.get("training_cost")},
            "pgd_at_card": {"name": at_model.name, "recipe": at_model.card.recipe,
                            "provenance": at_model.card.parent.get("provenance")},
            "training_cost": cost_key,
            "imitator": {"config": h_card.config, "metrics": h_card.metrics, "weights_sha256": h_card.weights_sha256},
            "fig5": fig5, "fig6": fig6, "fig7": fig7,
            "worst_case": _accuracy_dict(worst, sorted(attacked)),
            "bpda_worst_case": _accuracy_dict(worst_bpda, sorted(bpda_names)),
            "most_effective": strongest,
            # wall time of the run that computed the last missing piece (a resumed run counts from its start)
            "run_seconds": time.perf_counter() - start, "run_records_added": len(run.store.records) + 1 - n_before})
    wall = time.perf_counter() - start
    added = len(run.store.records) - n_before
    report = write_xiao_report(cfg.out, wall_seconds=wall, records_added=added)
    _log(f"xiao2020 report: {report} ({wall:.0f} s, {added} new records)")
    return report


def _recipe_line(cfg: XiaoConfig) -> str:
    r = cfg.fa_recipe
    return f"{r.epochs} epoch(s) on {r.train_subset or 'all'} images"


def _expected_transformation(g: AdversarialTransformation, samples: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> the mean of ``samples`` draws of g(x) (draws 1000 on, apart from the deployed draw 0)."""
    return lambda x: g.sample(x, samples, first_draw=1000).mean(0)


def _finite_differences(run: _Run, g: AdversarialTransformation) -> str:
    """Fig. 3 (right): central finite differences of one output pixel of the deployed g with
    respect to the same input pixel, at every step size h, on ``fd_images`` images."""
    cfg = run.cfg
    images = run.data.tensors(range(min(cfg.fd_images, len(run.data))))[0].to(run.device)
    _, c, hgt, wid = images.shape
    # the pixel of each image whose value is nearest 0.5: inside [0, 1] with room on both sides
    flat = (images.flatten(1) - 0.5).abs().argmin(1)
    key = record_key(kind="xiao-fig3", transform=g.params(), steps=list(cfg.fd_steps), pixels=flat.tolist(),
                     subset=run.subset, n=len(images))
    if run.store.has(key):
        return key
    _log(f"Fig. 3: finite differences of g at {len(cfg.fd_steps)} step sizes on {len(images)} images")
    rows = torch.arange(len(images))
    estimates = []
    with torch.no_grad():
        for h in cfg.fd_steps:
            e = torch.zeros_like(images).flatten(1)
            e[rows, flat] = h
            e = e.view_as(images)
            up, down = (images + e).clamp(0, 1), (images - e).clamp(0, 1)
            span = (up - down).flatten(1)[rows, flat]
            estimates.append(((g(up) - g(down)).flatten(1)[rows, flat] / span).cpu())
    values = torch.stack(estimates, 1)  # (images, steps)
    run.store.add({"kind": "xiao-fig3", "key": key, "protocol": PROTOCOL, "steps": list(cfg.fd_steps),
                   "pixels": flat.tolist(), "image_shape": [c, hgt, wid], "n_images": len(images),
                   "transform": g.params(), "estimates": values.tolist()}, {"estimates": values.numpy()})
    return key


def _fig2_images(run: _Run, g: AdversarialTransformation, fa: nn.Module) -> str:
    """Fig. 2: an image, a PGD adversarial example of f_a at eps, and g(x) at Delta."""
    cfg = run.cfg
    x, y = run.data.tensors(range(1))
    x, y = x.to(run.device), y.to(run.device)
    key = record_key(kind="xiao-fig2", transform=g.params(), subset=run.subset, attack=_pgd(cfg, fa).params())
    if not run.store.has(key):
        adv = _pgd(cfg, fa)(x, y)
        with torch.no_grad():
            gx = g(x)
        run.store.add({"kind": "xiao-fig2", "key": key, "protocol": PROTOCOL, "eps": cfg.eps, "delta": g.delta,
                       "label": int(y[0])}, {"image": x.cpu().numpy(), "adversarial": adv.cpu().numpy(),
                                             "transformed": gx.cpu().numpy()})
    return key


# -- report -----------------------------------------------------------------------------------
