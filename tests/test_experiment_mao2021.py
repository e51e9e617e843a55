"""`advrepair experiment mao2021` (issue 20): the random-noise control, the row evaluator, the
quick run end to end on zoo models (every table and figure from stored records, resume), the
paper's setting on a generated CIFAR-10 folder with stand-in models, and the CLI wiring."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from advrepair import zoo
from advrepair.apps import cli
from advrepair.apps.experiments.mao2021 import Mao2021Config, feature_statistics, run_mao2021_experiment
from advrepair.apps.pipeline import ensure_classifier, ensure_contrastive_task, negative_bank
from advrepair.attacks import PGD
from advrepair.data import load_dataset
from advrepair.defenses import RandomNoise, ReverseAttack, make_defense
from advrepair.errors import InputError
from advrepair.evaluation import ModelEntry, ResultsStore, evaluate_attack
from advrepair.training import ClassifierRecipe, SSLRecipe
from fake_data import write_fashion_mnist
from test_data import cifar_arrays, write_cifar_bin


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=120, n_test=40)


@pytest.fixture(scope="module")
def robust():
    classifier, _ = zoo.load("fmnist-cnn-pgd")
    task, _ = zoo.load("fmnist-cnn-pgd-contrastive")
    return classifier, task


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


# -- the random-noise control -------------------------------------------------------------

def test_random_noise_is_the_reverse_attacks_own_start(robust):
    classifier, task = robust
    x = _images(6)
    repair = ReverseAttack(classifier, task, eps_v=0.2, steps=2, seed=3)
    assert torch.equal(RandomNoise(0.2, seed=3)(x), repair.trajectory(x)[0])
    assert not torch.equal(RandomNoise(0.2, seed=4)(x), repair.trajectory(x)[0])


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_random_noise_stays_in_its_budget_and_the_box_and_ignores_batch_mates(norm):
    x = _images(8)
    noisy = RandomNoise(0.3, norm=norm, seed=0)(x)
    assert noisy.min() >= 0 and noisy.max() <= 1
    delta = (noisy - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert (size <= 0.3 + 1e-6).all() and (size > 0.01).all()
    assert torch.equal(RandomNoise(0.3, norm=norm, seed=0)(x[3:5]), noisy[3:5])
    assert torch.equal(RandomNoise(0.3, norm=norm, seed=0)(x), noisy)  # seeded: a fixed function of its input
    fresh = RandomNoise(0.3, norm=norm, seed=None)
    assert not torch.equal(fresh(x), fresh(x))


def test_random_noise_errors_and_registry():
    for bad in (dict(eps_v=0), dict(eps_v=-1), dict(eps_v=0.1, seed=-1), dict(eps_v=0.1, norm="L7")):
        with pytest.raises(InputError):
            RandomNoise(**bad)
    with pytest.raises(InputError):
        RandomNoise(0.1)(torch.zeros(2, 28, 28))
    made = make_defense("random-noise")
    assert isinstance(made, RandomNoise) and made.params()["eps_v"] == 0.2


# -- one prebuilt attack row into the store -------------------------------------------------

def test_evaluate_attack_stores_one_record_per_cell_and_skips_stored_ones(tmp_path, robust):
    classifier, _ = robust
    data = load_dataset("fashion-mnist", split="test", root=str(write_fashion_mnist(tmp_path / "d", 10, 12)))
    store = ResultsStore(tmp_path / "out")
    entry = ModelEntry("robust", classifier, card={"weights_sha256": "w"},
                       defenses={"noise": RandomNoise(0.2), "noise-2": RandomNoise(0.2, seed=1)})
    attack = PGD(classifier, eps=0.1, alpha=0.05, steps=2)
    first = evaluate_attack(data, entry, attack, store, row="r1", batch_size=5)
    assert list(first) == [None, "noise", "noise-2"] and len(store.records) == 3
    assert all(r["attack"]["row"] == "r1" and r["n_images"] == 12 for r in first.values())
    calls = []
    hook = classifier.register_forward_hook(lambda *a: calls.append(1))
    try:
        again = evaluate_attack(data, entry, attack, store, row="r1", batch_size=5)
    finally:
        hook.remove()
    assert not calls and {k: r["key"] for k, r in again.items()} == {k: r["key"] for k, r in first.items()}
    other = evaluate_attack(data, entry, attack, store, row="r2", batch_size=5, with_base=False)
    assert list(other) == ["noise", "noise-2"] and len(store.records) == 5  # a new row, its own records


# -- the experiment ------------------------------------------------------------------------

def _quick(tmp_path: Path, data_root: Path, **overrides) -> Mao2021Config:
    options = dict(out=tmp_path / "report", models_dir=tmp_path / "models", data_root=str(data_root),
                   n_images=10, sweep_images=6, pca_images=6, timing_images=2, long_aware_images=2,
                   audit_images=2, progress=False)
    return Mao2021Config.quick(**{**options, **overrides})


def _records(cfg: Mao2021Config) -> list[dict]:
    return json.loads((cfg.out / "results.json").read_text())


def test_quick_run_writes_every_table_and_figure_from_records_and_resumes(tmp_path, fake_fmnist, monkeypatch):
    from advrepair.auditing.presets import PRESETS, AuditPreset

    # the standard-preset stage is wired like the quick one; its budgets are the quick ones here
    monkeypatch.setitem(PRESETS, AuditPreset.STANDARD, PRESETS[AuditPreset.QUICK])
    cfg = _quick(tmp_path, fake_fmnist, publish=tmp_path / "docs" / "mao2021-x.md", standard_audit_images=3)
    report = run_mao2021_experiment(cfg)
    text = report.read_text()
    docs = tmp_path / "docs"
    assert "(mao2021-x/fig7_eps_v_tradeoff.png)" in (docs / "mao2021-x.md").read_text()
    assert (docs / "mao2021-x" / "fig7_eps_v_tradeoff.png").exists() and not (docs / "mao2021-x" / "results.json").exists()
    assert (docs / "mao2021-x" / "audit-quick-fmnist-cnn-pgd-reverse-attack" / "audit.md").exists()
    for heading in ("## The answer", "## Table 1 shape: fmnist-cnn-standard", "## Table 1 shape: fmnist-cnn-pgd",
                    "## Table 5 shape: fmnist-cnn-pgd", "Fig. 8 statistic, fmnist-cnn-pgd",
                    "## Fig. 4: the defense-aware attack", "## lawhon: the multi-task repair on fmnist-cnn-pgd",
                    "## The audit of the repair and of the noise control on fmnist-cnn-pgd",
                    "## The audit at the standard preset (cascade) on fmnist-cnn-pgd",
                    "(b) the audit (standard preset, cascade, 3 images)",
                    "## What explains the old result"):
        assert heading in text, heading
    assert not (cfg.out / "fig4_long_fmnist-cnn-standard.png").exists()
    for figure in ("fig3_ssl_loss", "fig4_fmnist-cnn-pgd", "fig4_long_fmnist-cnn-pgd", "fig5_accuracy_vs_steps",
                   "fig6_accuracy_vs_eps", "fig7_eps_v_tradeoff", "fig8_feature_trajectories"):
        assert (cfg.out / f"{figure}.png").stat().st_size > 10_000 and f"({figure}.png)" in text, figure
    records = _records(cfg)
    table1 = [r for r in records if r.get("subset") == "balanced 10 (seed 0)" and r["model"] == "fmnist-cnn-pgd"
              and "mao2021_row" not in r and (r.get("defense") or {}).get("name") in (None, "reverse-attack",
                                                                                      "random-noise")
              and r["attack"].get("norm", "Linf") == "Linf" and len((r.get("defense") or {}).get("tasks", [1])) == 1
              and (r.get("defense") or {}).get("eps_v", 0.2) == 0.2]
    # every Table 1 cell of the robust CNN is a record, and its accuracy is the one in the table
    section = text.split("## Table 1 shape: fmnist-cnn-pgd")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 8 and len(table1) == 8 * 3
    for r in table1:
        assert f"{100 * r['accuracy']:.1f} ± {100 * r['stderr']:.1f}" in section
        correct = ResultsStore(cfg.out).arrays(r)["correct"]
        assert correct.shape == (10,) and correct.mean() == pytest.approx(r["accuracy"])
    # the lawhon rows are three multi-task repairs with the zoo's rotation and inpainting heads
    multi = {r["defense"]["label"] for r in records if len((r.get("defense") or {}).get("tasks", [])) == 3}
    assert multi == {"C+R+I (1, 1, 1)", "C+R+I (1, 50, 10)", "C+R+I random masks (1, 1, 1)"}
    assert (cfg.out / "audit-quick-fmnist-cnn-pgd-reverse-attack" / "audit.json").exists()
    standard = json.loads((cfg.out / "audit-standard-cascade-fmnist-cnn-pgd-reverse-attack" / "audit.json").read_text())
    assert standard["cascade"] and standard["n_images"] == 3
    # Fig. 6: one point per attack budget, each its own record (not one row repeated)
    fig6 = {r["attack"]["eps"]: r["accuracy"] for r in records if r.get("subset") == "balanced 6 (seed 0)"
            and r["model"] == "fmnist-cnn-standard" and r["attack"]["name"] == "pgd" and r.get("defense") is None}
    assert set(fig6) == set(cfg.eps_sweep)
    section6 = [line for line in text.splitlines() if line.startswith("- Fig. 6 points, fmnist-cnn-standard")]
    assert len(section6) == 1 and all(f"{e:g}: {100 * a:.1f} /" in section6[0] for e, a in fig6.items())
    # a second run computes nothing (its only new record is its own wall time) and writes the same tables
    results = [r for r in records if r.get("stage") != "mao2021-invocation"]
    run_mao2021_experiment(cfg)
    after = _records(cfg)
    assert [r for r in after if r.get("stage") != "mao2021-invocation"] == results
    assert len([r for r in after if r.get("stage") == "mao2021-invocation"]) == 2
    again = report.read_text()
    assert "over the 2 recorded invocations" in again
    strip = re.compile(r"Status: .*\n")
    assert strip.sub("", again) == strip.sub("", text)


def test_feature_statistic_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(5, 3))
    attacked = clean + 1.0
    iterates = np.stack([attacked, clean + 0.5])
    preds = np.array([0, 1, 2, 3, 4])
    stats = feature_statistics({"features_clean": clean, "features_attacked": attacked, "features_iterates": iterates,
                                "pred_clean": preds, "pred_repaired": np.array([0, 1, 2, 0, 0])})
    assert stats["all"]["mean_d_ca"] == pytest.approx(np.sqrt(3))
    assert stats["all"]["mean_d_ci"] == pytest.approx(np.sqrt(3) / 2)
    assert stats["all"]["reduction"] == pytest.approx(0.5) and stats["same class"]["n"] == 3


def test_the_papers_setting_on_a_cifar10_folder_with_stand_in_models(tmp_path):
    train = [cifar_arrays(20, 10) for _ in range(5)]  # the five data_batch files of CIFAR-10
    write_cifar_bin(tmp_path / "cifar-10-batches-bin", "cifar10", train, cifar_arrays(30, 10),
                    [f"class{i}" for i in range(10)])
    root = str(tmp_path)
    train_set = load_dataset("cifar10", split="train", root=root)
    test_set = load_dataset("cifar10", split="test", root=root)
    model_dir = tmp_path / "stand-in"
    clf, card = ensure_classifier(model_dir, train_set, test_set, arch="small-cnn", recipe=ClassifierRecipe(epochs=1),
                                  seed=0, arch_config={"width": 4, "feature_dim": 16, "mean": [0.5] * 3, "std": [0.25] * 3},
                                  progress=False)
    ensure_contrastive_task(model_dir, clf, card, train_set, test_set, recipe=SSLRecipe(epochs=1), seed=0,
                            negatives=negative_bank(train_set, size=16), progress=False)
    cfg = _quick(tmp_path, tmp_path, dataset="cifar10", classifiers=(str(model_dir),),
                 eps=8 / 255, l2_eps=0.5, lawhon=False, audit_images=0)
    text = run_mao2021_experiment(cfg).read_text()
    assert "on cifar10" in text and "## Table 1 shape: stand-in (L-inf eps 0.0313725)" in text
    assert "## Table 5 shape: stand-in (L2 eps 0.5" in text and "What explains" not in text
    records = _records(cfg)
    assert {r["dataset"] for r in records if "dataset" in r} == {"cifar10"}
    assert any(r["attack"]["name"] == "autoattack" for r in records if "attack" in r)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="one contrastive head per classifier"):
        Mao2021Config(classifiers=("a", "b"), heads=("h",))
    with pytest.raises(InputError, match="audit_preset"):
        Mao2021Config(audit_preset="fast")
    with pytest.raises(InputError, match="eps_v_sweep"):
        Mao2021Config(eps_v_sweep=())
    with pytest.raises(InputError, match="lambda_s"):
        Mao2021Config(lambdas=(-1.0,))


def test_cli_builds_the_config_it_is_given(monkeypatch, tmp_path):
    seen = []
    import advrepair.apps.experiments.mao2021 as mao

    monkeypatch.setattr(mao, "run_mao2021_experiment", lambda cfg: seen.append(cfg) or tmp_path / "report.md")
    assert cli.main(["experiment", "mao2021", "--quick", "--out", str(tmp_path), "--classifiers", "a,b",
                     "--heads", "x,y", "--dataset", "cifar10", "--n-images", "7", "--audit-images", "0",
                     "--standard-audit-images", "5",
                     "--no-lawhon", "--device", "cpu", "--no-progress"]) == 0
    cfg = seen[0]
    assert cfg.classifiers == ("a", "b") and cfg.heads == ("x", "y") and cfg.dataset == "cifar10"
    assert cfg.n_images == 7 and cfg.audit_images == 0 and not cfg.lawhon and cfg.budget_scale < 1
    assert cfg.standard_audit_images == 5
    cli.main(["experiment", "mao2021", "--out", str(tmp_path), "--device", "cpu"])
    assert seen[1].n_images == 1000 and seen[1].budget_scale == 1.0 and seen[1].classifiers == (
        "fmnist-cnn-standard", "fmnist-cnn-pgd")


@pytest.mark.parametrize("flags", [
    [],
    ["--quick", "--classifiers", "a,b", "--heads", "x,y", "--n-images", "7", "--audit-images", "0", "--no-lawhon"],
    ["--publish", "docs/r.md", "--classifiers", "fmnist-cnn64-pgd", "--n-images", "500", "--audit-images", "100",
     "--standard-audit-images", "12", "--eps", "0.05", "--seed", "3", "--no-sweeps", "--no-explain"],
])
def test_the_reports_command_line_runs_the_same_config(monkeypatch, tmp_path, flags):
    """The report names the invocation that made it: that command builds the same configuration."""
    seen = []
    import advrepair.apps.experiments.mao2021 as mao

    monkeypatch.setattr(mao, "run_mao2021_experiment", lambda cfg: seen.append(cfg) or tmp_path / "report.md")
    assert cli.main(["experiment", "mao2021", "--out", str(tmp_path), *flags, "--no-progress"]) == 0
    printed = seen[0].command_line()
    assert printed.startswith("advrepair experiment mao2021 ")
    assert cli.main([*printed.split()[1:], "--no-progress"]) == 0
    assert seen[1].to_dict() == seen[0].to_dict()


def test_no_sweeps_keeps_the_tables_and_the_audits_that_have_images():
    from types import SimpleNamespace

    from advrepair.apps.experiments.mao2021 import run as mao_run

    robust = SimpleNamespace(name="fmnist-cnn-pgd", zoo_name="fmnist-cnn-pgd")
    cfg = Mao2021Config(sweeps=False, audit_images=100, standard_audit_images=12)
    wanted = {fn for _, fn, _ in mao_run.STAGES if mao_run._wanted(cfg, fn, robust)}
    assert wanted == {mao_run.stage_table1, mao_run.stage_table5, mao_run.stage_audit, mao_run.stage_audit_standard}
    cfg = Mao2021Config(sweeps=False, audit_images=0)
    assert {fn for _, fn, _ in mao_run.STAGES if mao_run._wanted(cfg, fn, robust)} == {
        mao_run.stage_table1, mao_run.stage_table5}


def test_a_figure_is_redrawn_only_when_its_inputs_or_its_file_change(tmp_path):
    from advrepair.apps.experiments.mao2021 import report as mao_report

    calls = []

    def draw(name: str) -> Path:
        calls.append(name)
        path = tmp_path / f"{name}.png"
        path.write_bytes(b"png")
        return path

    inputs = {"table1": {"m": {"clean": {"key": "a"}}}, "arrays": np.arange(5000)}
    first = mao_report._draw_once(tmp_path, "f", inputs, lambda: draw("f"))
    assert mao_report._draw_once(tmp_path, "f", dict(inputs), lambda: draw("f")) == first and calls == ["f"]
    changed = {**inputs, "arrays": np.arange(5000) * (np.arange(5000) != 2500)}  # same repr(), other bytes
    mao_report._draw_once(tmp_path, "f", changed, lambda: draw("f"))
    first.unlink()
    mao_report._draw_once(tmp_path, "f", changed, lambda: draw("f"))
    mao_report._draw_once(tmp_path, "g", changed, lambda: draw("g"))
    assert calls == ["f", "f", "f", "g"]


def test_stage_clock_ignores_stages_read_back_from_stored_records(capsys):
    from advrepair.apps.experiments.setup import StageClock

    clock = StageClock([("first", 100.0), ("second", 100.0)], seconds_per_unit=6.0, progress=True)
    clock.stage(0)
    clock.finished(0)  # instant: a resumed stage whose records were all stored
    clock.stage(1)
    out = capsys.readouterr().out
    assert "[1/2] first: about 20.0 min left" in out and "[2/2] second: about 10.0 min left" in out
