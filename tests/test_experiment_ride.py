"""The RIDE experiment end to end on fake Fashion-MNIST (tiny sizes), plus its helpers' error paths."""
from __future__ import annotations

import json

import pytest
import torch

from advrepair.errors import InputError
from advrepair.apps.experiments.ride import RideConfig, choose_stop, run_ride_experiment, split_validation, write_ride_report
from advrepair.training.recipe import ClassifierRecipe
from fake_data import write_fashion_mnist


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


RECIPE = ClassifierRecipe(epochs=1)


def _write_tiny_classifier(models_dir, fake_fmnist) -> None:
    """A small SmallCNN fitted for a few Adam steps, saved with a card that ensure_classifier reuses
    (training and measuring the recipe's model would take most of the test's time budget)."""
    from advrepair.data.registry import load_dataset
    from advrepair.models.checkpoint import ModelCard, save_checkpoint
    from advrepair.models.small_cnn import SmallCNN

    train = load_dataset("fashion-mnist", split="train", root=str(fake_fmnist))
    x, y = next(train.batches(len(train)))
    torch.manual_seed(0)
    model = SmallCNN(width=8, feature_dim=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(40):
        sl = slice(64 * (i % 9), 64 * (i % 9) + 64)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[sl]), y[sl]).backward()
        opt.step()
    card = ModelCard(kind="classifier", arch="small-cnn", config=model.config, dataset=train.name,
                     recipe=RECIPE.to_dict(), seed=0)
    save_checkpoint(model.eval(), models_dir / "tiny-standard" / "classifier", card)


def _cfg(tmp_path, fake_fmnist, **kw):
    base = dict(out=tmp_path / "out", models_dir=tmp_path / "models", data_root=str(fake_fmnist),
                classifier_recipe=RECIPE, progress=False, threads=1, batch_size=8,
                n_images=10, whitebox_images=4, val_images=10, attack_steps=2, sweep_iterations=(2, 3),
                sweep_checkpoints=2, ride_lr=1e-2, classifier_name="tiny-standard", median_kernels=(3, 5),
                tv_weights=(0.1,), sweep_batch=(1, 2), sweep_alpha=(0.9,), sweep_sigma=(0.5, 1.0))
    base.update(kw)
    return RideConfig(**base)


def _run(cfg: RideConfig, fake_fmnist) -> tuple[str, dict, dict]:  # noqa: ANN001
    """Run the experiment on the tiny classifier: the report's text, the records by key and the summary."""
    _write_tiny_classifier(cfg.models_dir, fake_fmnist)
    text = run_ride_experiment(cfg).read_text()
    records = json.loads((cfg.out / "results.json").read_text())
    return text, {r["key"]: r for r in records}, next(r for r in records if r.get("kind") == "ride-summary")


