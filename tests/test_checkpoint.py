import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from advrepair.errors import CheckpointError
from advrepair.models import (ModelCard, PreActResNet18, SmallCNN, WideResNet, load_checkpoint, read_card,
                              save_checkpoint)


def _card(model):
    return ModelCard(kind="classifier", arch=model.arch, config=model.config, dataset="shapes",
                     recipe={"epochs": 1}, seed=3,
                     metrics=[{"metric": "clean_accuracy", "value": 0.5, "attack": None, "n_images": 10}])


def test_round_trip_restores_weights_and_card(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN(num_classes=4, width=8, feature_dim=16)
    save_checkpoint(model, tmp_path / "m", _card(model))
    loaded, card = load_checkpoint(tmp_path / "m")
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    assert card.seed == 3 and card.arch == "small-cnn" and card.metrics[0]["n_images"] == 10
    assert not loaded.training
    assert len(card.weights_sha256) == 64


def test_loading_rejects_weights_that_do_not_match_the_card(tmp_path):
    a, b = SmallCNN(width=8), SmallCNN(width=8)
    save_checkpoint(a, tmp_path / "a", _card(a))
    save_file({k: v.contiguous() for k, v in b.state_dict().items()}, str(tmp_path / "a.safetensors"))
    with pytest.raises(CheckpointError, match="does not match its card"):
        load_checkpoint(tmp_path / "a")


def test_loading_rejects_a_card_for_another_architecture(tmp_path):
    model = SmallCNN(width=8)
    save_checkpoint(model, tmp_path / "m", _card(model))
    card = json.loads((tmp_path / "m.json").read_text())
    card["config"]["width"] = 16
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path / "m")


def test_loading_refuses_pickles_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "m.safetensors").write_bytes(pickle.dumps(Evil(), protocol=4))
    (tmp_path / "m.json").write_text(json.dumps({"kind": "classifier", "arch": "small-cnn", "config": {},
                                                 "weights_sha256": "0"}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path / "m")
    torch.save({"w": torch.zeros(1)}, tmp_path / "t.safetensors")
    (tmp_path / "t.json").write_text((tmp_path / "m.json").read_text())
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path / "t")
    assert not marker.exists()


def test_garbage_and_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no weights"):
        load_checkpoint(tmp_path / "nothing")
    model = SmallCNN(width=8)
    save_checkpoint(model, tmp_path / "m", _card(model))
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_card(tmp_path / "m")
    (tmp_path / "g.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    (tmp_path / "g.json").write_text(json.dumps({"kind": "classifier", "arch": "small-cnn", "config": {},
                                                 "weights_sha256": ""}))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "g")


def test_wrong_kind_is_rejected(tmp_path):
    model = SmallCNN(width=8)
    save_checkpoint(model, tmp_path / "m", _card(model))
    with pytest.raises(CheckpointError, match="expected 'ssl-contrastive'"):
        load_checkpoint(tmp_path / "m", expected_kind="ssl-contrastive")


@pytest.mark.parametrize("factory, feat", [(lambda: PreActResNet18(num_classes=10), 512),
                                           (lambda: WideResNet(depth=10, widen=1, num_classes=100), 64)])
def test_color_architectures_shapes_and_features(factory, feat):
    model = factory().eval()
    x = torch.rand(2, 3, 32, 32)
    assert model.features(x).shape == (2, feat)
    assert model(x).shape == (2, model.num_classes)


def test_a_safetensors_header_length_with_a_pickle_like_first_byte_still_loads(tmp_path):
    """A u64 header length whose low byte is 0x80 (pickle's PROTO opcode) is not a pickle."""
    import hashlib

    model = SmallCNN(width=4, feature_dim=16)
    stem = tmp_path / "m"
    save_checkpoint(model, stem, ModelCard(kind="classifier", arch=model.arch, config=model.config))
    weights = tmp_path / "m.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    for pad in range(0, 400):
        save_file(state, str(weights), metadata={"pad": "x" * pad})
        raw = weights.read_bytes()
        if raw[0] == 0x80:
            break
    assert raw[0] == 0x80
    card = json.loads((tmp_path / "m.json").read_text())
    card["weights_sha256"] = hashlib.sha256(raw).hexdigest()
    (tmp_path / "m.json").write_text(json.dumps(card))
    loaded, _ = load_checkpoint(stem)
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())
