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


class _PoisonedDefense(torch.nn.Module):
    """Identity that logs how many images it sees and fails on one image while a flag file exists."""

    def __init__(self, poison: torch.Tensor, flag: str, log: str) -> None:
        super().__init__()
        self.poison, self.flag, self.log = poison, flag, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os

        if os.path.exists(self.flag) and any(torch.equal(row, self.poison) for row in x):
            raise RuntimeError("poisoned image")
        with open(self.log, "a") as f:
            f.write(f"{x.shape[0]}\n")
        return x

    def params(self) -> dict:
        return {"name": "poisoned-identity"}


def test_a_failed_ray_shard_resumes_without_redoing_saved_batches(trained_cnn, shapes_test, tmp_path):
    import sys

    from advrepair.evaluation.distributed import evaluate_matrix_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests/
    data = shapes_test.subset(range(30))
    flag, log = tmp_path / "flag", tmp_path / "seen.log"
    flag.write_text("fail")
    defense = _PoisonedDefense(data.subset([20]).tensors()[0][0], str(flag), str(log))
    entries = [ModelEntry("cnn", trained_cnn, card={"weights_sha256": "w"}, defenses={"poisoned": defense})]
    specs = [AttackSpec("clean"), AttackSpec("pgd", {"eps": 0.1, "alpha": 0.03, "steps": 2})]
    store = ResultsStore(tmp_path / "ray")
    # shards [0, 15) and [15, 30); batches of 4: the second shard fails on its second batch (19-22)
    with pytest.raises(RuntimeError, match=r"1 of 2 shards failed: images \[15, 30\).*poisoned image.*rerun"):
        evaluate_matrix_ray(data, entries, specs, store, workers=2, batch_size=4)
    assert store.records == [] and (tmp_path / "ray" / "shards").exists()
    flag.unlink()
    log.unlink()
    merged = evaluate_matrix_ray(data, entries, specs, ResultsStore(tmp_path / "ray"), workers=2, batch_size=4)
    # only the failed shard's unsaved images: clean from image 19 on (11), PGD on all of its 15
    assert sum(int(n) for n in log.read_text().split()) == 11 + 15
    assert not (tmp_path / "ray" / "shards").exists()
    single = evaluate_matrix(data, entries, specs, ResultsStore(tmp_path / "one"), batch_size=4, progress=False)
    one, two = ResultsStore(tmp_path / "one"), ResultsStore(tmp_path / "ray")
    assert [r["key"] for r in merged] == [r["key"] for r in single]
    for a, b in zip(single, merged):
        np.testing.assert_array_equal(one.arrays(a)["correct"], two.arrays(b)["correct"])


def test_adaptive_protocol_on_two_ray_workers_equals_one_process(trained_cnn, shapes_test, tmp_path):
    from advrepair.defenses import MedianFilter
    from advrepair.evaluation.adaptive import AdaptiveConfig, DefenseUnderTest, run_adaptive
    from advrepair.evaluation.distributed import evaluate_adaptive_ray

    data = shapes_test.subset(range(12))
    config = AdaptiveConfig(eps=0.1, steps=2, square_queries=3)
    entry = ModelEntry("cnn", trained_cnn, card={"weights_sha256": "w"})

    def target():
        return DefenseUnderTest.build("median", MedianFilter(3), config)

    one = ResultsStore(tmp_path / "one")
    single = run_adaptive(data, entry, target(), config, one, batch_size=4, progress=False)
    two = ResultsStore(tmp_path / "ray")
    sharded = evaluate_adaptive_ray(data, entry, target(), config, two, workers=2, batch_size=4, progress=False)
    assert sharded["key"] == single["key"] and sharded["rows"] == single["rows"]
    assert sharded["worst_case"] == single["worst_case"]
    assert sharded["worst_over_iterates"] == single["worst_over_iterates"]
    for keys in single["rows"].values():
        for key in keys:
            np.testing.assert_array_equal(one.arrays(one.get(key))["correct"], two.arrays(two.get(key))["correct"])
            assert two.get(key)["shards"] == 2
    assert not (tmp_path / "ray" / "shards").exists()
