import json

import numpy as np
import pytest
import torch

from advrepair.allocator import retaining_freed_memory
from advrepair.defenses import ReverseAttack
from advrepair.engine import fused_conv_pool_available, projected_gradient, relative_tanh_surrogate, tanh_surrogate
from advrepair.errors import InputError
from advrepair.evaluation import ModelEntry, ResultsStore
from advrepair.evaluation.adaptive import AdaptiveConfig, DefenseUnderTest, run_adaptive
from advrepair.report import write_report
from advrepair.ssl import ContrastiveHead, ContrastiveTask


def _reverse_attack(model, steps=4, eps_v=0.2):
    torch.manual_seed(0)
    negatives = torch.rand(16, model.in_channels, model.input_size, model.input_size)
    task = ContrastiveTask(ContrastiveHead(model.feature_dim, 32, 16), n_views=2, negatives=negatives)
    return ReverseAttack(model, task, eps_v=eps_v, steps=steps, seed=0)


def _unrolled_gradient(defense, model, x, y):
    x = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(defense(x)), y)
    return torch.autograd.grad(loss, x)[0]


def test_checkpointing_changes_memory_not_the_gradient(random_cnn):
    defense = _reverse_attack(random_cnn).variant(surrogate=tanh_surrogate(1e-3))
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    plain = _unrolled_gradient(defense, random_cnn, x, y)
    checkpointed = _unrolled_gradient(defense.variant(checkpoint=True), random_cnn, x, y)
    assert plain.abs().sum() > 0
    torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-7)


def test_checkpointing_refuses_a_stateful_step_rule():
    from advrepair.engine import MomentumSignStep

    x = torch.rand(2, 4, requires_grad=True)
    with pytest.raises(ValueError, match="stateless"):
        projected_gradient(x, lambda z, k: (z ** 2).sum(1), center=x, eps=0.1, step_size=0.01, steps=2,
                           step_rule=MomentumSignStep(), surrogate=tanh_surrogate(), checkpoint=True)


def test_relative_surrogate_is_scale_free():
    g = torch.randn(2, 1, 4, 4)
    s = relative_tanh_surrogate(1.0)
    torch.testing.assert_close(s(g), s(g * 1e-6))
    assert not torch.allclose(tanh_surrogate(1.0)(g), tanh_surrogate(1.0)(g * 1e-6))


def test_trajectory_ends_at_the_repair_and_starts_inside_the_ball(random_cnn):
    defense = _reverse_attack(random_cnn, steps=3)
    x = torch.rand(2, 1, 28, 28)
    traj = defense.trajectory(x)
    assert traj.shape == (4, 2, 1, 28, 28)
    torch.testing.assert_close(traj[-1], defense(x))
    assert (traj - x).abs().max() <= 0.2 + 1e-6


def test_variant_keeps_the_tasks_and_changes_only_what_is_asked(random_cnn):
    defense = _reverse_attack(random_cnn, steps=4)
    same = defense.variant()
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(same(x), defense(x))
    short = defense.variant(steps=2)
    assert short.steps == 2 and short.step_size == pytest.approx(2.5 * 0.2 / 2)
    assert defense.variant(seed=None).seed is None and defense.seed == 0


def test_config_rejects_bad_budgets():
    with pytest.raises(InputError, match="eps"):
        AdaptiveConfig(eps=0)
    with pytest.raises(InputError, match="eot_draws"):
        AdaptiveConfig(eps=0.1, eot_draws=0)
    with pytest.raises(InputError, match="surrogate"):
        AdaptiveConfig(eps=0.1, surrogate="cosine")


def test_protocol_runs_every_row_records_flags_and_resumes(trained_cnn, shapes_test, tmp_path):
    data = shapes_test.subset(range(12))
    defense = _reverse_attack(trained_cnn, steps=3)
    config = AdaptiveConfig(eps=0.1, steps=2, eot_draws=2, unroll_steps=2, lambdas=(0.0, 2.0), square_queries=5,
                            randomized_draws=2)
    store = ResultsStore(tmp_path)
    entry = ModelEntry("cnn", trained_cnn, card={"weights_sha256": "abc"})
    summary = run_adaptive(data, entry, DefenseUnderTest.reverse_attack(defense, config), config, store,
                           batch_size=5, progress=False)
    rows = set(summary["rows"])
    assert {"clean", "static", "bpda", "bpda-short", "bpda-eot", "full-gradient", "defense-aware-0",
            "defense-aware-2", "square"} <= rows
    # the per-image worst case is at most every attacked row with the defense
    defended = [r for r in store.records if r.get("protocol") == "adaptive" and r.get("defense")
                and r["adaptive_row"] != "clean"]
    assert summary["worst_case"]["accuracy"] <= min(r["accuracy"] for r in defended) + 1e-12
    # scoring every iterate of the repair can only lower accuracy
    assert summary["worst_over_iterates"]["accuracy"] <= summary["worst_case"]["accuracy"] + 1e-12
    for r in defended:
        arr = store.arrays(r)
        assert arr["correct_iterates"].shape == (4, 12)
        np.testing.assert_array_equal(arr["correct_iterates"][-1], arr["correct"])
    names = {f["flag"] for f in summary["flags"]}
    assert "randomness (EOT draws)" in names
    # seeded per image: repeated calls agree, but the protocol finds the randomness by running it
    assert next(f for f in summary["flags"] if f["flag"] == "randomized defense (by running it)")["fired"]
    assert summary["randomness"]["kind"] == "input-keyed"
    assert next(f for f in summary["flags"] if f["flag"].startswith("randomness (repeated"))["fired"] is False  # seeded
    assert summary["randomized_clean"]["draws"] == 2
    assert len(summary["lambda_sweep"]) == 2
    assert summary["retains_freed_memory"] == retaining_freed_memory()
    assert summary["tap_input_gradients"] is True  # on unless ADVREPAIR_TAP_INPUT_GRADIENTS=0
    assert summary["fused_conv_pool"] is fused_conv_pool_available()
    # results.json holds the flags; a rerun finds everything and adds nothing
    saved = json.loads((tmp_path / "results.json").read_text())
    assert any(r.get("kind") == "adaptive-summary" and r["flags"] for r in saved)
    n = len(saved)
    again = run_adaptive(data, entry, DefenseUnderTest.reverse_attack(defense, config), config,
                         ResultsStore(tmp_path), batch_size=5, progress=False)
    assert again["key"] == summary["key"] and len(json.loads((tmp_path / "results.json").read_text())) == n
    report = write_report(tmp_path).read_text()
    assert "Adaptive evaluation" in report and "worst case" in report.lower()
    assert (tmp_path / "lambda_sweep_cnn.png").exists()


