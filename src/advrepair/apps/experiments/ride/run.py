"""The RIDE experiment's rows: the stopping sweep on validation images, then every attack into every defense."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
from torch import nn  # noqa: E402

from advrepair.adaptive.bpda import BPDA  # noqa: E402
from advrepair.attacks.pgd import PGD  # noqa: E402
from advrepair.data import ImageDataset  # noqa: E402
from advrepair.data.subsets import balanced_subset  # noqa: E402
from advrepair.defenses.median import MedianFilter  # noqa: E402
from advrepair.defenses.total_variation import TotalVariation  # noqa: E402
from advrepair.errors import InputError  # noqa: E402
from advrepair.evaluation.harness import CLEAN, AttackSpec, ModelEntry, evaluate_matrix, weights_id  # noqa: E402
from advrepair.evaluation.metrics import accuracy_of  # noqa: E402
from advrepair.evaluation.store import ResultsStore, record_key  # noqa: E402
from advrepair.apps.experiments.setup import experiment_classifier  # noqa: E402
from advrepair.apps.experiments.ride.config import PROTOCOL, RideConfig, TRAJECTORY_POINTS, _log, split_validation
from advrepair.apps.experiments.ride.report import write_ride_report



def _all(ds: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*ds.batches(max(1, len(ds))))
    return torch.cat(xs), torch.cat(ys)


def _craft(spec: AttackSpec, clf: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    attack = spec.build(clf)
    if attack is None:
        return x
    return torch.cat([attack(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _subsample(values: torch.Tensor) -> tuple[list[int], list[float]]:
    """(L,) per-step values -> at most TRAJECTORY_POINTS (step, value) pairs, last step kept."""
    stride = max(1, -(-values.shape[0] // TRAJECTORY_POINTS))
    steps = list(range(0, values.shape[0], stride))
    if steps[-1] != values.shape[0] - 1:
        steps.append(values.shape[0] - 1)
    return steps, [float(values[s]) for s in steps]


def _sweep(cfg: RideConfig, store: ResultsStore, clf: nn.Module, card: dict[str, Any], val: ImageDataset,
           subset: str, device: torch.device, runs: list[tuple[int, str]] | None = None,
           budget: tuple[int, float] | None = None) -> list[dict[str, Any]]:
    """The stopping sweep (one record per (attack, K) with the accuracy after every
    checkpoint), or with ``runs`` = [(K, mode), ...] Fig. 5a's comparison of the modes;
    ``budget`` = (T, learning rate) instead of the sweep's."""
    x: torch.Tensor | None = None
    y: torch.Tensor | None = None
    records: list[dict[str, Any]] = []
    runs = runs if runs is not None else [(k, cfg.ride_mode) for k in cfg.sweep_iterations]
    for spec in cfg.attacks():
        desc = spec.describe(clf)
        adv = None
        for k, mode in runs:
            ride = (cfg.ride(k, cfg.sweep_checkpoints, mode=mode) if budget is None
                    else cfg.ride(k, budget[0], mode=mode, lr=budget[1]))
            key = record_key(kind="ride-sweep", dataset=val.name, subset=subset, n_images=len(val),
                             model_weights=weights_id(card), attack=desc, defense=ride.params())
            if store.has(key):
                records.append(store.require(key))
                continue
            if x is None:
                x, y = _all(val)
                x, y = x.to(device), y.to(device)
            if adv is None:
                assert x is not None and y is not None
                adv = _craft(spec, clf, x, y, cfg.batch_size)
            _log(f"sweep: {mode} K={k} x T={ride.checkpoints} on {len(val)} {desc['name']} images")
            t0 = time.perf_counter()
            result = ride.fit(adv, clean=x, trajectory=True)
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                correct = torch.stack([clf(adv).argmax(1) == y]
                                      + [clf(est).argmax(1) == y for est in result.checkpoints]).cpu()
            traj = result.trajectory
            assert traj is not None and traj.to_clean is not None
            t_steps, to_clean = _subsample(traj.to_clean.mean(1))
            _, to_adv = _subsample(traj.to_adv.mean(1))
            record = {"kind": "ride-sweep", "key": key, "protocol": PROTOCOL, "dataset": val.name, "subset": subset,
                      "n_images": len(val), "model": cfg.classifier_name, "model_weights": weights_id(card),
                      "attack": desc, "defense": {"label": "ride", **ride.params()}, "iterations": k, "mode": mode,
                      "steps": [k * t for t in range(ride.checkpoints + 1)],
                      "accuracy": correct.float().mean(1).tolist(),
                      "stderr": [accuracy_of(c).stderr for c in correct],
                      "trajectory_steps": t_steps, "to_clean": to_clean, "to_adv": to_adv,
                      "clean_to_adv": float((adv - x).flatten(1).norm(dim=1).mean()),
                      **l1_255(result.checkpoints[-1], adv, x),
                      "seconds": seconds, "seconds_per_image_step": seconds / (len(val) * ride.total_steps)}
            store.add(record, {"correct_checkpoints": correct.numpy(), "to_clean": traj.to_clean.numpy(),
                               "to_adv": traj.to_adv.numpy()})
            records.append(store.require(key))
    return records


