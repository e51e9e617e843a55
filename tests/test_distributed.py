"""Ray-sharded evaluation equals a single-process run (two local workers on this CPU)."""
import numpy as np
import pytest
import torch

from advrepair.evaluation import AttackSpec, ModelEntry, ResultsStore, evaluate_matrix
from advrepair.evaluation.distributed import merge_shards, shard_bounds

ray = pytest.importorskip("ray")


def test_shard_bounds_cover_every_image_once_in_order():
    for n, w in [(10, 3), (2, 4), (7, 1)]:
        bounds = shard_bounds(n, w)
        assert [i for a, b in bounds for i in range(a, b)] == list(range(n))


def test_two_ray_workers_equal_one_process(trained_cnn, shapes_test, tmp_path):
    from advrepair.defenses import MedianFilter
    from advrepair.evaluation.distributed import evaluate_matrix_ray

    data = shapes_test.subset(range(30))
    entries = [ModelEntry("cnn", trained_cnn, card={"weights_sha256": "w"}, defenses={"median": MedianFilter(3)})]
    specs = [AttackSpec("clean"), AttackSpec("pgd", {"eps": 0.1, "alpha": 0.03, "steps": 3})]
    single = evaluate_matrix(data, entries, specs, ResultsStore(tmp_path / "one"), batch_size=8, progress=False)
    store = ResultsStore(tmp_path / "ray")
    merged = evaluate_matrix_ray(data, entries, specs, store, workers=2, batch_size=8)
    assert [r["key"] for r in merged] == [r["key"] for r in single]
    one = ResultsStore(tmp_path / "one")
    for a, b in zip(single, merged):
        assert (a["accuracy"], a["n_correct"], a["n_images"]) == (b["accuracy"], b["n_correct"], b["n_images"])
        np.testing.assert_array_equal(one.arrays(a)["correct"], store.arrays(b)["correct"])
        assert b["shards"] == 2


def test_merge_refuses_missing_shards():
    rec = {"key": "k", "attack_seconds": 0.0, "defense_seconds": 0.0, "seconds": 0.0, "attack_cost": {}}
    with pytest.raises(RuntimeError, match="shards"):
        merge_shards([[(rec, {"correct": np.ones(2, bool)})], []], 4)
    with pytest.raises(RuntimeError, match="expected 5"):
        merge_shards([[(rec, {"correct": np.ones(2, bool)})]], 5)
