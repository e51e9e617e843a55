"""The model zoo: shipped entries load and are checked against their cards; a rebuild from
the recipe is bit-identical on CPU; the listing and ZOO.md show what the cards measured."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from advrepair import zoo
from advrepair.apps.cli import main
from advrepair.defenses import ReverseAttack
from advrepair.errors import CheckpointError, InputError
from advrepair.models import Classifier
from advrepair.models.purifier import Purifier
from advrepair.ssl import ContrastiveTask
from advrepair.training import SSLRecipe, train_ssl_task
from advrepair.training.loops import flip_and_shift
from advrepair.zoo import registry
from advrepair.zoo.build import build
from conftest import make_shapes
from fake_data import write_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [e.name for e in zoo.entries() if zoo.is_shipped(e.name)]


def test_the_two_classifiers_and_their_contrastive_heads_are_shipped():
    assert {"fmnist-cnn-standard", "fmnist-cnn-pgd", "fmnist-cnn-standard-contrastive",
            "fmnist-cnn-pgd-contrastive", zoo.NEGATIVES} <= set(SHIPPED)
    total = sum(p.stat().st_size for p in zoo.weights_dir().glob("*.safetensors"))
    assert total < 30e6


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_entry_loads_and_its_card_says_how_it_was_made_and_measured(name):
    module, card = zoo.load(name)
    entry = zoo.entry(name)
    if entry.kind is zoo.ZooKind.NEGATIVE_BANK:
        assert module.shape == (256, 1, 28, 28) and 0 <= module.min() and module.max() <= 1
        return
    recipe = {k: v for k, v in card.recipe.items() if k != "critic"}  # a purifier's card adds its critic
    assert recipe == (entry.recipe.to_dict() if entry.recipe else {"untrained": True})
    assert card.seed == entry.seed
    assert card.parent["provenance"]["threads"] >= 1
    assert entry.recipe is None or card.parent["provenance"]["training_seconds"] > 0
    assert card.metrics, "a shipped entry records what it reaches"
    for m in card.metrics:
        assert {"metric", "value", "stderr", "attack", "n_images"} <= set(m)
    if entry.kind is zoo.ZooKind.CLASSIFIER:
        assert isinstance(module, Classifier) and not module.training
        clean = card.metrics[0]
        assert clean["metric"] == "clean_accuracy" and clean["n_images"] == 10000
        assert all(m["n_images"] >= 1000 for m in card.metrics)
    elif entry.kind is zoo.ZooKind.PURIFIER:
        assert isinstance(module, Purifier) and not module.training
        assert card.parent["layer"] == entry.recipe.layer and card.parent["history"]
        assert {m["metric"]: m["n_images"] for m in card.metrics}["clean_accuracy_purified"] == 10000
    else:
        assert card.parent["stopping_epoch"] >= 1
        assert any(h.get("best") for h in card.parent["history"]) and "heldout_loss" in card.parent["history"][0]


def test_the_mao2021_defense_is_one_line_on_zoo_models():
    classifier, _ = zoo.load("fmnist-cnn-pgd")
    task, _ = zoo.load("fmnist-cnn-pgd-contrastive")
    assert isinstance(task, ContrastiveTask) and task.negatives.shape[0] == 256
    defense = ReverseAttack(classifier, task, eps_v=0.2, steps=2)
    x = torch.rand(3, 1, 28, 28)
    assert defense(x).shape == x.shape and (defense(x) - x).abs().max() <= 0.2 + 1e-6


def test_weights_that_do_not_match_their_card_are_refused(tmp_path):
    for p in zoo.weights_dir().iterdir():
        shutil.copy(p, tmp_path / p.name)
    weights = tmp_path / "fmnist-cnn-standard.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="does not match its card"):
        zoo.load("fmnist-cnn-standard", folder=tmp_path)
    (tmp_path / "fmnist-negatives-256.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="does not match its card"):
        zoo.load_negatives(tmp_path)


def test_unknown_and_unbuilt_names_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no zoo entry 'nope'.*fmnist-cnn-pgd"):
        zoo.load("nope")
    with pytest.raises(CheckpointError, match="not in .*zoo build fmnist-cnn-pgd"):
        zoo.load("fmnist-cnn-pgd", folder=tmp_path)


def test_zoo_list_json_has_the_documented_fields(capsys):
    assert main(["zoo", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [e.name for e in zoo.entries()]
    for r in rows:
        assert {"name", "kind", "dataset", "parent", "eps", "metrics"} <= set(r)
    by_name = {r["name"]: r for r in rows}
    assert by_name["fmnist-cnn-pgd"]["eps"] == 0.1 and by_name["fmnist-cnn-standard"]["eps"] is None
    assert by_name["fmnist-cnn-pgd-contrastive"]["parent"] == "fmnist-cnn-pgd"
    assert by_name["fmnist-cnn-pgd-contrastive"]["kind"] == "ssl head"


def test_zoo_md_is_the_table_the_cards_give():
    text = (ROOT / "ZOO.md").read_text()
    assert zoo.summary.markdown_table() in text, "regenerate ZOO.md's table with `advrepair zoo list --markdown`"


def _tiny_registry(tmp_path, monkeypatch):
    data = write_fashion_mnist(tmp_path / "fmnist", n_train=300, n_test=100)
    tiny = {}
    for name, e in registry.ENTRIES.items():
        recipe = e.recipe and dataclasses.replace(e.recipe, epochs=2, train_subset=96)
        transform = {**e.transform, "steps": 2} if e.transform else e.transform
        tiny[name] = dataclasses.replace(e, recipe=recipe, heldout=48 if e.heldout else 0, transform=transform,
                                         config={**e.config, "width": 4} if e.arch else e.config)
    monkeypatch.setattr(registry, "ENTRIES", tiny)
    monkeypatch.setattr("advrepair.zoo.metrics.ROBUST_IMAGES", 20)
    monkeypatch.setenv("ADVREPAIR_ZOO_DIR", str(tmp_path / "shipped"))
    return data


def test_a_rebuild_from_the_recipe_is_bit_identical_and_compared_with_the_card(tmp_path, monkeypatch):
    data = _tiny_registry(tmp_path, monkeypatch)
    names = ["fmnist-cnn-pgd-contrastive"]
    first = build(names, tmp_path / "shipped", data_root=str(data), progress=False, autoattack=False)
    assert [r.name for r in first] == ["fmnist-cnn-pgd", zoo.NEGATIVES, "fmnist-cnn-pgd-contrastive"]
    assert all(r.identical is None for r in first)  # written where the zoo is read from: nothing to compare
    again = build(names, tmp_path / "rebuilt", data_root=str(data), progress=False, autoattack=False)
    assert all(r.identical and r.matches for r in again), [(r.name, r.differences) for r in again]
    card = json.loads((tmp_path / "rebuilt" / "fmnist-cnn-pgd-contrastive.json").read_text())
    assert card["parent"]["classifier"] == "fmnist-cnn-pgd" and card["parent"]["stopping_epoch"] in (1, 2)


def test_early_stopping_keeps_the_best_epoch_and_needs_held_out_images(trained_cnn):
    from advrepair.ssl import build_task

    data, heldout = make_shapes(64, seed=1), make_shapes(32, seed=2)
    task = build_task("rotation", trained_cnn)
    with pytest.raises(InputError, match="held-out images"):
        train_ssl_task(task, trained_cnn, data, SSLRecipe(epochs=2, patience=1), progress=False)
    history = train_ssl_task(task, trained_cnn, data, SSLRecipe(epochs=4, patience=1), progress=False,
                             heldout=heldout)
    best = min(history, key=lambda h: h["heldout_loss"])
    assert best.get("best") == 1.0 and len(history) <= 4
    if len(history) < 4:  # stopped: the last epoch did not improve on the best
        assert history[-1]["heldout_loss"] >= best["heldout_loss"]


def test_flip_and_shift_is_seeded_and_keeps_pixels():
    x = torch.rand(8, 1, 28, 28)
    a = flip_and_shift(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, flip_and_shift(x, torch.Generator().manual_seed(3)))
    assert a.shape == x.shape and not torch.equal(a, x)
    assert (a.sum((1, 2, 3)) <= x.sum((1, 2, 3)) + 1e-4).all()  # shifted out, never invented


def test_xiao2020_f_a_is_trained_on_g_of_its_f_b_rebuilds_bit_identically_and_loads_as_a_defense(tmp_path,
                                                                                                monkeypatch):
    data = _tiny_registry(tmp_path, monkeypatch)
    first = build(["fmnist-cnn-xiao", "fmnist-vgg8-untrained"], tmp_path / "shipped", data_root=str(data),
                  progress=False, autoattack=False)
    assert [r.name for r in first] == ["fmnist-vgg8-pgd", "fmnist-cnn-xiao", "fmnist-vgg8-untrained"]
    card = json.loads((tmp_path / "shipped" / "fmnist-cnn-xiao.json").read_text())
    assert card["parent"]["f_b"] == "fmnist-vgg8-pgd" and card["parent"]["transform"]["steps"] == 2
    metrics = {m["metric"]: m for m in card["metrics"]}
    assert {"clean_accuracy", "robust_accuracy", "clean_accuracy_defended", "robust_accuracy_defended"} == set(metrics)
    assert metrics["robust_accuracy_defended"]["attack"]["gradient_of_g"] == "identity (BPDA-I)"
    assert json.loads((tmp_path / "shipped" / "fmnist-vgg8-untrained.json").read_text())["recipe"] == {"untrained": True}
    g, f_a, _ = zoo.load_defended("fmnist-cnn-xiao")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(g(x), g(x)) and (g(x) - x).abs().max() <= 0.2 + 1e-6
    assert f_a(g(x)).shape == (4, 10)
    with pytest.raises(InputError, match="not trained on an input transformation"):
        zoo.load_defended("fmnist-vgg8-pgd")
    again = build(["fmnist-cnn-xiao"], tmp_path / "rebuilt", data_root=str(data), progress=False, autoattack=False)
    assert [r.name for r in again] == ["fmnist-cnn-xiao"]  # the shipped f_b is used, not rebuilt
    assert again[0].identical and again[0].matches


def test_the_nrp_purifier_is_built_on_its_feature_network_rebuilds_bit_identically_and_loads_as_a_defense(
        tmp_path, monkeypatch):
    data = _tiny_registry(tmp_path, monkeypatch)
    first = build(["fmnist-nrp-purifier"], tmp_path / "shipped", data_root=str(data), progress=False,
                  autoattack=False)
    assert [r.name for r in first] == ["fmnist-vgg16-standard", "fmnist-nrp-purifier"]
    purifier, card = zoo.load("fmnist-nrp-purifier")
    assert isinstance(purifier, Purifier) and card.kind == "purifier"
    assert card.parent["classifier"] == "fmnist-vgg16-standard" and card.parent["layer"] == "body.8"
    assert card.parent["feature_model_sha256"] == zoo.card("fmnist-vgg16-standard").weights_sha256
    assert {"mean_feature_ssp", "mean_feature_purified_ssp", "clean_accuracy_purified"} <= {
        m["metric"] for m in card.metrics}
    x = torch.rand(3, 1, 28, 28)
    out = purifier(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    again = build(["fmnist-nrp-purifier"], tmp_path / "rebuilt", data_root=str(data), progress=False,
                  autoattack=False)
    assert [r.name for r in again] == ["fmnist-nrp-purifier"] and again[0].identical and again[0].matches
    # a purifier trained against other feature-network weights than its parent's is refused
    card_path = tmp_path / "shipped" / "fmnist-nrp-purifier.json"
    card_json = json.loads(card_path.read_text())
    card_json["parent"]["feature_model_sha256"] = "0" * 64
    card_path.write_text(json.dumps(card_json))
    with pytest.raises(CheckpointError, match="another feature extractor"):
        zoo.load("fmnist-nrp-purifier")


def test_channels_last_training_is_deterministic_and_leaves_contiguous_weights():
    from advrepair.models import build_model
    from advrepair.training import ClassifierRecipe, train_classifier

    data = make_shapes(64, seed=4)
    recipe = ClassifierRecipe(epochs=1, batch_size=32, adversarial=True, eps=0.1, alpha=0.05, steps=2,
                              channels_last=True)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("small-cnn", width=4, feature_dim=8, in_channels=data.image_shape[0],
                            input_size=data.image_shape[1], num_classes=data.num_classes)
        train_classifier(model, data, recipe, progress=False)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        assert all(v.is_contiguous() for v in model.state_dict().values())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert recipe.to_dict()["channels_last"] is True
    assert "channels_last" not in dataclasses.replace(recipe, channels_last=False).to_dict()
    with pytest.raises(InputError, match="channels_last must be True or False"):
        ClassifierRecipe(channels_last="yes")
