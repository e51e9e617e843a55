"""The multi-task SSL repair ablation (issue 5): end to end on tiny generated data, its
configuration checks and its paired-difference statistics."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from advrepair import zoo
from advrepair.apps.pipeline import DEFAULT_MODELS_DIR, QUICK_ADVERSARIAL, QUICK_SSL, QUICK_STANDARD
from advrepair.errors import InputError
from advrepair.evaluation.adaptive import AdaptiveConfig
from advrepair.apps.experiments.multitask_ssl import (PAPER_CODE_WEIGHTS, MultiTaskConfig, check_combinations,
                                                 combination_label, combination_title, default_combinations,
                                                 paired_difference, parse_combination, run_multitask_ablation)
from advrepair.training import ClassifierRecipe, SSLRecipe
from fake_data import write_fashion_mnist


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=120, n_test=40)


def _tiny(tmp_path, fake_fmnist, **kw):
    return MultiTaskConfig(
        out=tmp_path / "report", models_dir=tmp_path / "models", data_root=str(fake_fmnist), n_images=12,
        pgd_steps=2, pgd_alpha=0.05, reverse_steps=2, n_views=2,
        standard=ClassifierRecipe(epochs=1), adversarial=ClassifierRecipe(epochs=1, adversarial=True, steps=1),
        ssl=SSLRecipe(epochs=1), arch_config={"width": 4, "feature_dim": 16}, head_width=4, progress=False,
        adaptive=AdaptiveConfig(eps=0.1, steps=1, eot_draws=2, unroll_steps=1, lambdas=(0.0,), square_queries=2,
                                randomized_draws=2),
        adaptive_images=2, **{"zoo": False, **kw})


def test_end_to_end_table_rows_resume_and_no_retraining(tmp_path, fake_fmnist):
    cfg = _tiny(tmp_path, fake_fmnist)
    report = run_multitask_ablation(cfg)
    text = report.read_text()
    records = json.loads((cfg.out / "results.json").read_text())
    static = [r for r in records if "protocol" not in r and "kind" not in r]
    # 2 classifiers x 2 inputs x (no repair + 8 repairs): the no-repair cell is shared by the 8 calls
    assert len(static) == 2 * 2 * 9
    assert {r["n_images"] for r in static} == {12}
    labels = {r["defense"]["label"] for r in static if r["defense"]}
    assert labels == {combination_label(c) for c in default_combinations()}
    code = next(r for r in static if r["defense"] and r["defense"]["label"].endswith("inpainting:10"))
    assert [t["weight"] for t in code["defense"]["tasks"]] == list(PAPER_CODE_WEIGHTS)
    assert [t["task"] for t in code["defense"]["tasks"]] == ["contrastive", "rotation", "inpainting"]
    assert code["defense"]["eps_v"] == pytest.approx(0.2) and code["defense"]["steps"] == 2
    pgd = next(r for r in static if r["attack"]["name"] == "pgd")
    assert pgd["attack"]["eps"] == pytest.approx(0.1) and pgd["attack"]["steps"] == 2
    # the ablation table: header, rule, no repair and all 8 combinations with their weights
    table = (cfg.out / "table.md").read_text().strip().splitlines()
    assert len(table) == 2 + 9
    names = [line.split("|")[1].strip() for line in table[2:]]
    assert names == ["no repair"] + [combination_title(c) for c in default_combinations()]
    assert "C + R + I (1, 50, 10)" in names and "C + R + I (1, 1, 1)" in names
    assert all(line.count("±") == 4 for line in table[2:])
    assert "minus contrastive alone = " in text and "2 standard errors" in text and "> 2 paired s.e." in text
    assert "n = 12" in text and "eps = 0.1" in text and "PGD-2" in text
    assert "Minus contrastive alone" in text and "Adaptive protocol" in text
    assert (cfg.out / "multitask_bars.png").stat().st_size > 1000
    assert (cfg.out / "multitask_tradeoff.png").exists()
    summaries = [r for r in records if r.get("kind") == "adaptive-summary"]
    assert [s["model"] for s in summaries] == ["fmnist-cnn-pgd"]
    assert [t["weight"] for t in summaries[0]["defense"]["tasks"]] == [1.0, 1.0, 1.0]
    for model in ("fmnist-cnn-standard", "fmnist-cnn-pgd"):
        for stem in ("classifier", "ssl-contrastive", "ssl-rotation", "ssl-inpainting"):
            assert (cfg.models_dir / model / f"{stem}.safetensors").exists()
    stamps = {p: p.stat().st_mtime_ns for p in cfg.models_dir.rglob("*.safetensors")}

    run_multitask_ablation(cfg)  # rerun: nothing retrained, nothing re-evaluated
    assert json.loads((cfg.out / "results.json").read_text()) == records
    assert {p: p.stat().st_mtime_ns for p in cfg.models_dir.rglob("*.safetensors")} == stamps


def test_defaults_run_on_the_zoo_models_and_their_heads():
    cfg = MultiTaskConfig()
    assert cfg.zoo
    assert [cfg.zoo_head(m, t) for m in ("fmnist-cnn-standard", "fmnist-cnn-pgd")
            for t in ("contrastive", "rotation", "inpainting")] == [
        "fmnist-cnn-standard-contrastive", "fmnist-cnn-standard-rotation", "fmnist-cnn-standard-inpainting",
        "fmnist-cnn-pgd-contrastive", "fmnist-cnn-pgd-rotation", "fmnist-cnn-pgd-inpainting"]
    random_masks = MultiTaskConfig(inpainting_mask="random")
    assert random_masks.zoo_head("fmnist-cnn-pgd", "inpainting") == "fmnist-cnn-pgd-inpainting-random"
    assert random_masks.zoo_head("fmnist-cnn-standard", "inpainting") is None  # not shipped: trained on demand
    assert MultiTaskConfig(n_views=2).zoo_head("fmnist-cnn-pgd", "contrastive") is None
    assert cfg.models_dir == DEFAULT_MODELS_DIR and cfg.seed == 0
    assert (cfg.standard, cfg.adversarial, cfg.ssl) == (QUICK_STANDARD, QUICK_ADVERSARIAL, QUICK_SSL)
    assert cfg.n_images == 600 and 100 * math.sqrt(0.25 / cfg.n_images) <= 2.05
    assert (cfg.eps, cfg.pgd_steps, cfg.pgd_alpha, cfg.eps_v, cfg.reverse_steps) == (0.1, 20, 0.0125, 0.2, 40)
    assert len(cfg.combinations) == 8 and cfg.adaptive is not None and cfg.adaptive.steps == 10
    assert cfg.task_options("contrastive") == {"tau": 0.2, "n_views": 4}
    assert cfg.task_options("inpainting") == {"mask": "center"} and cfg.task_options("rotation") == {}
    assert cfg.arch_config is None and cfg.head_width is None


@pytest.mark.parametrize("kw, match", [
    (dict(n_images=0), "n_images"),
    (dict(eps_v=-0.1), "eps_v"),
    (dict(reverse_steps=2.5), "reverse_steps"),
    (dict(inpainting_mask="corner"), "inpainting_mask"),
    (dict(combinations=()), "non-empty"),
    (dict(combinations=((("jigsaw", 1.0),),)), "unknown self-supervised task"),
    (dict(combinations=((("rotation", -1.0),),)), "weight of rotation"),
    (dict(combinations=((("rotation", 1.0), ("rotation", 2.0)),)), "twice"),
    (dict(combinations=((("rotation", 1.0),), (("rotation", 1.0),))), "repeat"),
    (dict(combinations=(("rotation",),)), r"\(task, weight\)"),
    (dict(adaptive_models=("resnet",)), "adaptive_models"),
    (dict(head_width=0), "head_width"),
])
def test_config_rejects_bad_input(kw, match):
    with pytest.raises(InputError, match=match):
        MultiTaskConfig(**kw)


def test_combination_names():
    combos = default_combinations()
    assert len(combos) == len({combination_label(c) for c in combos}) == 8
    assert combination_label(combos[-1]) == "contrastive:1+rotation:50+inpainting:10"
    assert combination_title(combos[0]) == "contrastive" and combination_title(combos[3]) == "C + R (1, 1)"
    assert check_combinations([[("inpainting", 2)]]) == ((("inpainting", 2.0),),)
    for combo in combos:
        assert parse_combination(combination_label(combo)) == combo
    assert parse_combination("rotation + inpainting:0.5") == (("rotation", 1.0), ("inpainting", 0.5))
    for bad, match in (("", "spec"), ("rotation:x", "must be a number"), ("rotation:0", "must be > 0"),
                       ("colour:1", "unknown self-supervised task"), ("rotation+rotation:2", "twice")):
        with pytest.raises(InputError, match=match):
            parse_combination(bad)


def test_paired_difference_against_hand_computation():
    a = np.array([1, 1, 1, 0, 1, 0, 1, 1], dtype=bool)
    b = np.array([1, 0, 1, 0, 0, 0, 1, 1], dtype=bool)
    d = paired_difference(a, b)
    diffs = np.array([0, 1, 0, 0, 1, 0, 0, 0], dtype=float)
    assert d.diff == pytest.approx(0.25) and d.n == 8
    assert d.se_paired == pytest.approx(diffs.std(ddof=1) / math.sqrt(8))
    assert d.se_unpaired == pytest.approx(math.sqrt(0.75 * 0.25 / 8 + 0.5 * 0.5 / 8))
    assert d.se_paired < d.se_unpaired  # shared images: pairing removes the common part
    assert d.exceeds_2se is False  # 0.25 vs 2 * 0.164
    many = paired_difference(np.ones(100, bool), np.r_[np.zeros(20, bool), np.ones(80, bool)])
    assert many.diff == pytest.approx(0.2) and many.exceeds_2se and many.exceeds_2se_unpaired
    same = paired_difference(a, a)
    assert same.diff == 0 and not same.exceeds_2se
    with pytest.raises(InputError, match="same N"):
        paired_difference(a, b[:4])
    with pytest.raises(InputError, match="non-empty"):
        paired_difference(np.array([]), np.array([]))


def test_the_default_run_uses_the_zoo_classifiers_and_heads(tmp_path, fake_fmnist):
    cfg = MultiTaskConfig(out=tmp_path / "report", models_dir=tmp_path / "models", data_root=str(fake_fmnist),
                          n_images=4, pgd_steps=1, pgd_alpha=0.1, reverse_steps=1, progress=False, adaptive=None,
                          combinations=((("contrastive", 1.0), ("rotation", 1.0), ("inpainting", 1.0)),))
    report = run_multitask_ablation(cfg)
    records = json.loads((cfg.out / "results.json").read_text())
    static = [r for r in records if "protocol" not in r and "kind" not in r]
    assert {r["model"] for r in static} == {"fmnist-cnn-standard", "fmnist-cnn-pgd"}
    shipped = {m: zoo.card(m).weights_sha256 for m in ("fmnist-cnn-standard", "fmnist-cnn-pgd")}
    assert {r["model"]: r["model_weights"] for r in static} == shipped
    assert not list(cfg.models_dir.rglob("*.safetensors"))  # nothing trained
    assert "Classifiers and heads: the zoo's" in report.read_text()
