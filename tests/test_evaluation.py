import json

import numpy as np
import pytest
import torch

from advrepair.allocator import retaining_freed_memory
from advrepair.engine import fused_conv_pool_available
from advrepair.defenses import ReverseAttack
from advrepair.evaluation import AttackSpec, ModelEntry, ResultsStore, evaluate_matrix, images_for_stderr
from advrepair.report import write_report
from advrepair.ssl import ContrastiveHead, ContrastiveTask


def _entry(model, negatives, fail_after=None):
    torch.manual_seed(0)
    task = ContrastiveTask(ContrastiveHead(model.feature_dim, 16, 8), n_views=2, negatives=negatives)
    defense = ReverseAttack(model, task, eps_v=0.2, steps=2)
    if fail_after is not None:
        calls = {"n": 0}
        original = defense.forward

        def flaky(x):
            calls["n"] += 1
            if calls["n"] > fail_after:
                raise RuntimeError("simulated crash")
            return original(x)

        defense.forward = flaky
    return ModelEntry("cnn", model, card={"weights_sha256": "abc"}, defenses={"reverse-attack": defense})


ATTACKS = [AttackSpec("clean"), AttackSpec("fgsm", {"eps": 0.1}), AttackSpec("pgd", {"eps": 0.1, "alpha": 0.05, "steps": 2})]


def test_records_carry_what_a_reader_needs(tmp_path, trained_cnn, shapes_test):
    data = shapes_test.subset(torch.arange(40))
    neg = shapes_test.tensors(torch.arange(100, 116))[0]
    records = evaluate_matrix(data, [_entry(trained_cnn, neg)], ATTACKS, ResultsStore(tmp_path), batch_size=16,
                              progress=False)
    assert len(records) == 6
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert len(on_disk) == 6
    for r in on_disk:
        for field in ("dataset", "model", "defense", "attack", "n_images", "accuracy", "stderr", "seconds"):
            assert field in r
        assert r["retains_freed_memory"] == retaining_freed_memory()
        assert r["tap_input_gradients"] is True  # on unless ADVREPAIR_TAP_INPUT_GRADIENTS=0
        assert r["fused_conv_pool"] is fused_conv_pool_available()  # on where a C compiler is
        assert r["n_images"] == 40
        p = r["accuracy"]
        assert r["stderr"] == pytest.approx((p * (1 - p) / 40) ** 0.5)
    pgd = next(r for r in on_disk if r["attack"]["name"] == "pgd" and r["defense"] is None)
    assert pgd["attack"]["steps"] == 2 and pgd["attack"]["eps"] == 0.1
    assert pgd["attack_cost"]["backward_per_image"] == 2.0
    rep = next(r for r in on_disk if r["attack"]["name"] == "pgd" and r["defense"])
    assert rep["defense"]["eps_v"] == 0.2 and rep["defense"]["steps"] == 2
    clean = next(r for r in on_disk if r["attack"]["name"] == "clean" and r["defense"] is None)
    with torch.no_grad():
        x, y = data.tensors()
        expected = (trained_cnn(x).argmax(1) == y).float().mean().item()
    assert clean["accuracy"] == pytest.approx(expected)