def test_end_to_end_report_figures_and_resume(tmp_path, fake_fmnist):
    cfg = _cfg(tmp_path, fake_fmnist)
    _write_tiny_classifier(cfg.models_dir, fake_fmnist)
    report = run_ride_experiment(cfg)
    out = cfg.out
    assert report == out / "report.md"
    text = report.read_text()
    for heading in ("Iterations (cf. Fig. 5a)", "Gray-box (cf. Table 1)", "White-box BPDA (cf. Table 2)",
                    "Estimate trajectories", "Chosen stop"):
        assert heading in text
    assert "| 6 steps |" in text and "| FGSM | 2 | " in text  # union of the sweeps' step counts
    for png in ("ride_iterations.png", "ride_trajectory.png"):
        assert (out / png).stat().st_size > 1000
    records = json.loads((out / "results.json").read_text())
    summary = [r for r in records if r.get("kind") == "ride-summary"]
    sweep = [r for r in records if r.get("kind") == "ride-sweep" and r["key"] in summary[0]["sweep"]]
    assert len(sweep) == 2 * 2  # (FGSM, PGD) x K in (2, 3)
    for r in sweep:
        assert r["steps"] == [0, r["iterations"], 2 * r["iterations"]]
        assert len(r["accuracy"]) == 3 and all(0 <= a <= 1 for a in r["accuracy"])
        assert r["n_images"] == 10
        # trajectory starts at the initial estimate and keeps the last step
        assert r["trajectory_steps"][0] == 0 and r["trajectory_steps"][-1] == 2 * r["iterations"]
        assert all(d > 0 for d in r["to_clean"]) and r["clean_to_adv"] > 0
    summary = [r for r in records if r.get("kind") == "ride-summary"]
    assert len(summary) == 1
    stop = summary[0]["stop"]
    assert (stop["iterations"], stop["checkpoints"], stop["validation_accuracy"]) == choose_stop(sweep)
    gray = [r for r in records if r["key"] in summary[0]["gray"]]
    assert len(gray) == 3 * 4  # (clean, FGSM, PGD) x (none, median, TV, RIDE)
    assert {r["n_images"] for r in gray} == {10}
    ride_gray = [r for r in gray if r["defense"] and r["defense"]["label"] == "ride"]
    assert {(r["defense"]["iterations"], r["defense"]["checkpoints"]) for r in ride_gray} == {
        (stop["iterations"], stop["checkpoints"])}
    white = [r for r in records if r["key"] in summary[0]["white"]]
    bpda = [r for r in white if r["attack"].get("through") == "bpda"]
    assert len(bpda) == 3 and {r["n_images"] for r in bpda} == {4}
    assert {r["defense"]["label"] for r in bpda} == {"median-3x3", "tv", "ride"}
    # Tables 4-6: each swept baseline under clean, FGSM and PGD, labelled by its sweep name
    baselines = summary[0]["baselines"]
    assert [label for label, _ in baselines] == ["median-3x3", "median-5x5", "tv-chambolle-0.1", "tv-bregman-0.1"] * 3
    by_key = {r["key"]: r for r in records}
    assert by_key[baselines[1][1]]["defense"]["kernel_size"] == 5
    assert by_key[baselines[3][1]]["defense"]["solver"] == "bregman"
    # Figs. 5b-d: one record per (argument, value, attack), at the chosen stop
    params = [{**by_key[k], "param": p, "value": v} for p, v, k in summary[0]["params"]]
    assert [(r["param"], r["value"]) for r in params[::2]] == [("batch", 1), ("batch", 2), ("alpha", 0.9),
                                                              ("sigma", 0.5), ("sigma", 1.0)]
    assert {r["steps"] for r in params} == {stop["iterations"] * stop["checkpoints"]}
    assert params[2]["defense"]["batch"] == 2 and params[8]["defense"]["sigma"] == 1.0
    assert all(0 <= r["accuracy"] <= 1 and r["l1_255_estimate_to_clean"] > 0 for r in params)
    for heading in ("Baselines swept (cf. Tables 4-6)", "RIDE's n, alpha and sigma (cf. Figs. 5b-d)",
                    "L1/px estimate-clean"):
        assert heading in text
    assert (out / "ride_parameters.png").stat().st_size > 1000
    assert all(r["l1_255_adv_to_clean"] > 0 for r in sweep)
    # the validation images are disjoint from the evaluation ones (different subset descriptions, counts)
    assert summary[0]["subsets"]["validation"] != summary[0]["subsets"]["gray"]

    before = (out / "results.json").read_text()
    stamp = (tmp_path / "models" / "tiny-standard" / "classifier.safetensors").stat().st_mtime_ns
    run_ride_experiment(cfg)  # a rerun reuses the classifier and every record
    assert (out / "results.json").read_text() == before
    assert (tmp_path / "models" / "tiny-standard" / "classifier.safetensors").stat().st_mtime_ns == stamp
    assert "0 new records" in (out / "report.md").read_text()


