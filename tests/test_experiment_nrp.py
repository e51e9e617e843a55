"""Issue 6: the NRP experiment (naseer2020 Tables 1 and 5 shapes) end to end on tiny generated data."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from advrepair.errors import InputError
from advrepair.evaluation.adaptive import AdaptiveConfig
from advrepair.evaluation.store import ResultsStore
from advrepair.apps.experiments.nrp import (DEFENSE_TITLES, ENSEMBLE, PURIFIER_DIR, PURIFIER_STEM, SOURCE_CNN, SOURCE_VGG,
                                       TARGET, LogitEnsemble, NRPConfig, attack_params, ensure_purifier,
                                       run_nrp_experiment, worst_case_correct)
from advrepair.models.checkpoint import read_card
from advrepair.training import ClassifierRecipe
from advrepair.training.purifier import PurifierRecipe
from fake_data import write_fashion_mnist


def _tiny(root: Path, data: Path, **overrides) -> NRPConfig:
    base = dict(out=root / "out", models_dir=root / "models", data_root=str(data), n_images=20, attack_steps=2,
                target_recipe=ClassifierRecipe(epochs=1), source_recipe=ClassifierRecipe(epochs=1),
                vgg_config={"width": 8}, cnn_config={"width": 8},
                purifier_config={"width": 4, "growth": 4, "dense_blocks": 1, "dense_layers": 2},
                critic_config={"width": 4, "blocks": 2},
                purifier_recipe=PurifierRecipe(epochs=1, batch_size=16, lr=1e-3, train_subset=64),
                adaptive=AdaptiveConfig(eps=0.1, steps=2, eot_draws=2, unroll_steps=1, lambdas=(), square_queries=2),
                adaptive_images=6, batch_size=10, progress=False, zoo=False, paper_ablations=False)
    base.update(overrides)
    return NRPConfig(**base)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    data = write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=300, n_test=100)
    root = tmp_path_factory.mktemp("nrp")
    cfg = _tiny(root, data)
    report = run_nrp_experiment(cfg)
    return cfg, report, data, root


def _records(cfg: NRPConfig) -> list[dict]:
    return json.loads((cfg.out / "results.json").read_text())


def test_tables_have_every_row_and_column(run):
    cfg, report, _, _ = run
    text = report.read_text()
    t1 = (cfg.out / "table1.md").read_text()
    for source in ("SmallVGG", "SmallCNN (seed 1)", "Ensemble"):
        assert f"Crafted on {source}" in t1
    for title in DEFENSE_TITLES.values():
        # once per source block and once in the summary
        assert len(re.findall(rf"^\| {re.escape(title)} \|", t1, flags=re.M)) == len(cfg.sources()) + 1
    assert "| Defense | Clean | FGSM | MI-FGSM | DIM | DIM-TI | Worst case |" in t1
    assert "n/a" not in t1
    t5 = (cfg.out / "table5.md").read_text()
    for attack in ("FGSM", "R-FGSM", "I-FGSM", "PGD", "MI-FGSM", "DIM", "SSP"):
        assert len(re.findall(rf"\| {attack} \|", t5)) == 2  # one row per source
    assert "n/a" not in t5
    # white-box cells are starred: exactly one per row of Table 5 (except "No attack")
    body = [line for line in t5.splitlines()[3:]]
    assert all(line.count("*") == 1 for line in body)
    assert (cfg.out / "nrp_accuracy_bars.png").stat().st_size > 0
    assert (cfg.out / "nrp_purified_examples.png").stat().st_size > 0
    assert "Adaptive protocol" in text and "Deviations from naseer2020" in text


def test_records_cover_the_matrix_and_name_sources_by_weights(run):
    cfg, _, _, _ = run
    records = [r for r in _records(cfg) if "protocol" not in r and "kind" not in r]
    target = [r for r in records if r["model"] == TARGET]
    labels = {(r["defense"] or {}).get("label") for r in target}
    assert labels == {None} | set(DEFENSE_TITLES) - {"none"}
    transfer = [r for r in records if r["attack"]["name"] == "transfer"]
    assert {r["attack"]["source"].split("@")[0] for r in transfer} == {SOURCE_VGG, SOURCE_CNN, ENSEMBLE}
    assert all(re.fullmatch(r"[\w-]+@[0-9a-f]{12}", r["attack"]["source"]) for r in transfer)
    # Table 1: 1 clean + 3 sources x 4 attacks, each with no defense + 7 defenses on the target
    # + Table 5's R-FGSM, I-FGSM, PGD and SSP from both sources, no defense
    assert len(target) == (1 + 3 * 4) * 8 + 2 * 4
    ssp = [r for r in transfer if r["attack"]["attack"]["name"] == "ssp"]
    assert {r["attack"]["attack"]["layer"] for r in ssp} == {"body.8", "body.4"}
    assert {r["model"] for r in ssp} == {TARGET, SOURCE_VGG, SOURCE_CNN}


def test_purifier_is_trained_on_a_source_never_the_target(run):
    cfg, _, _, _ = run
    card = read_card(cfg.models_dir / PURIFIER_DIR / PURIFIER_STEM)
    vgg = read_card(cfg.models_dir / SOURCE_VGG / "classifier")
    target = read_card(cfg.models_dir / TARGET / "classifier")
    assert card.parent["feature_model_sha256"] == vgg.weights_sha256 != target.weights_sha256
    assert card.parent["layer"] == "body.8" and card.recipe["ssp_eps"] == pytest.approx(cfg.eps)
    metrics = {m["metric"]: m for m in card.metrics}
    assert metrics["mean_feature_ssp"]["value"] > 0 and len(metrics["training_history"]["value"]) == 1
    src = read_card(cfg.models_dir / SOURCE_CNN / "classifier")
    assert src.seed == 1 and target.seed == 0 and src.weights_sha256 != target.weights_sha256


def test_worst_case_is_the_per_image_and(run):
    cfg, _, _, _ = run
    store = ResultsStore(cfg.out)
    records = [r for r in store.records if "protocol" not in r and "kind" not in r and r["model"] == TARGET
               and r["attack"]["name"] == "transfer" and (r["defense"] or {}).get("label") == "nrp"
               and r["attack"]["attack"]["name"] != "pgd"]
    assert len(records) == 3 * 4
    arrays = [np.load(cfg.out / "arrays" / f"{r['key']}.npz")["correct"].astype(bool) for r in records]
    expected = np.logical_and.reduce(arrays)
    got = worst_case_correct(store, records)
    assert np.array_equal(got, expected)
    assert got.mean() <= min(r["accuracy"] for r in records)
    summary = (cfg.out / "table1.md").read_text().split("**Summary**")[1]
    nrp_row = next(line for line in summary.splitlines() if line.startswith("| NRP |"))
    assert nrp_row.split(" | ")[-2].startswith(f"{100 * expected.mean():.1f} ± ")
    assert worst_case_correct(store, [records[0], None]) is None
    bad = dict(records[0], n_images=records[0]["n_images"] + 1)
    with pytest.raises(InputError, match="different image counts"):
        worst_case_correct(store, [records[0], bad])


def test_adaptive_rows_for_plain_and_dynamic_nrp(run):
    cfg, _, _, _ = run
    summaries = {s["defense"]["label"]: s for s in _records(cfg) if s.get("kind") == "adaptive-summary"}
    assert set(summaries) == {"nrp", "nrp-dynamic"}
    assert "bpda-eot" not in summaries["nrp"]["rows"] and "bpda-eot" in summaries["nrp-dynamic"]["rows"]
    for s in summaries.values():
        assert {"clean", "static", "bpda", "full-gradient", "square"} <= set(s["rows"])
        assert s["n_images"] == 6
        rows = [r for r in _records(cfg) if r.get("protocol") == "adaptive" and r["defense"]
                and r["defense"]["label"] == s["defense"]["label"] and r["adaptive_row"] != "clean"]
        assert s["worst_case"]["accuracy"] <= min(r["accuracy"] for r in rows)


def test_rerun_adds_no_records_and_trains_nothing(run):
    cfg, _, _, _ = run
    before = _records(cfg)
    stamps = {p: p.stat().st_mtime_ns for p in cfg.models_dir.rglob("*.safetensors")}
    run_nrp_experiment(cfg)
    after = _records(cfg)
    assert [r["key"] for r in after] == [r["key"] for r in before]
    assert {p: p.stat().st_mtime_ns for p in cfg.models_dir.rglob("*.safetensors")} == stamps


def test_another_purifier_recipe_retrains_and_a_matching_one_reuses(run):
    cfg, _, data, root = run
    from advrepair.data import load_dataset
    from advrepair.models import load_checkpoint

    train = load_dataset("fashion-mnist", split="train", root=str(data))
    test = load_dataset("fashion-mnist", split="test", root=str(data))
    vgg, vgg_card = load_checkpoint(cfg.models_dir / SOURCE_VGG / "classifier")
    old = read_card(cfg.models_dir / PURIFIER_DIR / PURIFIER_STEM)
    _, reused = ensure_purifier(cfg, vgg, vgg_card, train, test, torch.device("cpu"))
    assert reused.weights_sha256 == old.weights_sha256
    other = dataclasses.replace(cfg, models_dir=root / "models2",
                                purifier_recipe=dataclasses.replace(cfg.purifier_recipe, lr=5e-4))
    other.models_dir.mkdir()
    (other.models_dir / PURIFIER_DIR).mkdir()
    for suffix in (".safetensors", ".json"):  # the old purifier, under a config that wants another recipe
        src = cfg.models_dir / PURIFIER_DIR / f"{PURIFIER_STEM}{suffix}"
        (other.models_dir / PURIFIER_DIR / src.name).write_bytes(src.read_bytes())
    _, retrained = ensure_purifier(other, vgg, vgg_card, train, test, torch.device("cpu"))
    assert retrained.recipe["lr"] == 5e-4 and retrained.weights_sha256 != old.weights_sha256


def test_attack_parameters():
    name, p = attack_params("dim-ti", 0.1, 10, ti_kernel=5)
    assert name == "tifgsm" and p["decay"] == 1.0 and p["len_kernel"] == 5 and p["alpha"] == pytest.approx(0.01)
    assert p["diversity_prob"] == 0.5
    name, p = attack_params("ssp", 0.1, 10, ssp_layer="body.8")
    assert name == "ssp" and p["distance"] == "mae" and p["alpha"] == pytest.approx(0.025)
    assert attack_params("mifgsm-ti", 0.1, 10)[1]["diversity_prob"] == 0.0
    with pytest.raises(InputError, match="layer"):
        attack_params("ssp", 0.1, 10)
    with pytest.raises(InputError, match="unknown attack"):
        attack_params("i-fgsm", 0.1, 10)


def test_logit_ensemble_averages_members():
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x = torch.rand(2, 4)
    assert torch.allclose(LogitEnsemble([a, b])(x), (a(x) + b(x)) / 2)
    with pytest.raises(InputError, match="at least one"):
        LogitEnsemble([])


@pytest.mark.parametrize("overrides, message", [
    ({"table1_attacks": ("fgsm", "bogus")}, "unknown or repeated"),
    ({"table1_attacks": ()}, "non-empty"),
    ({"table5_attacks": "ssp"}, "non-empty"),
    ({"table1_attacks": ("ssp",)}, "ensemble"),
    ({"feature_source": TARGET}, "never the target"),
    ({"source_seed": 0}, "source_seed must differ"),
    ({"ti_kernel": 4}, "odd"),
    ({"defenses": ("jpeg", "sharpen")}, "unknown defenses"),
    ({"defenses": ("jpeg",), "adaptive_defenses": ("nrp",)}, "adaptive_defenses"),
    ({"n_images": 0}, "n_images"),
    ({"eps": -0.1}, "eps"),
    ({"ssp_distance": "l7"}, "ssp_distance"),
    ({"purifier_recipe": {"epochs": 1}}, "PurifierRecipe"),
])
def test_config_rejects_bad_values(tmp_path, overrides, message):
    with pytest.raises(InputError, match=message):
        _tiny(tmp_path, tmp_path, **overrides)


def test_config_pins_the_purifier_recipe_to_the_attack_budget(tmp_path):
    cfg = _tiny(tmp_path, tmp_path, eps=0.05, attack_steps=3)
    r = cfg.purifier_recipe
    assert (r.ssp_eps, r.ssp_alpha, r.ssp_steps, r.layer, r.distance) == (0.05, 0.0125, 3, "body.8", "mae")
    assert cfg.defenses[0] == "none" and cfg.sources() == (SOURCE_VGG, SOURCE_CNN, ENSEMBLE)
    assert _tiny(tmp_path, tmp_path, ensemble=False).sources() == (SOURCE_VGG, SOURCE_CNN)


def test_run_rejects_a_non_config():
    with pytest.raises(InputError, match="NRPConfig"):
        run_nrp_experiment({"out": "x"})  # type: ignore[arg-type]


def test_the_default_models_are_the_zoos():
    from advrepair import zoo
    from advrepair.apps.experiments.nrp.config import ZOO_MODELS, ZOO_PURIFIER

    assert NRPConfig().zoo
    assert ZOO_MODELS == {TARGET: "fmnist-cnn-standard", SOURCE_VGG: "fmnist-vgg16-standard",
                          SOURCE_CNN: "fmnist-cnn-standard-seed1"}
    for name in ZOO_MODELS.values():
        assert zoo.entry(name).kind is zoo.ZooKind.CLASSIFIER and zoo.entry(name).eps is None
    # the source the purifier learns from is a VGG as the experiment's own, never the target
    assert zoo.entry(ZOO_MODELS[SOURCE_VGG]).arch == "small-vgg" and zoo.entry(ZOO_MODELS[SOURCE_CNN]).seed == 1
    # the purifier too: trained on the VGG at the layer, budget and distance the defaults pin
    purifier = zoo.entry(ZOO_PURIFIER)
    assert purifier.kind is zoo.ZooKind.PURIFIER and purifier.parent == ZOO_MODELS[SOURCE_VGG]
    assert purifier.recipe.train_subset is None  # the whole training split
    with pytest.raises(InputError, match="zoo's purifier .* feature_layer 'body.6'"):
        NRPConfig(feature_layer="body.6")
    with pytest.raises(InputError, match="eps 0.05"):
        NRPConfig(eps=0.05)
    assert NRPConfig(eps=0.05, defenses=("jpeg",), adaptive=None).zoo  # no NRP defense: nothing to refuse


def test_paper_ablations_figs_3_to_5_and_table_3(tmp_path):
    torch.set_num_threads(1)
    data = write_fashion_mnist(tmp_path / "fmnist", n_train=200, n_test=60)
    cfg = _tiny(tmp_path, data, paper_ablations=True, n_images=10, adaptive=None, fig3_steps=(1, 2),
                fig4_layers=("body.3", "body.8"), table1_attacks=("fgsm", "dim-ti"), table5_attacks=("fgsm",),
                defenses=("nrp",))
    text = run_nrp_experiment(cfg).read_text()
    records = _records(cfg)
    fig3 = [r for r in records if r.get("kind") == "nrp-fig3"]
    assert [(r["attack"]["name"], r["steps"]) for r in fig3] == [("bim", 1), ("bim", 2), ("mifgsm", 1), ("mifgsm", 2)]
    assert all(r["feature_distortion"] > 0 and r["n_images"] == 10 for r in fig3)
    ssp = [r for r in records if r.get("attack", {}).get("attack", {}).get("name") == "ssp"]
    assert {r["attack"]["attack"]["layer"] for r in ssp} >= {"body.3", "body.8"}
    labels = {(r.get("defense") or {}).get("label") for r in records if "kind" not in r and "protocol" not in r}
    assert {"nrp-no-feature-loss", "nrp-no-pixel-loss", "nrp-no-critic"} <= labels
    for stem in ("purifier-no-feature-loss", "purifier-no-pixel-loss", "purifier-no-critic", "local-purifier"):
        card = read_card(cfg.models_dir / PURIFIER_DIR / stem)
        assert card.parent["feature_model_sha256"] == read_card(cfg.models_dir / SOURCE_VGG / "classifier").weights_sha256
    assert read_card(cfg.models_dir / PURIFIER_DIR / "purifier-no-critic").recipe["alpha"] == 0.0
    assert read_card(cfg.models_dir / PURIFIER_DIR / "local-purifier").seed == cfg.seed + 1
    through = [r for r in records if "local-purifier" in str(r.get("attack", {}).get("source", ""))]
    assert through and all(r["attack"]["attack"]["name"] == "tifgsm" for r in through)
    for heading in ("Fig. 3 shape", "Fig. 4 shape", "Fig. 5 shape", "Table 3 shape", "Cross-task results"):
        assert heading in text
    assert (cfg.out / "nrp_fig3_iterations.png").stat().st_size > 1000