def test_crash_then_resume_equals_an_uninterrupted_run(tmp_path, trained_cnn, shapes_test):
    data = shapes_test.subset(torch.arange(32))
    neg = shapes_test.tensors(torch.arange(100, 116))[0]
    full = evaluate_matrix(data, [_entry(trained_cnn, neg)], ATTACKS, ResultsStore(tmp_path / "a"), batch_size=16,
                           progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate_matrix(data, [_entry(trained_cnn, neg, fail_after=3)], ATTACKS, ResultsStore(tmp_path / "b"),
                        batch_size=16, progress=False)
    partial = json.loads((tmp_path / "b" / "results.json").read_text())
    assert 0 < len(partial) < 6
    resumed = evaluate_matrix(data, [_entry(trained_cnn, neg)], ATTACKS, ResultsStore(tmp_path / "b"),
                              batch_size=16, progress=False)

    def strip(rs):
        return sorted((r["key"], r["accuracy"], r["n_correct"]) for r in rs)

    assert strip(resumed) == strip(full)
    # nothing already stored was evaluated again
    assert all(r in json.loads((tmp_path / "b" / "results.json").read_text()) for r in partial)


def test_report_writes_tables_and_figures(tmp_path, trained_cnn, shapes_test):
    data = shapes_test.subset(torch.arange(24))
    neg = shapes_test.tensors(torch.arange(100, 116))[0]
    evaluate_matrix(data, [_entry(trained_cnn, neg)], ATTACKS, ResultsStore(tmp_path), batch_size=24, progress=False)
    path = write_report(tmp_path)
    text = path.read_text()
    assert "PGD-2 Standard" in text and "PGD-2 Repaired" in text and "24 test images" in text
    assert "eps_v=0.2" in text
    for png in ("accuracy_bars.png", "ssl_loss_histogram.png", "repair_examples.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_images_for_stderr():
    assert images_for_stderr(0.025) == 400
    assert images_for_stderr(0.05) == 100


def test_results_are_strict_json_even_with_infinite_budgets(tmp_path):
    store = ResultsStore(tmp_path)
    store.add({"key": "k", "attack": {"name": "cw", "eps": float("inf")}, "accuracy": float("nan")})
    text = (tmp_path / "results.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)[0]["attack"]["eps"] == "inf"


def test_worst_case_is_at_most_every_member(tmp_path, trained_cnn, shapes_test):
    from advrepair.evaluation import worst_case

    data = shapes_test.subset(torch.arange(40))
    neg = shapes_test.tensors(torch.arange(100, 116))[0]
    store = ResultsStore(tmp_path)
    attacks = [AttackSpec("fgsm", {"eps": 0.16}), AttackSpec("pgd", {"eps": 0.16, "alpha": 0.04, "steps": 5}),
               AttackSpec("square", {"eps": 0.16, "n_queries": 50})]
    records = [r for r in evaluate_matrix(data, [_entry(trained_cnn, neg)], attacks, store, batch_size=40,
                                          progress=False) if r["defense"] is None]
    acc = worst_case(store, records)
    assert acc.n == 40
    assert all(acc.value <= r["accuracy"] for r in records)
    per_image = [store.arrays(r)["correct"] for r in records]
    assert acc.correct == int((per_image[0] & per_image[1] & per_image[2]).sum())
    assert "Per-image worst case" in write_report(tmp_path).read_text()
    with pytest.raises(ValueError, match="different images"):
        worst_case(store, records + [{**records[0], "n_images": 7}])


class _PassThrough(torch.nn.Module):
    """A defense that changes nothing: attacking through it must equal attacking the classifier."""

    def forward(self, x):
        return x * 1.0

    def params(self):
        return {"name": "pass-through"}


@pytest.mark.parametrize("through", ["bpda", "full"])
def test_attacks_through_a_defense(tmp_path, trained_cnn, shapes_test, through):
    data = shapes_test.subset(torch.arange(40))
    entry = ModelEntry("cnn", trained_cnn, card={"weights_sha256": "abc"}, defenses={"noop": _PassThrough()})
    pgd = {"eps": 0.16, "alpha": 0.04, "steps": 5}
    store = ResultsStore(tmp_path)
    records = evaluate_matrix(data, [entry], [AttackSpec("pgd", pgd), AttackSpec("pgd", pgd, through=through)],
                              store, batch_size=40, progress=False)
    static = next(r for r in records if r["defense"] is None)
    adaptive = next(r for r in records if r["attack"].get("through") == through)
    assert adaptive["defense"]["label"] == "noop" and len(records) == 3
    assert adaptive["accuracy"] == pytest.approx(static["accuracy"])
    assert "PGD-5 through" in write_report(tmp_path).read_text()


def test_through_needs_a_known_mode_and_an_attack():
    with pytest.raises(ValueError, match="through"):
        AttackSpec("pgd", {}, through="magic")
    with pytest.raises(ValueError, match="clean"):
        AttackSpec("clean", through="bpda")


class _Blur(torch.nn.Module):
    """A differentiable toy defense: a 3x3 box blur. Its exact gradient is known to autograd."""

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    def params(self):
        return {"name": "blur"}


def test_full_gradient_is_at_least_as_strong_as_bpda_on_a_differentiable_defense(tmp_path, trained_cnn, shapes_test):
    data = shapes_test
    entry = ModelEntry("cnn", trained_cnn, card={"weights_sha256": "abc"}, defenses={"blur": _Blur()})
    pgd = {"eps": 0.16, "alpha": 0.02, "steps": 20}
    records = evaluate_matrix(data, [entry], [AttackSpec("pgd", pgd, through="full"),
                                              AttackSpec("pgd", pgd, through="bpda")],
                              ResultsStore(tmp_path), batch_size=200, progress=False)
    full = next(r for r in records if r["attack"]["through"] == "full")
    bpda = next(r for r in records if r["attack"]["through"] == "bpda")
    assert full["accuracy"] <= bpda["accuracy"], (full["accuracy"], bpda["accuracy"])


def test_records_come_back_in_cell_order_and_equal_defenses_share_one_record(tmp_path, trained_cnn, shapes_test):
    # records are keyed by content: a defense equal to another under a new label is the same record
    # (stored with the first label), so callers map records to their defenses by position
    from advrepair.defenses.median import MedianFilter

    data = shapes_test.subset(range(8))
    store = ResultsStore(tmp_path, resume=True)
    entry = ModelEntry("cnn", trained_cnn, defenses={"median": MedianFilter(3), "median-again": MedianFilter(3),
                                                     "wide": MedianFilter(5)})
    records = evaluate_matrix(data, [entry], [AttackSpec("clean")], store, batch_size=8, progress=False)
    assert len(records) == 4 and records[0]["defense"] is None
    assert records[1]["key"] == records[2]["key"] != records[3]["key"]
    assert records[2]["defense"]["label"] == "median" and records[3]["defense"]["label"] == "wide"


def test_an_unseeded_defense_gives_the_same_records_on_every_run(tmp_path, trained_cnn, shapes_test):
    # torch seeds its global generator at random per process; an evaluation seeds the draws of
    # a defense built with seed=None per batch, from the cell
    from advrepair.defenses import RandomResizePad

    data = shapes_test.subset(range(10))
    arrays = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        store = ResultsStore(tmp_path / str(global_seed))
        entry = ModelEntry("cnn", trained_cnn, defenses={"rp": RandomResizePad(seed=None)})
        records = evaluate_matrix(data, [entry], [AttackSpec("fgsm", {"eps": 0.1})], store, batch_size=4,
                                  progress=False)
        arrays.append([store.arrays(r) for r in records])
    for first, second in zip(*arrays):
        assert set(first) == set(second)
        for name in first:
            np.testing.assert_array_equal(first[name], second[name])
    defense = RandomResizePad(seed=None)  # still random between calls within a run
    x = data.tensors()[0]
    assert not torch.equal(defense(x), defense(x))