def _traces(cfg: RideConfig, store: ResultsStore, clf: nn.Module, card: dict[str, Any], val: ImageDataset,
            subset: str, device: torch.device) -> list[str]:
    """Figs. 2d-e: one PGD image's fit in each of ``trace_modes``, with the classifier's scores
    (logits) at ``trace_checkpoints`` points and the per-step L2 distances to the clean and the
    adversarial image (the sweep's total steps, spread over more checkpoints; DIP and DAE do not
    interpolate, so their checkpoints only decide where the scores are read)."""
    spec = cfg.attacks()[1]
    desc = spec.describe(clf)
    total = max(cfg.sweep_iterations) * cfg.sweep_checkpoints
    per = max(1, total // cfg.trace_checkpoints)
    x, y = val.tensors(range(1))
    x, y = x.to(device), y.to(device)
    keys, adv = [], None
    for mode in cfg.trace_modes:
        ride = cfg.ride(per, cfg.trace_checkpoints, mode=mode)
        key = record_key(kind="ride-trace", dataset=val.name, subset=subset, image=0, model_weights=weights_id(card),
                         attack=desc, defense=ride.params())
        keys.append(key)
        if store.has(key):
            continue
        if adv is None:
            adv = _craft(spec, clf, x, y, cfg.batch_size)
        _log(f"Fig. 2d-e: {mode}, {per} x {cfg.trace_checkpoints} steps on one {desc['name']} image")
        result = ride.fit(adv, clean=x, trajectory=True)
        with torch.no_grad():
            scores = torch.cat([clf(adv)] + [clf(est) for est in result.checkpoints]).cpu()
            adv_class = int(clf(adv).argmax(1)[0])
        traj = result.trajectory
        assert traj is not None and traj.to_clean is not None
        t_steps, to_clean = _subsample(traj.to_clean[:, 0])
        _, to_adv = _subsample(traj.to_adv[:, 0])
        store.add({"kind": "ride-trace", "key": key, "protocol": PROTOCOL, "mode": mode, "attack": desc,
                   "defense": {"label": mode, **ride.params()}, "label": int(y[0]), "adversarial_class": adv_class,
                   "steps": [per * t for t in range(cfg.trace_checkpoints + 1)], "scores": scores.tolist(),
                   "trajectory_steps": t_steps, "to_clean": to_clean, "to_adv": to_adv,
                   "clean_to_adv": float((adv - x).norm())}, {"scores": scores.numpy()})
    return keys


def _bpda_distances(cfg: RideConfig, store: ResultsStore, clf: nn.Module, card: dict[str, Any],
                    images: ImageDataset, subset: str, device: torch.device, defenses: dict[str, nn.Module]
                    ) -> list[str]:
    """Fig. 7: PGD through BPDA(defense) on each defense, then the paper's L1 distances (0-255
    scale) adversarial-to-clean, defended-to-adversarial and defended-to-clean, and the
    classifier's accuracy on the adversarial and on the defended images."""
    x, y = _all(images)
    x, y = x.to(device), y.to(device)
    keys = []
    for label, defense in defenses.items():
        attack = PGD(nn.Sequential(BPDA(defense), clf), eps=cfg.eps, alpha=cfg.alpha, steps=cfg.attack_steps,
                     seed=cfg.seed)
        params_of = getattr(defense, "params", None)
        defense_params = params_of() if callable(params_of) else {"name": label}
        key = record_key(kind="ride-bpda-distances", dataset=images.name, subset=subset, n_images=len(images),
                         model_weights=weights_id(card), attack=attack.params(), defense=defense_params)
        keys.append(key)
        if store.has(key):
            continue
        _log(f"Fig. 7: BPDA PGD-{cfg.attack_steps} through {label} on {len(images)} images")
        t0 = time.perf_counter()
        adv = torch.cat([attack(x[i:i + cfg.batch_size], y[i:i + cfg.batch_size])
                         for i in range(0, len(x), cfg.batch_size)])
        with torch.no_grad():
            defended = torch.cat([defense(adv[i:i + cfg.batch_size]) for i in range(0, len(adv), cfg.batch_size)])
            adv_ok, def_ok = (clf(adv).argmax(1) == y).cpu(), (clf(defended).argmax(1) == y).cpu()

        def per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (255 * (a - b).abs().flatten(1).mean(1)).cpu()

        distances = {"adv_to_clean": per_image(adv, x), "defended_to_adv": per_image(defended, adv),
                     "defended_to_clean": per_image(defended, x)}
        acc_adv, acc_def = accuracy_of(adv_ok), accuracy_of(def_ok)
        store.add({"kind": "ride-bpda-distances", "key": key, "protocol": PROTOCOL, "label": label,
                   "attack": attack.params(), "defense": {"label": label, **defense_params}, "n_images": len(images),
                   "subset": subset, **{f"mean_{k}": float(v.mean()) for k, v in distances.items()},
                   **{f"sd_{k}": float(v.std()) for k, v in distances.items()},
                   "accuracy_adversarial": acc_adv.value, "stderr_adversarial": acc_adv.stderr,
                   "accuracy_defended": acc_def.value, "stderr_defended": acc_def.stderr,
                   "seconds": time.perf_counter() - t0},
                  {**{k: v.numpy() for k, v in distances.items()}, "correct_adversarial": adv_ok.numpy(),
                   "correct_defended": def_ok.numpy()})
    return keys


def l1_255(estimate: torch.Tensor, adv: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """The paper's distances: mean absolute pixel difference on the 0-255 scale, of the
    final estimate to the clean and to the adversarial image, and of the attack itself."""
    def mean_l1(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(255 * (a - b).abs().flatten(1).mean(1).mean())

    return {"l1_255_estimate_to_clean": mean_l1(estimate, clean), "l1_255_estimate_to_adv": mean_l1(estimate, adv),
            "l1_255_adv_to_clean": mean_l1(adv, clean)}


def _param_sweep(cfg: RideConfig, store: ResultsStore, clf: nn.Module, card: dict[str, Any], val: ImageDataset,
                 subset: str, device: torch.device, k: int, t: int) -> list[dict[str, Any]]:
    """Figs. 5b-d: RIDE at the chosen stop with one of n, alpha or sigma changed, on the
    validation images; one record per (argument, value, attack) with the final accuracy."""
    x, y = _all(val)
    x, y = x.to(device), y.to(device)
    adversarial: dict[str, torch.Tensor] = {}
    records: list[dict[str, Any]] = []
    for name, values in cfg.param_sweeps():
        for value in values:
            ride = cfg.ride(k, t, **{name: int(value) if name == "batch" else value})
            for spec in cfg.attacks():
                desc = spec.describe(clf)
                key = record_key(kind="ride-param-sweep", dataset=val.name, subset=subset, n_images=len(val),
                                 model_weights=weights_id(card), attack=desc, defense=ride.params())
                # the defaults recur in every argument's sweep: one record, labelled per sweep
                labelled = {"param": name, "value": value}
                if store.has(key):
                    records.append({**store.require(key), **labelled})
                    continue
                if desc["name"] not in adversarial:
                    adversarial[desc["name"]] = _craft(spec, clf, x, y, cfg.batch_size)
                adv = adversarial[desc["name"]]
                _log(f"Fig. 5b-d: RIDE {name}={value:g} on {len(val)} {desc['name']} images")
                t0 = time.perf_counter()
                estimate = ride.fit(adv).checkpoints[-1]
                seconds = time.perf_counter() - t0
                with torch.no_grad():
                    correct = (clf(estimate).argmax(1) == y).cpu()
                acc = accuracy_of(correct)
                store.add({"kind": "ride-param-sweep", "key": key, "protocol": PROTOCOL, "dataset": val.name,
                           "subset": subset, "n_images": len(val), "model": cfg.classifier_name,
                           "model_weights": weights_id(card), "attack": desc,
                           "defense": {"label": "ride", **ride.params()}, "param": name, "value": value,
                           "steps": k * t, "accuracy": acc.value, "stderr": acc.stderr, "n_correct": acc.correct,
                           **l1_255(estimate, adv, x), "seconds": seconds},
                          {"correct": correct.numpy()})
                records.append({**store.require(key), **labelled})
    return records


def _baseline_sweep(cfg: RideConfig, store: ResultsStore, clf: nn.Module, card: dict[str, Any],
                    evaluation: ImageDataset, subset: str, device: torch.device) -> list[dict[str, Any]]:
    """Tables 4-6: every median kernel and TV weight (both solvers) under the gray-box attacks.
    Returns the defended records, each labelled with its sweep name (records of equal
    parameters are shared with the main table, under its label)."""
    defenses = cfg.baselines()
    entry = ModelEntry(cfg.classifier_name, clf, card=card, defenses=defenses)
    records = evaluate_matrix(evaluation, [entry], [AttackSpec(CLEAN), *cfg.attacks()], store,
                              batch_size=cfg.batch_size, device=device, subset=subset, progress=cfg.progress)
    per_attack = 1 + len(defenses)  # evaluate_matrix returns, per attack, the undefended cell then each defense
    labels = [None, *defenses]
    return [{**r, "sweep_label": labels[i % per_attack]} for i, r in enumerate(records) if i % per_attack]


def choose_stop(sweep: list[dict[str, Any]]) -> tuple[int, int, float]:
    """The (K, T) with the best validation accuracy, averaged over the sweep's attacks.

    Ties go to fewer total steps, then smaller K. Step 0 (no defense) is not a candidate.

    Returns:
        (iterations K, checkpoints T, mean validation accuracy).

    Example:
        >>> choose_stop([{"iterations": 10, "accuracy": [0.1, 0.5, 0.6], "attack": {"name": "pgd"}}])
        (10, 2, 0.6)
    """
    if not sweep:
        raise InputError("the sweep has no records to choose a stop from")
    per: dict[tuple[int, int], list[float]] = {}
    for rec in sweep:
        k = int(rec["iterations"])
        for t, acc in enumerate(rec["accuracy"][1:], start=1):
            per.setdefault((k, t), []).append(float(acc))
    scored = [(sum(v) / len(v), -(k * t), -k, k, t) for (k, t), v in per.items()]
    best = max(scored)
    return best[3], best[4], best[0]


def run_ride_experiment(cfg: RideConfig) -> Path:
    """Train or reuse the classifier, fill ``cfg.out``'s results store, write the report.

    Returns:
        the path of ``report.md``.

    Example:
        >>> run_ride_experiment(RideConfig(out=Path("/tmp/runs/ride"), threads=1))
    """
    start = time.perf_counter()
    device, train, test = cfg.start()
    clf, card_obj = experiment_classifier(cfg.classifier_name, cfg.models_dir, train, test,
                                          recipe=cfg.classifier_recipe, seed=cfg.seed, eval_eps=cfg.eps,
                                          device=device, progress=cfg.progress)
    clf = clf.to(device).eval()
    card = dict(card_obj.__dict__)
    store = ResultsStore(cfg.out, resume=True)
    n_before = len(store.records)
    evaluation, val = split_validation(test, cfg.n_images, cfg.val_images, cfg.seed)
    whitebox = balanced_subset(evaluation, cfg.whitebox_images, seed=cfg.seed)
    val_desc = f"ride validation: balanced {len(val)} disjoint from the evaluation images (seed {cfg.seed})"
    eval_desc = f"ride evaluation: balanced {len(evaluation)} (seed {cfg.seed})"
    wb_desc = f"ride white-box: balanced {len(whitebox)} of the evaluation images (seed {cfg.seed})"

    sweep = _sweep(cfg, store, clf, card, val, val_desc, device)
    k_star, t_star, val_acc = choose_stop(sweep)
    _log(f"chosen stop: K={k_star} x T={t_star} ({k_star * t_star} steps), validation accuracy {val_acc:.3f}")
    ride = cfg.ride(k_star, t_star)
    defenses: dict[str, nn.Module] = {"median-3x3": MedianFilter(cfg.median_kernel),
                                      "tv": TotalVariation(weight=cfg.tv_weight, solver="chambolle"), "ride": ride}
    entry = ModelEntry(cfg.classifier_name, clf, card=card, defenses=defenses)
    gray = evaluate_matrix(evaluation, [entry], [AttackSpec(CLEAN), *cfg.attacks()], store,
                           batch_size=cfg.batch_size, device=device, subset=eval_desc, progress=cfg.progress)
    pgd = cfg.attacks()[1]
    white = evaluate_matrix(whitebox, [entry], [AttackSpec(CLEAN), pgd, AttackSpec(pgd.name, pgd.params, through="bpda")],
                            store, batch_size=cfg.batch_size, device=device, subset=wb_desc, progress=cfg.progress)

    paper: list[dict[str, Any]] = []
    paper_desc = None
    if cfg.paper_budget_images:
        paper_images = balanced_subset(evaluation, cfg.paper_budget_images, seed=cfg.seed)
        paper_desc = (f"ride paper budget: balanced {len(paper_images)} of the evaluation images (seed {cfg.seed})")
        paper_entry = ModelEntry(cfg.classifier_name, clf, card=card,
                                 defenses={"ride": ride, "ride-paper": cfg.paper_ride()})
        paper = evaluate_matrix(paper_images, [paper_entry], [AttackSpec(CLEAN), *cfg.attacks()], store,
                                batch_size=cfg.batch_size, device=device, subset=paper_desc, progress=cfg.progress)

    baselines = _baseline_sweep(cfg, store, clf, card, evaluation, eval_desc, device)
    params = _param_sweep(cfg, store, clf, card, val, val_desc, device, k_star, t_star)
    modes = _sweep(cfg, store, clf, card, val, val_desc, device,
                   runs=[(max(cfg.sweep_iterations), m) for m in cfg.compare_modes])
    paper_modes: list[dict[str, Any]] = []
    paper_modes_desc = None
    if cfg.paper_budget_mode_images:
        mode_images = balanced_subset(val, cfg.paper_budget_mode_images, seed=cfg.seed)
        paper_modes_desc = f"ride paper budget, modes: balanced {len(mode_images)} of the validation images (seed {cfg.seed})"
        iterations, checkpoints, lr = cfg.paper_budget
        paper_modes = _sweep(cfg, store, clf, card, mode_images, paper_modes_desc, device,
                             runs=[(int(iterations), m) for m in cfg.compare_modes], budget=(int(checkpoints), float(lr)))
    traces = _traces(cfg, store, clf, card, val, val_desc, device)
    analysis = balanced_subset(whitebox, min(cfg.bpda_analysis_images, len(whitebox)), seed=cfg.seed)
    fig7 = _bpda_distances(cfg, store, clf, card, analysis,
                           f"ride BPDA analysis: balanced {len(analysis)} of the white-box images (seed {cfg.seed})",
                           device, defenses)
    summary_key = record_key(kind="ride-summary", sweep=[r["key"] for r in sweep], gray=[r["key"] for r in gray],
                             white=[r["key"] for r in white], stop=[k_star, t_star],
                             baselines=[r["key"] for r in baselines],
                             params=[[r["param"], r["value"], r["key"]] for r in params],
                             modes=[r["key"] for r in modes], traces=traces, fig7=fig7,
                             paper=[r["key"] for r in paper], paper_modes=[r["key"] for r in paper_modes])
    if not store.has(summary_key):
        store.add({"kind": "ride-summary", "key": summary_key, "protocol": PROTOCOL, "model": cfg.classifier_name,
                   "model_weights": weights_id(card), "classifier_recipe": card.get("recipe"),
                   "classifier_metrics": card.get("metrics"), "config": cfg.to_dict(),
                   "stop": {"iterations": k_star, "checkpoints": t_star, "steps": k_star * t_star,
                            "validation_accuracy": val_acc},
                   "sweep": [r["key"] for r in sweep], "gray": [r["key"] for r in gray],
                   "white": [r["key"] for r in white],
                   "baselines": [[r["sweep_label"], r["key"]] for r in baselines],
                   "params": [[r["param"], r["value"], r["key"]] for r in params],
                   "modes": [r["key"] for r in modes], "traces": traces, "fig7": fig7,
                   "paper": [r["key"] for r in paper], "paper_modes": [r["key"] for r in paper_modes],
                   "subsets": {"validation": val_desc, "gray": eval_desc, "white": wb_desc, "paper": paper_desc,
                               "paper_modes": paper_modes_desc},
                   "run_seconds": time.perf_counter() - start})
    added = len(store.records) - n_before
    report = write_ride_report(cfg.out, wall_seconds=time.perf_counter() - start, records_added=added)
    _log(f"RIDE report: {report} ({time.perf_counter() - start:.0f} s, {added} new records)")
    return report
