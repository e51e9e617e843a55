"""The xiao2020 experiment end to end on tiny generated Fashion-MNIST files: report, figures,
per-image worst case, resumability (a rerun trains nothing and adds no record), and errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import advrepair.apps.experiments.adversarial_transformation as xiao
import advrepair.apps.experiments.adversarial_transformation.config  # noqa: F401 - the submodules the test patches
import advrepair.apps.experiments.adversarial_transformation.models  # noqa: F401
import advrepair.apps.experiments.adversarial_transformation.report  # noqa: F401
import advrepair.apps.experiments.adversarial_transformation.run  # noqa: F401
from advrepair.defenses.adversarial_transformation import AdversarialTransformation, selection_statistic
from advrepair.errors import CheckpointError, InputError
from advrepair.apps.experiments.adversarial_transformation import (FbVariant, XiaoConfig, card_matches,
                                                              run_xiao_experiment, transformation_statistics,
                                                              write_xiao_report)
from advrepair.models import SmallCNN
from advrepair.training import ClassifierRecipe
from conftest import make_shapes
from fake_data import write_fashion_mnist

N_IMAGES = 20
N_TRAIN = 600
FA_EPOCHS = 2
AT_SUBSET = 200


pytestmark = pytest.mark.usefixtures("one_thread_module")


def tiny_config(root: Path, out: Path, models: Path, **overrides: object) -> XiaoConfig:
    small = dict(batch_size=64, lr=3e-3)
    fa_small = dict(batch_size=32, lr=3e-3)
    kw: dict[str, object] = dict(
        out=out, models_dir=models, data_root=str(root), progress=False, batch_size=16, n_images=N_IMAGES,
        eps=0.1, attack_steps=2, delta=0.2, g_steps=2,
        fb_config=dict(width=4, stages=2, convs_per_stage=1, feature_dim=16),
        fb_variants=(FbVariant("untrained", None, "untrained"),
                     FbVariant("trained", ClassifierRecipe(epochs=1, train_subset=128, **small), "standard"),
                     FbVariant("adv", ClassifierRecipe(epochs=1, train_subset=128, adversarial=True, eps=0.1,
                                                       alpha=0.05, steps=1, **small), "PGD-1")),
        fb_for_g="adv", stat_images=8, stat_samples=4,
        # f_a must learn something (~55% clean) so that the attack rows differ per image
        fa_config=dict(width=8, feature_dim=32),
        fa_recipe=ClassifierRecipe(epochs=FA_EPOCHS, **fa_small),
        fa_adversarial_recipe=ClassifierRecipe(epochs=1, train_subset=AT_SUBSET, adversarial=True, eps=0.1,
                                               alpha=0.05, steps=2, **fa_small),
        imitator_epochs=1, imitator_subset=64, imitator_width=4, imitator_depth=2,
        bpda_steps=(1, 2), eot_draws=(1, 2), deltas=(0.1, 0.2), square_queries=3, genattack_queries=4,
        genattack_population=2, hsj_steps=1, hsj_max_queries=30, hsj_init_evals=4, hsj_max_evals=8,
        zoo=False, eg_samples=2, small_n=1, spsa_steps=1, spsa_samples=2, fd_images=2, fd_steps=(1e-4, 1e-1))
    kw.update(overrides)
    return XiaoConfig(**kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=N_TRAIN, n_test=100)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, fake_fmnist: Path) -> tuple[XiaoConfig, Path]:
    base = tmp_path_factory.mktemp("xiao")
    cfg = tiny_config(fake_fmnist, base / "out", base / "models")
    return cfg, run_xiao_experiment(cfg)


def _records(out: Path) -> list[dict]:
    return json.loads((out / "results.json").read_text())


def _summary(out: Path) -> dict:
    return next(r for r in _records(out) if r.get("kind") == "xiao-summary")


def test_report_figures_and_tables_exist(finished: tuple[XiaoConfig, Path]) -> None:
    cfg, report = finished
    assert report == cfg.out / "report.md" and report.exists()
    text = report.read_text()
    for section in ("Table 1", "Training cost", "Per-image worst case, all rows", "Table 3 shape", "Fig. 5 shape",
                    "Fig. 6 shape", "Fig. 7 shape", "Reparameterization", "Fig. 3 shape", "Fig. 2 shape",
                    "Fig. 4 shape", "f_a∘g under BPDA-I"):
        assert section in text, section
    for png in ("fig5_accuracy_vs_steps.png", "fig6_accuracy_vs_delta.png", "fig7_accuracy_vs_eot_samples.png",
                "fig3_finite_differences.png", "fig2_transformed_image.png", "fig4_expected_transformation.png"):
        path = cfg.out / png
        assert path.exists() and path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"
        assert f"({png})" in text
    # one row per (N, surrogate) of Fig. 5 and per (Delta, samples) of Fig. 7
    s = _summary(cfg.out)
    assert [p["steps"] for p in s["fig5"]] == [1, 2]
    assert {(p["delta"], p["draws"]) for p in s["fig7"]} == {(0.1, 1), (0.1, 2), (0.2, 1), (0.2, 2)}
    assert [p["delta"] for p in s["fig6"]] == [0.1, 0.2]
    # N = g_steps with the random start on is the deployed defense itself (its rows are reused)
    assert s["fig5"][1]["label"] == "xiao2020"
    deployed = {row["name"]: row for row in s["deployed"]["rows"]}
    assert s["fig5"][1]["bpda-tanh"] == deployed["bpda-tanh"]["defended"]
    # the report lists the rows in the order they ran (clean first), with the worst case last
    table = text.split("## f_a∘g under every attack")[1].split("\n\n")[1].splitlines()
    assert table[2].startswith("| Clean (no attack)") and "Per-image worst case, all rows" in table[-1]


def test_every_accuracy_carries_attack_budget_steps_and_images(finished: tuple[XiaoConfig, Path]) -> None:
    cfg, _ = finished
    attacks = [r for r in _records(cfg.out) if r.get("protocol") == "xiao2020" and "kind" not in r]
    # deployed: clean 2, WT 2, 2 surrogates, 2 EOT counts, reparameterization, transfer 2, Square, GenAttack,
    # HSJ (14); baselines 2 x (clean, PGD) (4); Fig. 5 at N=1: clean + 2 surrogates (3); Delta 0.1: clean 2,
    # WT 2, EOT 2 (6); issue 17's rows on the deployed defense: BPDA-I, full gradient, E[g(x)] start,
    # small-N transfer, SPSA (5); Table 1's defense per f_b: clean + BPDA-I for the two f_b that g does
    # not use (4; the used f_b's column is the deployed defense's own records)
    assert len(attacks) == 36
    names = set()
    for r in attacks:
        assert r["n_images"] == N_IMAGES and 0.0 <= r["accuracy"] <= 1.0
        a = r["attack"]
        names.add(a["name"])
        assert "xiao_row" in a and "crafted_on" in a
        if a["name"] != "clean":
            assert a["eps"] == pytest.approx(0.1)
        if a["name"] == "pgd":
            assert a["steps"] == 2 and a["alpha"] == pytest.approx(2.5 * 0.1 / 2)
        if a["name"] == "transfer":
            assert a["attack"]["steps"] == 2
    assert names == {"clean", "pgd", "transfer", "square", "genattack", "hopskipjump", "spsa"}
    started = [r for r in attacks if r["attack"]["xiao_row"] == "eg-start"]
    assert len(started) == 1 and started[0]["attack"]["start"].startswith("E[g(x)] over 2 draws")
    eot = [r for r in attacks if r["attack"]["xiao_row"].startswith("bpda-eot")]
    assert {r["attack"]["eot_draws"] for r in eot} == {1, 2}
    surrogate = [r for r in attacks if r["attack"]["xiao_row"] == "bpda-softsign"]
    assert surrogate and all(r["attack"]["gradient_of_g"]["kind"] == "softsign" for r in surrogate)


def test_worst_case_is_the_per_image_and_of_all_rows(finished: tuple[XiaoConfig, Path]) -> None:
    cfg, _ = finished
    s = _summary(cfg.out)
    by_key = {r["key"]: r for r in _records(cfg.out) if "key" in r}
    rows = {k["name"]: by_key[k["defended"]] for k in s["deployed"]["rows"] if k["name"] != "clean"}
    assert set(rows) == set(s["worst_case"]["over"])
    assert {"white-box-transfer", "bpda-tanh", "bpda-softsign", "bpda-eot-1", "bpda-eot-2", "reparameterization",
            "transfer-independent", "square", "genattack", "hopskipjump", "bpda-identity", "full-gradient",
            "eg-start", "transfer-small-n", "spsa"} == set(rows)
    worst = s["worst_case"]["accuracy"]
    # the models learned, and the rows disagree per image: otherwise this test could not tell a
    # worst case over all rows from one over a single row
    clean = by_key[next(k for k in s["deployed"]["rows"] if k["name"] == "clean")["defended"]]
    assert clean["accuracy"] >= 0.3
    assert worst < max(r["accuracy"] for r in rows.values())
    for name, r in rows.items():
        assert worst <= r["accuracy"] + 1e-12, name
    assert worst <= s["bpda_worst_case"]["accuracy"]
    # recompute from the stored per-image arrays (an independent AND over the rows)
    correct = np.ones(N_IMAGES, dtype=bool)
    for r in rows.values():
        with np.load(cfg.out / r["arrays"]) as f:
            correct &= f["correct"].astype(bool)
    assert s["worst_case"]["n_correct"] == int(correct.sum())
    assert rows[s["most_effective"]]["accuracy"] == min(r["accuracy"] for r in rows.values())


def test_table1_and_training_cost_records(finished: tuple[XiaoConfig, Path]) -> None:
    cfg, _ = finished
    recs = _records(cfg.out)
    t1 = [r for r in recs if r.get("kind") == "xiao-table1"]
    assert [r["variant"] for r in t1] == ["untrained", "trained", "adv"]
    for r in t1:
        assert 0.0 < r["linf"] <= cfg.delta + 1e-6
        assert 0.0 < r["mean_abs"] <= r["linf"]
        assert r["samples"] == 4 and r["n_images"] == 8 and r["linf_se"] >= 0
    assert [r["used_for_g"] for r in t1] == [False, False, True]
    cost = next(r for r in recs if r.get("kind") == "xiao-training-cost")
    tr, at = cost["transformation"]["passes"], cost["pgd-at"]["passes"]
    # training on g: one f_a pass per image; f_b: one forward for the target and one forward and
    # backward per LL-PGD step. PGD-AT: steps + 1 passes through f_a, none through f_b
    seen = N_TRAIN * FA_EPOCHS
    assert tr["f_a"]["forward"] == seen and tr["f_a"]["backward"] == seen
    assert tr["f_b"]["forward"] == seen * (cfg.g_steps + 1) and tr["f_b"]["backward"] == seen * cfg.g_steps
    at_steps = cfg.fa_adversarial_recipe.steps + 1
    assert "f_b" not in at and at["f_a"]["forward"] == at["f_a"]["backward"] == AT_SUBSET * at_steps
    assert cost["transformation"]["seconds"] > 0 and cost["pgd-at"]["seconds"] > 0


def test_rerun_trains_nothing_and_adds_no_records(finished: tuple[XiaoConfig, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, report = finished
    before = _records(cfg.out)
    models = sorted(p.name for p in cfg.models_dir.iterdir())
    assert {"fb-untrained.safetensors", "fb-adv.json", "fa-xiao-delta0p2.safetensors", "fa-xiao-delta0p1.json",
            "fa-xiao-delta0p1.safetensors", "fa-pgd-at.safetensors", "fa-standard-seed1.safetensors",
            "imitator-delta0p2.json"} <= set(models)

    def forbidden(*_a: object, **_k: object) -> None:
        raise AssertionError("a rerun must reuse the cached models")

    patched = 0
    for module in (xiao.config, xiao.models, xiao.run, xiao.report):  # each name where the experiment looks it up
        for name in ("train_classifier", "compare_training_cost", "train_on_transformation", "fit_imitator",
                     "_evaluate_cells", "transformation_statistics"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, forbidden)
                patched += 1
    assert patched >= 6
    assert run_xiao_experiment(cfg) == report
    assert _records(cfg.out) == before
    text = report.read_text()
    assert "0 new records" in text and f"({len(before)} records added)" in text
    assert sorted(p.name for p in cfg.models_dir.iterdir()) == models


def test_card_matches_notices_changed_training(finished: tuple[XiaoConfig, Path], tmp_path: Path) -> None:
    cfg, _ = finished
    stem = cfg.models_dir / "fa-standard-seed1"
    card = json.loads(stem.with_suffix(".json").read_text())
    wanted = dict(kind="classifier", arch="small-cnn", config=card["config"], dataset=card["dataset"],
                  recipe=cfg.fa_recipe.to_dict(), seed=1, parent={"role": "independent"})
    assert card_matches(stem, **wanted)
    assert not card_matches(stem, **{**wanted, "recipe": ClassifierRecipe(epochs=2).to_dict()})
    assert not card_matches(stem, **{**wanted, "seed": 0})
    assert not card_matches(stem, **{**wanted, "parent": {"role": "f_b"}})
    assert not card_matches(tmp_path / "missing", **wanted)
    broken = tmp_path / "broken"
    shutil.copy(stem.with_suffix(".safetensors"), broken.with_suffix(".safetensors"))
    broken.with_suffix(".json").write_text("{not json")
    assert not card_matches(broken, **wanted)


def test_tampered_weights_are_refused(finished: tuple[XiaoConfig, Path], tmp_path: Path) -> None:
    cfg, _ = finished
    models = tmp_path / "models"
    shutil.copytree(cfg.models_dir, models)
    weights = models / "fb-untrained.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    bad = tiny_config(Path(cfg.data_root), tmp_path / "out", models)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="does not match its card"):
        run_xiao_experiment(bad)


def test_transformation_statistics_equal_selection_statistic() -> None:
    torch.manual_seed(0)
    f_b = SmallCNN(num_classes=4, width=4, feature_dim=16).eval()
    images = make_shapes(5, seed=3).tensors()[0]
    g = AdversarialTransformation(f_b, delta=0.2, steps=2, seed=1)
    stats = transformation_statistics(g, images, samples=6, max_batch=10)  # several passes of 2 draws
    for norm, key in (("linf", "linf"), ("mean-abs", "mean_abs")):
        d, se = selection_statistic(g, images, samples=6, norm=norm, max_batch=10, return_stderr=True)
        assert torch.allclose(stats[key], d, atol=1e-6) and torch.allclose(stats[f"{key}_se"], se, atol=1e-6)
    assert bool((stats["mean_abs"] < stats["linf"]).all())
    with pytest.raises(InputError, match="AdversarialTransformation"):
        transformation_statistics(f_b, images, samples=2)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="samples"):
        transformation_statistics(g, images, samples=0)
    with pytest.raises(InputError):
        transformation_statistics(g, images * 2, samples=2)


@pytest.mark.parametrize("overrides, message", [
    (dict(eps=0.0), "eps"),
    (dict(bpda_steps=()), "bpda_steps"),
    (dict(eot_draws=(1, 0)), "eot_draws"),
    (dict(deltas=(0.2, 1.5)), "deltas"),
    (dict(delta=0.0), "delta"),
    (dict(surrogates=("relu",)), "surrogates"),
    (dict(fb_for_g="missing"), "fb_for_g"),
    (dict(fb_variants=(FbVariant("a", None), FbVariant("a", None))), "repeated"),
    (dict(fb_variants=(FbVariant("a", None), FbVariant("b.1", None))), "file names"),
    (dict(fa_recipe=ClassifierRecipe(adversarial=True)), "fa_recipe"),
    (dict(fa_adversarial_recipe=ClassifierRecipe()), "fa_adversarial_recipe"),
    (dict(n_images=0), "n_images"),
    (dict(zoo=True), "every f_b variant names its zoo entry"),
    (dict(zoo=True, fb_variants=xiao.config._default_fb_variants(), fb_for_g="pgd", g_steps=3), "Delta 0.2 and N 13"),
    (dict(zoo=True, fb_variants=xiao.config._default_fb_variants(), fb_for_g="standard", g_steps=13),
     "fb_for_g must name"),
    (dict(spsa_samples=0), "spsa_samples"),
    (dict(fd_steps=(0.1, 2.0)), "fd_steps"),
    (dict(threads=0), "threads"),
])
def test_config_rejects_bad_values(tmp_path: Path, overrides: dict, message: str) -> None:
    kw = dict(fb_for_g="a") if "fb_variants" in overrides else {}
    with pytest.raises(InputError, match=message):
        tiny_config(tmp_path, tmp_path / "o", tmp_path / "m", **{**kw, **overrides})


def test_entry_points_reject_bad_inputs(tmp_path: Path, fake_fmnist: Path) -> None:
    with pytest.raises(InputError, match="XiaoConfig"):
        run_xiao_experiment({"out": tmp_path})  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no xiao2020 summary"):
        write_xiao_report(tmp_path / "empty")
    with pytest.raises(InputError, match="only 100"):
        run_xiao_experiment(tiny_config(fake_fmnist, tmp_path / "o", tmp_path / "m", n_images=500))


def test_table1_defense_columns_fig3_and_fig2(finished: tuple[XiaoConfig, Path]) -> None:
    cfg, _ = finished
    s = _summary(cfg.out)
    by_key = {r["key"]: r for r in _records(cfg.out) if "key" in r}
    deployed = {row["name"]: row["defended"] for row in s["deployed"]["rows"]}
    columns = {d["variant"]: d for d in s["table1_defense"]}
    assert list(columns) == ["untrained", "trained", "adv"]
    for d in columns.values():
        assert by_key[d["clean"]]["attack"]["name"] == "clean"
        assert by_key[d["bpda-identity"]]["attack"]["gradient_of_g"] == "identity (BPDA-I)"
    # without the zoo the deployed f_a is the ablation f_a of the used f_b: the same records
    assert columns["adv"]["clean"] == deployed["clean"] and columns["adv"]["bpda-identity"] == deployed["bpda-identity"]
    assert len({columns[v]["clean"] for v in columns}) == 3
    fd = by_key[s["fig3"]]
    assert fd["steps"] == [1e-4, 1e-1] and len(fd["estimates"]) == 2 and all(len(r) == 2 for r in fd["estimates"])
    assert all(np.isfinite(v) for row in fd["estimates"] for v in row)
    fig2 = by_key[s["fig2"]]
    with np.load(cfg.out / fig2["arrays"]) as f:
        x, adv, gx = f["image"], f["adversarial"], f["transformed"]
    assert np.abs(adv - x).max() <= cfg.eps + 1e-6 and np.abs(gx - x).max() <= cfg.delta + 1e-6


def test_the_default_run_uses_the_zoo_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """zoo=True on a tiny zoo built into a temporary folder: f_a, the four f_b, the baselines and
    the transfer source are the zoo's (nothing of theirs is trained), the ablation f_a are trained."""
    import dataclasses

    from advrepair.zoo import registry
    from advrepair.zoo.build import build

    data = write_fashion_mnist(tmp_path / "fmnist", n_train=300, n_test=60)
    tiny = {}
    for name, e in registry.ENTRIES.items():
        recipe = e.recipe and dataclasses.replace(e.recipe, epochs=1, train_subset=64)
        if isinstance(recipe, ClassifierRecipe) and recipe.adversarial:
            recipe = dataclasses.replace(recipe, steps=1)
        transform = {**e.transform, "steps": 2} if e.transform else e.transform
        tiny[name] = dataclasses.replace(e, recipe=recipe, transform=transform, autoattack=False,
                                         config={**e.config, "width": 4} if e.arch else e.config)
    monkeypatch.setattr(registry, "ENTRIES", tiny)
    monkeypatch.setattr("advrepair.zoo.metrics.ROBUST_IMAGES", 8)
    monkeypatch.setenv("ADVREPAIR_ZOO_DIR", str(tmp_path / "zoo"))
    needed = [xiao.config.ZOO_F_A, xiao.config.ZOO_INDEPENDENT, xiao.config.ZOO_NO_DEFENSE, xiao.config.ZOO_PGD_AT,
              "fmnist-vgg8-untrained", "fmnist-vgg8-standard-1ep", "fmnist-vgg8-standard"]
    build(needed, tmp_path / "zoo", data_root=str(data), progress=False, autoattack=False)
    cfg = tiny_config(data, tmp_path / "out", tmp_path / "models", zoo=True, n_images=10,
                      fb_variants=xiao.config._default_fb_variants(), fb_for_g="pgd",
                      fb_config=dict(tiny["fmnist-vgg8-pgd"].config),
                      deltas=(0.2,), bpda_steps=(2,))
    run_xiao_experiment(cfg)
    s = _summary(cfg.out)
    assert s["zoo"] and s["deployed"]["rows"][0]["name"] == "clean"
    by_key = {r["key"]: r for r in _records(cfg.out) if "key" in r}
    clean = by_key[s["deployed"]["rows"][0]["defended"]]
    assert clean["model"] == xiao.config.ZOO_F_A
    assert {s["baselines"]["no-defense"]["model"], s["baselines"]["pgd-at"]["model"]} == {
        xiao.config.ZOO_NO_DEFENSE, xiao.config.ZOO_PGD_AT}
    assert [d["variant"] for d in s["table1_defense"]] == ["untrained", "standard-1ep", "standard", "pgd"]
    # the zoo's f_b are loaded, never trained here; the ablation f_a are trained (one per other f_b, N, pair)
    trained = sorted(p.name for p in (tmp_path / "models").glob("*.safetensors"))
    assert not any(name.startswith("fb-") for name in trained)
    assert {"fa-xiao-fb-untrained.safetensors", "fa-xiao-N1.safetensors", "fa-pgd-at.safetensors"} <= set(trained)
    text = (cfg.out / "report.md").read_text()
    assert "Models from the zoo" in text and xiao.config.ZOO_F_A in text