def test_modes_scores_and_bpda_analysis(tmp_path, fake_fmnist):
    cfg = _cfg(tmp_path, fake_fmnist, sweep_iterations=(2,), median_kernels=(3,), sweep_batch=(1,), sweep_sigma=(0.5,),
               trace_checkpoints=4, bpda_analysis_images=3)
    text, by_key, summary = _run(cfg, fake_fmnist)
    # Fig. 5a: every mode under both attacks; RIDE's curve is the stopping sweep's own record
    modes = [by_key[k] for k in summary["modes"]]
    assert [(r["attack"]["name"], r["mode"]) for r in modes] == [
        (a, m) for a in ("fgsm", "pgd") for m in ("dip", "idip", "dae", "ride")]
    assert {r["key"] for r in modes if r["mode"] == "ride"} <= set(summary["sweep"])
    assert {r["defense"]["mode"] for r in modes} == {"dip", "idip", "dae", "ride"}
    # Figs. 2d-e: scores at every checkpoint of one image's fit, for DIP and DAE
    traces = [by_key[k] for k in summary["traces"]]
    assert [r["mode"] for r in traces] == ["dip", "dae"]
    for r in traces:
        assert len(r["scores"]) == 4 + 1 and len(r["scores"][0]) == 10 and r["steps"][-1] == 4 * (2 * 2 // 4)
        assert r["to_clean"][0] > 0 and 0 <= r["label"] < 10 and 0 <= r["adversarial_class"] < 10
    # Fig. 7: BPDA through each defense, distances and both accuracies
    fig7 = [by_key[k] for k in summary["fig7"]]
    assert [r["label"] for r in fig7] == ["median-3x3", "tv", "ride"]
    for r in fig7:
        assert r["n_images"] == 3 and r["attack"]["steps"] == 2 and r["attack"]["eps"] == pytest.approx(0.1)
        assert 0 < r["mean_adv_to_clean"] <= 255 * 0.1 + 1e-3
        assert r["mean_defended_to_adv"] > 0 and 0 <= r["accuracy_defended"] <= 1
    for heading in ("DIP, I-DIP, DAE and RIDE (cf. Fig. 5a)", "class scores and distances (cf. Figs. 2d-e)",
                    "What BPDA produces (cf. Fig. 7)"):
        assert heading in text
    for png in ("ride_modes.png", "ride_scores.png", "ride_bpda_analysis.png"):
        assert (cfg.out / png).stat().st_size > 1000


def test_paper_budget_rows_pair_the_chosen_stop_with_the_papers_steps(tmp_path, fake_fmnist):
    cfg = _cfg(tmp_path, fake_fmnist, sweep_iterations=(2,), median_kernels=(3,), sweep_batch=(1,), sweep_sigma=(0.5,),
               compare_modes=("dip", "ride"), trace_modes=("dae",), bpda_analysis_images=1, paper_budget_images=6,
               paper_budget_mode_images=4, paper_budget=(3, 2, 1e-3))
    text, by_key, summary = _run(cfg, fake_fmnist)
    paper = [by_key[k] for k in summary["paper"]]
    assert len(paper) == 3 * 3  # (clean, FGSM, PGD) x (none, chosen stop, paper budget)
    assert {r["n_images"] for r in paper} == {6}
    ride = {r["defense"]["label"]: r["defense"] for r in paper if r["defense"]}
    stop = summary["stop"]
    assert (ride["ride"]["iterations"], ride["ride"]["checkpoints"], ride["ride"]["lr"]) == (
        stop["iterations"], stop["checkpoints"], 1e-2)
    assert (ride["ride-paper"]["iterations"], ride["ride-paper"]["checkpoints"], ride["ride-paper"]["lr"]) == (3, 2, 1e-3)
    assert "## RIDE at the paper's budget (K = 3 x T = 2, lr 0.001)" in text
    assert "- ride-paper - ride: Clean " in text and "--paper-budget-images 6" in text
    # Fig. 5a's modes at that budget, on validation images
    modes = [by_key[k] for k in summary["paper_modes"]]
    assert [(r["attack"]["name"], r["mode"]) for r in modes] == [(a, m) for a in ("fgsm", "pgd") for m in ("dip", "ride")]
    assert {(r["n_images"], tuple(r["steps"]), r["defense"]["lr"]) for r in modes} == {(4, (0, 3, 6), 1e-3)}
    assert "## DIP, I-DIP, DAE and RIDE (cf. Fig. 5a), the paper's budget (K = 3 x T = 2, lr 0.001)" in text
    assert (cfg.out / "ride_modes_paper_budget.png").stat().st_size > 1000


def test_experiments_run_on_the_zoo_classifier_by_default(tmp_path, fake_fmnist):
    from advrepair import zoo
    from advrepair.apps.experiments.setup import experiment_classifier
    from advrepair.data.registry import load_dataset

    train = load_dataset("fashion-mnist", split="train", root=str(fake_fmnist))
    model, card = experiment_classifier(RideConfig().classifier_name, tmp_path / "models", train, train,
                                        recipe=RECIPE, seed=0, eval_eps=0.1, device=torch.device("cpu"),
                                        progress=False)
    assert card.weights_sha256 == zoo.card("fmnist-cnn-standard").weights_sha256
    assert not (tmp_path / "models").exists()  # nothing trained


def test_split_validation_is_disjoint_and_balanced(fake_fmnist):
    from advrepair.data.registry import load_dataset

    test = load_dataset("fashion-mnist", split="test", root=str(fake_fmnist))
    ev, val = split_validation(test, 20, 10, seed=0)
    assert len(ev) == 20 and len(val) == 10
    assert torch.bincount(val.labels, minlength=10).tolist() == [1] * 10
    assert torch.bincount(ev.labels, minlength=10).tolist() == [2] * 10
    flat_ev = {bytes(img.numpy().tobytes()) for img in ev.images}
    assert not any(bytes(img.numpy().tobytes()) in flat_ev for img in val.images)
    with pytest.raises(InputError):
        split_validation(test, 150, 100, seed=0)  # more than the 200 fake test images
    with pytest.raises(InputError, match="n_val"):
        split_validation(test, 20, 0, seed=0)


def test_choose_stop_prefers_best_mean_then_fewer_steps():
    sweep = [{"iterations": 10, "accuracy": [0.0, 0.5, 0.7, 0.7], "attack": {"name": "fgsm"}},
             {"iterations": 10, "accuracy": [0.0, 0.3, 0.5, 0.5], "attack": {"name": "pgd"}},
             {"iterations": 20, "accuracy": [0.0, 0.6, 0.2], "attack": {"name": "fgsm"}},
             {"iterations": 20, "accuracy": [0.0, 0.6, 0.2], "attack": {"name": "pgd"}}]
    # (10, 2) and (10, 3) and (20, 1) all average 0.6; (20, 1) = 20 steps ties (10, 2) = 20 steps -> smaller K
    assert choose_stop(sweep) == (10, 2, pytest.approx(0.6))
    sweep[2]["accuracy"][1] = 0.9
    assert choose_stop(sweep)[:2] == (20, 1)
    with pytest.raises(InputError, match="no records"):
        choose_stop([])


@pytest.mark.parametrize("bad, match", [
    (dict(whitebox_images=20, n_images=10), "cannot exceed"),
    (dict(paper_budget_images=200, n_images=100), "cannot exceed"),
    (dict(paper_budget=(2000, 5)), "paper_budget"),
    (dict(paper_budget_mode_images=60, val_images=50), "cannot exceed"),
    (dict(paper_budget=(2000, 0, 1e-4)), "T"),
    (dict(eps=0.0), "eps"),
    (dict(eps=2.0), "eps must be in"),
    (dict(sweep_iterations=()), "at least one"),
    (dict(sweep_iterations=(0,)), "sweep_iterations"),
    (dict(ride_mode="nope"), "ride_mode"),
    (dict(ride_alpha=1.5), "ride_alpha"),
    (dict(median_kernel=2), "kernel_size"),
    (dict(threads=0), "threads"),
])
def test_config_rejects_bad_values(tmp_path, bad, match):
    with pytest.raises(InputError, match=match):
        RideConfig(out=tmp_path, **bad)


def test_report_without_summary_fails_clearly(tmp_path):
    with pytest.raises(InputError, match="ride-summary"):
        write_ride_report(tmp_path)


def test_sweep_premise_fewer_checkpoints_is_a_prefix_of_a_longer_fit():
    """The sweep reads RIDE(K, t) off the t-th checkpoint of RIDE(K, T): check that they agree."""
    from advrepair.defenses.ride import RIDE

    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    long = RIDE(iterations=3, checkpoints=3, lr=1e-2, seed=0).fit(x)
    short = RIDE(iterations=3, checkpoints=2, lr=1e-2, seed=0).fit(x)
    torch.testing.assert_close(short.estimate, long.checkpoints[1], rtol=0, atol=0)
    assert not torch.equal(long.checkpoints[0], long.checkpoints[2])  # the fit does move the estimate
