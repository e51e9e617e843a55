"""No result is ever lost: concurrent writers merge, writes are durable, torn state is
recomputed, a full disk leaves the old results intact. The key cases run as real processes."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from advrepair.apps.cli import main
from advrepair.durable import FolderLock, write_text_durably
from advrepair.errors import StorageError
from advrepair.evaluation import ResultsStore
from fake_data import write_fashion_mnist
from test_resume import _comparable, _images_seen, _run

SRC = str(Path(__file__).resolve().parent.parent / "src")


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=200, n_test=60)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, fake_fmnist):
    model = tmp_path_factory.mktemp("models") / "cnn"
    assert main(["train", "classifier", "--out", str(model), "--epochs", "1", "--data-root", str(fake_fmnist),
                 "--device", "cpu", "--no-progress"]) == 0
    return model


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "advrepair.apps.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _eval_args(model_dir, fake_fmnist, out, *attacks):
    args = ["eval", "--model-dir", str(model_dir), "--defense", "none", "--n-images", "20", "--batch-size", "5",
            "--out", str(out), "--data-root", str(fake_fmnist), "--device", "cpu", "--no-progress"]
    for a in attacks:
        args += ["--attack", a]
    return args


def test_two_stores_on_one_folder_keep_each_others_records(tmp_path):
    first, second = ResultsStore(tmp_path), ResultsStore(tmp_path)  # both read an empty folder
    first.add({"key": "a", "accuracy": 0.5}, {"correct": np.array([True, False])})
    second.add({"key": "b", "accuracy": 0.25})
    first.add({"key": "c", "accuracy": 1.0})
    second.add({"key": "a", "accuracy": 0.5}, {"correct": np.array([True, False])})  # the same cell again
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["key"] for r in on_disk) == ["a", "b", "c"]
    assert ResultsStore(tmp_path).arrays(ResultsStore(tmp_path).get("a"))["correct"].tolist() == [True, False]


def test_two_concurrent_cli_runs_into_one_folder_keep_every_record(tmp_path, model_dir, fake_fmnist):
    out = tmp_path / "shared"
    one = _cli(*_eval_args(model_dir, fake_fmnist, out, "clean", "fgsm:eps=0.1", "pgd:eps=0.1,alpha=0.05,steps=2"))
    time.sleep(0.5)
    two = _cli(*_eval_args(model_dir, fake_fmnist, out, "pgd:eps=0.05,alpha=0.02,steps=3", "bim:eps=0.1,steps=2",
                           "mifgsm:eps=0.1,steps=2"))
    for proc in (one, two):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    store = ResultsStore(out)
    assert len(store.records) == 6 and len({r["key"] for r in store.records}) == 6
    budgets = sorted((r["attack"]["name"], r["attack"].get("eps", 0)) for r in store.records)
    assert budgets == [("bim", 0.1), ("clean", 0), ("fgsm", 0.1), ("mifgsm", 0.1), ("pgd", 0.05), ("pgd", 0.1)]
    for r in store.records:  # every record's per-image arrays are there and match their checksum
        assert store.arrays(r)["correct"].shape == (20,)
        assert r["accuracy"] == pytest.approx(store.arrays(r)["correct"].mean())


def test_a_lock_held_by_a_process_killed_with_sigkill_does_not_block_a_rerun(tmp_path, model_dir, fake_fmnist):
    out = tmp_path / "locked"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from advrepair.durable import FolderLock\n"
         "with FolderLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(600)", str(out)],
        env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(StorageError, match=f"locked by PID {holder.pid} on host"):
        with FolderLock(out, timeout=0.3):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    rerun = _cli(*_eval_args(model_dir, fake_fmnist, out, "clean"))
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert len(ResultsStore(out).records) == 1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    assert _run(folder / "out", folder / "log", 0.0).wait(timeout=300) == 0
    return _comparable(folder / "out")


@pytest.mark.parametrize("torn", ["arrays", "meta"])
def test_a_truncated_state_file_is_recomputed_not_trusted(tmp_path, uninterrupted, torn):
    killed = tmp_path / "killed"
    proc = _run(killed, tmp_path / "killed.log", 0.3)
    deadline = time.time() + 240
    while time.time() < deadline:
        metas = list((killed / "partial").glob("*.json")) if (killed / "partial").exists() else []
        try:
            if metas and json.loads(metas[0].read_text())["batches_done"] >= 2:
                break
        except ValueError:
            pass  # read between the writer's truncate and write of a temporary file cannot happen; retry anyway
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (meta,) = (killed / "partial").glob("*.json")
    target = meta if torn == "meta" else meta.with_suffix(".npz")
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    assert _run(killed, tmp_path / "resumed.log", 0.0).wait(timeout=300) == 0
    assert _images_seen(tmp_path / "resumed.log") == 40  # nothing restored from the torn state
    assert _comparable(killed) == uninterrupted


def test_a_truncated_record_array_is_recomputed_by_the_rerun(tmp_path, model_dir, fake_fmnist):
    out = tmp_path / "torn"
    args = _eval_args(model_dir, fake_fmnist, out, "clean", "fgsm:eps=0.1")
    assert main(args) == 0
    before = {r["key"]: ResultsStore(out).arrays(r)["correct"].tolist() for r in ResultsStore(out).records}
    torn = next((out / "arrays").glob("*.npz"))
    torn.write_bytes(torn.read_bytes()[:40])
    with pytest.warns(RuntimeWarning, match="does not match its checksum"):
        assert len(ResultsStore(out).records) == 1  # the torn record is not trusted
    with pytest.warns(RuntimeWarning):
        assert main(args) == 0
    after = ResultsStore(out)
    assert {r["key"]: after.arrays(r)["correct"].tolist() for r in after.records} == before


def test_a_full_disk_gives_a_clear_error_and_keeps_the_previous_results(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    store.add({"key": "kept", "accuracy": 0.5})
    previous = (tmp_path / "results.json").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("advrepair.durable.os.fsync", full)
    with pytest.raises(StorageError, match="no space left on the device.*unchanged"):
        store.add({"key": "lost", "accuracy": 0.1}, {"correct": np.array([True])})
    assert (tmp_path / "results.json").read_bytes() == previous
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary file left behind


def test_the_cli_reports_a_full_disk_in_one_line(tmp_path, model_dir, fake_fmnist, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("advrepair.durable.os.fsync", full)
    assert main(_eval_args(model_dir, fake_fmnist, tmp_path / "full", "clean")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advrepair: error: cannot write") and "no space left" in err[0]


def test_writes_are_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr("advrepair.durable.os.fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr("advrepair.durable.os.replace", lambda a, b: (calls.append("rename"), real_replace(a, b))[1])
    write_text_durably(tmp_path / "x.json", "[]")
    assert calls == ["fsync", "rename", "fsync"]
    assert (tmp_path / "x.json").read_text() == "[]"


@pytest.mark.parametrize("out", ["file/sub", "file"])
def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, model_dir, fake_fmnist, capsys, out):
    (tmp_path / "file").write_text("not a folder")
    assert main(_eval_args(model_dir, fake_fmnist, tmp_path / out, "clean")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advrepair: error:") and str(tmp_path / "file") in err[0]
