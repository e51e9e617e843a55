"""Interrupted evaluations resume after the last finished batch and give the same results."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from advrepair.evaluation import ResultsStore
from advrepair.evaluation.partial import PartialCells

SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from torch import nn
    sys.path[:0] = {paths!r}
    from conftest import make_shapes
    from advrepair.evaluation import AttackSpec, ModelEntry, ResultsStore, evaluate_matrix
    from advrepair.models import SmallCNN

    class SlowNoisyDefense(nn.Module):
        def __init__(self, log):
            super().__init__()
            self.log = log
        def forward(self, x):
            with open(self.log, "a") as f:
                f.write(f"{{x.shape[0]}}\\n")
            time.sleep({delay})
            return (x + 0.05 * torch.sin(50 * x)).clamp(0, 1)
        def params(self):
            return {{"name": "slow-noisy"}}

    torch.manual_seed(0)
    model = SmallCNN(num_classes=4, width=8, feature_dim=32).eval()
    data = make_shapes(40, seed=3)
    entry = ModelEntry("cnn", model, defenses={{"slow": SlowNoisyDefense(sys.argv[2])}})
    evaluate_matrix(data, [entry], [AttackSpec("pgd", {{"eps": 0.1, "alpha": 0.03, "steps": 3}})],
                    ResultsStore(sys.argv[1]), batch_size=5, progress=False)
""")


def _run(out: Path, log: Path, delay: float) -> subprocess.Popen:
    here = Path(__file__).parent
    code = SCRIPT.format(paths=[str(here.parent / "src"), str(here)], delay=delay)
    return subprocess.Popen([sys.executable, "-c", code, str(out), str(log)])


def _images_seen(log: Path) -> int:
    return sum(int(line) for line in log.read_text().split()) if log.exists() else 0


def _comparable(out: Path) -> list[tuple]:
    store = ResultsStore(out)
    rows = []
    for r in sorted(store.records, key=lambda r: r["key"]):
        rows.append((r["key"], r["accuracy"], store.arrays(r)["correct"].tolist()))
    return rows


def test_kill_9_mid_record_then_rerun_equals_an_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _run(whole, tmp_path / "whole.log", 0.0).wait(timeout=300) == 0
    proc = _run(killed, tmp_path / "killed.log", 0.4)
    deadline = time.time() + 240
    meta = None
    while time.time() < deadline:
        metas = list((killed / "partial").glob("*.json")) if (killed / "partial").exists() else []
        if metas and json.loads(metas[0].read_text())["batches_done"] >= 3:
            meta = json.loads(metas[0].read_text())
            break
        time.sleep(0.05)
    assert meta is not None, "the run never saved a partial state"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists() or json.loads((killed / "results.json").read_text()) == []
    (saved_meta,) = (killed / "partial").glob("*.json")
    batches_saved = json.loads(saved_meta.read_text())["batches_done"]
    assert _run(killed, tmp_path / "resumed.log", 0.0).wait(timeout=300) == 0
    # the resumed run evaluates exactly the images the killed run had not saved
    assert _images_seen(tmp_path / "resumed.log") == 40 - 5 * batches_saved
    assert not list((killed / "partial").glob("*"))  # removed once the records are stored
    assert _comparable(killed) == _comparable(whole)


def test_a_mismatched_or_torn_partial_state_is_ignored(tmp_path):
    cells = PartialCells(tmp_path, ["a", "b"], 5, 40)
    groups = {"correct": {None: [torch.tensor([True, False])]}}
    seconds = {None: 1.5}
    cells.save(1, groups, seconds, None)
    fresh = {"correct": {None: []}}
    assert cells.restore(fresh, {None: 0.0}, None) == 1 and fresh["correct"][None][0].tolist() == [True, False]
    assert PartialCells(tmp_path, ["a", "b"], 10, 40).restore({"correct": {None: []}}, {None: 0.0}, None) == 0
    with np.load(cells.arrays_path) as f:  # arrays from another save than the meta: refused
        np.savez(cells.arrays_path, **{k: ~f[k] for k in f.files})
    assert cells.restore({"correct": {None: []}}, {None: 0.0}, None) == 0