def test_build_derives_the_attackers_variants_from_any_defense():
    from advrepair.defenses import DifferentiableJPEG, JPEGCompression, MedianFilter, RandomResizePad

    config = AdaptiveConfig(eps=0.1)
    pad = RandomResizePad(seed=3)
    x = torch.rand(2, 1, 28, 28)
    target = DefenseUnderTest.build("rp", pad, config, probe=x)
    assert target.randomized is not None and target.randomized.seed is None and pad.seed == 3
    assert not torch.equal(target.randomized(x), target.randomized(x))  # EOT gets fresh draws
    jpeg = DefenseUnderTest.build("jpeg", JPEGCompression(75), config, probe=x)
    assert isinstance(jpeg.unrolled, DifferentiableJPEG) and jpeg.randomized is None
    median = DefenseUnderTest.build("median", MedianFilter(3), config, probe=x)
    assert median.unrolled is None and any("BPDA+EOT would equal BPDA and is skipped" in n for n in median.notes)


def test_protocol_on_a_baseline_skips_what_does_not_apply(trained_cnn, shapes_test, tmp_path):
    from advrepair.defenses import MedianFilter

    config = AdaptiveConfig(eps=0.1, steps=2, square_queries=3)
    summary = run_adaptive(shapes_test.subset(range(8)), ModelEntry("cnn", trained_cnn), DefenseUnderTest.build(
        "median", MedianFilter(3), config), config, ResultsStore(tmp_path), progress=False)
    assert "bpda-eot" not in summary["rows"] and not summary["lambda_sweep"]
    assert {"static", "bpda", "full-gradient", "square"} <= set(summary["rows"])
    # a median filter is differentiable almost everywhere: the exact gradient is not zero
    assert not next(f for f in summary["flags"] if f["flag"].endswith("(full-gradient path)"))["fired"]


def test_seeded_global_draws_repeat_per_stream_and_restore_the_callers_state():
    from advrepair.seeding import seeded_global_draws

    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    with seeded_global_draws(0, "row:a"):
        a = torch.rand(4)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's stream is untouched
    torch.rand(7)  # whatever ran in between
    with seeded_global_draws(0, "row:a"):
        assert torch.equal(torch.rand(4), a)
    with seeded_global_draws(0, "row:b"):
        assert not torch.equal(torch.rand(4), a)
    with seeded_global_draws(1, "row:a"):
        assert not torch.equal(torch.rand(4), a)


def test_fresh_draw_rows_are_the_same_on_every_run(trained_cnn, shapes_test, tmp_path):
    # torch seeds its global generator at random in every process: EOT's fresh draws, the
    # randomness probe and the randomized clean accuracy must not depend on it
    from advrepair.defenses import RandomResizePad

    config = AdaptiveConfig(eps=0.1, steps=2, eot_draws=2, square_queries=3, randomized_draws=2)
    data, entry = shapes_test.subset(range(8)), ModelEntry("cnn", trained_cnn)
    runs = []
    for global_seed, folder in ((1, tmp_path / "a"), (2, tmp_path / "b")):
        torch.manual_seed(global_seed)
        store = ResultsStore(folder)
        summary = run_adaptive(data, entry, DefenseUnderTest.build("rp", RandomResizePad(seed=3), config), config,
                               store, batch_size=5, progress=False)
        eot = next(r for r in store.records if r.get("adaptive_row") == "bpda-eot" and r.get("defense"))
        runs.append((summary, store.arrays(eot)))
    (first, first_eot), (second, second_eot) = runs
    assert "bpda-eot" in first["rows"]
    assert set(first_eot) == set(second_eot) and "correct" in first_eot
    for name in first_eot:  # per-image outcomes, iterates and whatever else the row stores
        np.testing.assert_array_equal(first_eot[name], second_eot[name])
    assert first["randomized_clean"] == second["randomized_clean"]
    assert first["randomness"] == second["randomness"]
    assert [f["detail"] for f in first["flags"]] == [f["detail"] for f in second["flags"]]