def test_training_interrupted_after_an_epoch_resumes_to_the_same_weights(tmp_path):
    from conftest import make_shapes

    from advrepair.models import SmallCNN
    from advrepair.training import ClassifierRecipe, train_classifier
    from advrepair.training.checkpointing import EpochCheckpoint

    data = make_shapes(96, seed=5)
    recipe = ClassifierRecipe(epochs=3, batch_size=32, lr=3e-3, adversarial=True, eps=0.1, alpha=0.05, steps=1)

    def fresh():
        torch.manual_seed(0)
        return SmallCNN(num_classes=4, width=4, feature_dim=16)

    whole = fresh()
    history = train_classifier(whole, data, recipe, seed=1, progress=False)

    class Crash(Exception):
        pass

    crashing, calls = fresh(), {"n": 0}
    original = crashing.forward

    def forward_then_crash(x):
        calls["n"] += 1
        if calls["n"] > 3 * 2 + 1:  # epoch 1 = 3 batches x (attack + step) forwards... crash in epoch 2
            raise Crash
        return original(x)

    crashing.forward = forward_then_crash
    ckpt = EpochCheckpoint(tmp_path / "state", {"recipe": recipe.to_dict(), "seed": 1})
    try:
        train_classifier(crashing, data, recipe, seed=1, progress=False, resume=ckpt)
    except Crash:
        pass
    assert json.loads(ckpt.meta_path.read_text())["epochs_done"] >= 1
    resumed = fresh()
    resumed_history = train_classifier(resumed, data, recipe, seed=1, progress=False, resume=ckpt)
    assert resumed_history == history
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not ckpt.meta_path.exists()  # cleared once training finished
    # a state saved under another identity is not used
    model = fresh()
    params, opt = list(model.parameters()), torch.optim.Adam(model.parameters())
    ckpt.save(1, [], params, opt, torch.Generator())
    other = EpochCheckpoint(tmp_path / "state", {"recipe": recipe.to_dict(), "seed": 2})
    assert other.restore(params, opt, torch.Generator()) is None
    assert ckpt.restore(params, opt, torch.Generator()) == (1, [])


class _CrashOnCall(torch.nn.Module):
    """The identity, which raises on its ``crash_at``-th call while armed (a crash mid-row)."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.crash_at, self.calls, self.armed = crash_at, 0, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.armed and self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        return x

    def params(self) -> dict:
        return {"name": "identity"}


def test_fresh_draws_resumed_mid_row_equal_an_uninterrupted_row(trained_cnn, shapes_test, tmp_path):
    # an attack on a truly random defense (seed=None: torch's global generator) gives the same
    # images after a crash and a resume as without one: its draws are seeded per batch
    from advrepair.attacks import PGD
    from advrepair.defenses import RandomResizePad
    from advrepair.evaluation import ModelEntry, evaluate_attack

    data = shapes_test.subset(range(12))
    attack = PGD(torch.nn.Sequential(RandomResizePad(seed=None), trained_cnn), eps=0.1, alpha=0.05, steps=2)

    def row(folder: Path, scorer: _CrashOnCall) -> dict:
        entry = ModelEntry("cnn", trained_cnn, defenses={"identity": scorer})
        return evaluate_attack(data, entry, attack, ResultsStore(folder), row="eot", batch_size=4, progress=False,
                               fresh_draws=(0, "row:eot"))

    whole = row(tmp_path / "whole", _CrashOnCall(crash_at=0))
    crashing = _CrashOnCall(crash_at=3)  # scoring the third batch
    with pytest.raises(RuntimeError, match="simulated crash"):
        row(tmp_path / "resumed", crashing)
    crashing.armed = False
    torch.rand(5)  # the global generator moved on meanwhile, as it would in a new process
    resumed = row(tmp_path / "resumed", crashing)
    assert crashing.calls == 3 + 1  # the rerun computed the third batch only
    for cell in whole:
        a = ResultsStore(tmp_path / "whole").arrays(whole[cell])
        b = ResultsStore(tmp_path / "resumed").arrays(resumed[cell])
        assert set(a) == set(b)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
