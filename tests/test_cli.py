"""The command line and the demo, end to end on generated Fashion-MNIST-format files."""
import json
from pathlib import Path

import pytest

from advrepair.apps.cli import main
from fake_data import write_fashion_mnist


@pytest.fixture(scope="module")
def fake_fmnist(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory, fake_fmnist):
    model = tmp_path_factory.mktemp("models") / "cnn"
    common = ["--data-root", str(fake_fmnist), "--device", "cpu", "--no-progress"]
    assert main(["train", "classifier", "--out", str(model), "--epochs", "1", *common]) == 0
    assert main(["train", "ssl", "--model-dir", str(model), "--epochs", "1", *common]) == 0
    return model


def test_train_eval_report_and_resume(tmp_path, fake_fmnist, trained_dir, capsys):
    common = ["--data-root", str(fake_fmnist), "--device", "cpu", "--no-progress"]
    model = trained_dir
    card = json.loads((model / "classifier.json").read_text())
    assert card["recipe"]["epochs"] == 1 and card["metrics"][1]["attack"]["steps"] == 20
    assert (model / "ssl-contrastive.safetensors").exists()
    out = tmp_path / "eval"
    args = ["eval", "--model-dir", str(model), "--attack", "clean", "--attack", "pgd:eps=0.1,alpha=0.05,steps=2",
            "--n-images", "20", "--defense", "reverse-attack", "--reverse-steps", "2", "--out", str(out), *common]
    assert main(args) == 0
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 4 and {r["n_images"] for r in records} == {20}
    assert records[-1]["defense"]["eps_v"] == pytest.approx(0.2)
    assert main(args) == 0  # resumes: nothing new to do
    assert json.loads((out / "results.json").read_text()) == records
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").exists() and (out / "ssl_loss_histogram.png").exists()
    transfer = tmp_path / "transfer"
    assert main(["eval", "--model-dir", str(model), "--transfer-from", str(model), "--attack", "fgsm:eps=0.1",
                 "--defense", "none", "--n-images", "20", "--out", str(transfer), *common]) == 0
    (record,) = json.loads((transfer / "results.json").read_text())
    assert record["attack"]["name"] == "transfer" and record["attack"]["attack"]["name"] == "fgsm"
    fgsm = next(r for r in records if r["attack"]["name"] == "pgd" and r["defense"] is None)
    assert 0 <= record["accuracy"] <= 1 and fgsm["n_images"] == record["n_images"]
    assert "FGSM from cnn" in (transfer / "report.md").read_text()


def test_demo_runs_end_to_end_on_zoo_models_and_small_data(tmp_path, fake_fmnist, capsys):
    from advrepair.apps.demo import DemoConfig, run_demo
    from advrepair.evaluation.adaptive import AdaptiveConfig

    cfg = DemoConfig(out=tmp_path / "report", data_root=str(fake_fmnist), n_images=20, reverse_steps=2,
                     progress=False, adaptive=AdaptiveConfig(eps=0.1, steps=1, eot_draws=2, unroll_steps=1,
                                                             lambdas=(0.0,), square_queries=2), adaptive_images=6)
    report = run_demo(cfg)
    printed = capsys.readouterr()
    assert "[1/2] attack x model matrix: about" in printed.err + printed.out  # the expected remaining time
    assert "[2/2] adaptive protocol on fmnist-cnn-pgd: about" in printed.err + printed.out
    records = json.loads((tmp_path / "report" / "results.json").read_text())
    summaries = [r for r in records if r.get("kind") == "adaptive-summary"]
    assert {s["model"] for s in summaries} == {"fmnist-cnn-pgd"}
    assert "Adaptive evaluation" in report.read_text()
    matrix = [r for r in records if "protocol" not in r and "kind" not in r]
    assert len(matrix) == 12  # 2 models x 3 attacks x (standard, repaired)
    assert {r["attack"]["name"] for r in matrix} == {"clean", "fgsm", "pgd"}
    assert "FGSM Repaired" in report.read_text()
    run_demo(cfg)  # a second run finds every record and recomputes nothing
    assert json.loads((tmp_path / "report" / "results.json").read_text()) == records


def test_eval_through_the_defense_with_bpda(tmp_path, fake_fmnist, trained_dir):
    out = tmp_path / "adaptive"
    args = ["eval", "--model-dir", str(trained_dir), "--attack", "pgd:eps=0.1,alpha=0.05,steps=2", "--through", "bpda",
            "--n-images", "20", "--defense", "reverse-attack", "--reverse-steps", "2", "--out", str(out),
            "--data-root", str(fake_fmnist),
            "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    records = json.loads((out / "results.json").read_text())
    adaptive = [r for r in records if r["attack"].get("through") == "bpda"]
    assert len(records) == 3 and len(adaptive) == 1 and adaptive[0]["defense"]["name"] == "reverse-attack"
    assert "PGD-2 through BPDA" in (out / "report.md").read_text()


def test_eval_adaptive_runs_the_protocol_and_reports_it(tmp_path, fake_fmnist, trained_dir, capsys):
    out = tmp_path / "adaptive"
    args = ["eval", "--model-dir", str(trained_dir), "--attack", "pgd:eps=0.1,alpha=0.05,steps=2", "--adaptive",
            "--adaptive-steps", "2", "--eot-draws", "2", "--unroll-steps", "1", "--lambdas", "0,2",
            "--square-queries", "3", "--n-images", "10", "--defense", "reverse-attack", "--reverse-steps", "2", "--out", str(out),
            "--data-root", str(fake_fmnist), "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    records = json.loads((out / "results.json").read_text())
    summary = next(r for r in records if r.get("kind") == "adaptive-summary")
    assert summary["config"]["eps"] == 0.1 and summary["n_images"] == 10
    assert "randomness" in capsys.readouterr().out  # flags are printed
    report = (out / "report.md").read_text()
    assert "Adaptive evaluation" in report and "BPDA + EOT" in report and "Per-image worst case" in report
    assert main([*args[:-1], "--no-progress", "--lambdas", "x"]) == 2


def test_eval_a_baseline_defense_needs_no_training_set(tmp_path, fake_fmnist, trained_dir):
    out = tmp_path / "jpeg"
    args = ["eval", "--model-dir", str(trained_dir), "--attack", "fgsm:eps=0.1", "--defense", "jpeg",
            "--n-images", "10", "--out", str(out), "--data-root", str(fake_fmnist), "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    records = json.loads((out / "results.json").read_text())
    assert {(r.get("defense") or {}).get("name") for r in records} == {None, "jpeg"}


def test_multi_task_repair_from_the_command_line(tmp_path, fake_fmnist, trained_dir):
    common = ["--data-root", str(fake_fmnist), "--device", "cpu", "--no-progress"]
    for task in ("rotation", "inpainting"):
        assert main(["train", "ssl", "--task", task, "--model-dir", str(trained_dir), "--epochs", "1",
                     "--train-subset", "256", *common]) == 0
        card = json.loads((trained_dir / f"ssl-{task}.json").read_text())
        assert card["kind"] == f"ssl-{task}" and card["metrics"][0]["metric"] == "mean_ssl_loss_clean"
    out = tmp_path / "multi"
    args = ["eval", "--model-dir", str(trained_dir), "--attack", "fgsm:eps=0.1", "--n-images", "10",
            "--defense", "reverse-attack", "--reverse-steps", "2", "--ssl-tasks", "contrastive:1,rotation:50,inpainting:10",
            "--out", str(out), *common]
    assert main(args) == 0
    defended = next(r for r in json.loads((out / "results.json").read_text()) if r.get("defense"))
    assert [(t["task"], t["weight"]) for t in defended["defense"]["tasks"]] == [
        ("contrastive", 1.0), ("rotation", 50.0), ("inpainting", 10.0)]
    assert main([*args[:-len(common) - 2], "--ssl-tasks", "jigsaw:1", "--out", str(out), *common]) == 2


def test_train_a_purifier_and_evaluate_nrp(tmp_path, fake_fmnist, trained_dir):
    common = ["--data-root", str(fake_fmnist), "--device", "cpu", "--no-progress"]
    out = tmp_path / "nrp"
    assert main(["train", "purifier", "--feature-model-dir", str(trained_dir), "--out", str(out), "--epochs", "1",
                 "--train-subset", "32", "--width", "4", "--ssp-steps", "2", *common]) == 0
    card = json.loads((out / "purifier.json").read_text())
    assert card["kind"] == "purifier" and card["recipe"]["ssp_steps"] == 2
    args = ["eval", "--model-dir", str(trained_dir), "--attack", "fgsm:eps=0.1", "--defense", "nrp", "--purifier",
            str(out / "purifier"), "--nrp-dynamic", "--n-images", "10", "--out", str(tmp_path / "ev"), *common]
    assert main(args) == 0
    records = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert any((r.get("defense") or {}).get("dynamic") is True for r in records)
    assert main(args[:5] + ["--defense", "nrp", "--out", str(tmp_path / "x"), *common]) == 2  # no --purifier


def test_eval_ride_from_the_command_line(tmp_path, fake_fmnist, trained_dir):
    out = tmp_path / "ride"
    assert main(["eval", "--model-dir", str(trained_dir), "--attack", "fgsm:eps=0.1", "--defense", "ride",
                 "--ride-iterations", "2", "--n-images", "6", "--out", str(out), "--data-root", str(fake_fmnist),
                 "--device", "cpu", "--no-progress"]) == 0
    records = json.loads((out / "results.json").read_text())
    assert {(r.get("defense") or {}).get("name") for r in records} == {None, "ride"}


def test_readme_python_example_runs_as_written(fake_fmnist, monkeypatch, capsys):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'zoo.load("fmnist-cnn-pgd")' in code, "the README example changed; update this test"
    monkeypatch.setenv("ADVREPAIR_FASHION_MNIST", str(fake_fmnist))  # the zoo models, on small data
    code = code.replace("steps=40)", "steps=3)").replace(", 200)", ", 20)")
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "standard:" in out and "repaired:" in out


def test_missing_dataset_says_how_to_get_it(tmp_path, capsys):
    code = main(["eval", "--model-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--data-root",
                 str(tmp_path / "nowhere"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "dataset-fashion-mnist" in err and "train-images-idx3-ubyte" in err


def test_bad_attack_name_fails_before_any_work(tmp_path, capsys):
    code = main(["eval", "--model-dir", str(tmp_path), "--attack", "deepfool:eps=0.1", "--out", str(tmp_path / "o"),
                 "--no-progress"])
    assert code == 2
    assert "unknown attack 'deepfool'" in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(tmp_path, fake_fmnist, capsys):
    code = main(["eval", "--model-dir", str(tmp_path / "nomodel"), "--out", str(tmp_path / "o"),
                 "--data-root", str(fake_fmnist), "--no-progress"])
    assert code == 2
    assert "no weights at" in capsys.readouterr().err


def test_bf16_evaluation_gets_its_own_records(tmp_path, fake_fmnist, trained_dir):
    common = ["--data-root", str(fake_fmnist), "--device", "cpu", "--no-progress", "--defense", "none"]
    out = tmp_path / "prec"
    base = ["eval", "--model-dir", str(trained_dir), "--attack", "fgsm:eps=0.1", "--n-images", "10", "--out", str(out)]
    assert main([*base, *common]) == 0
    assert main([*base, "--precision", "bf16", "--channels-last", *common]) == 0
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 2 and len({r["model_weights"] for r in records}) == 2
    assert main([*base, "--precision", "fp16", *common]) == 2  # fp16 needs CUDA


def test_eval_config_file_runs_the_same_request_as_the_flags(tmp_path, fake_fmnist, trained_dir):
    flags = ["--model-dir", str(trained_dir), "--attack", "clean", "--attack", "fgsm:eps=0.1", "--defense", "jpeg",
             "--n-images", "12", "--data-root", str(fake_fmnist), "--device", "cpu", "--no-progress"]
    assert main(["eval", *flags, "--out", str(tmp_path / "flags")]) == 0
    (tmp_path / "run.toml").write_text(
        f'model-dir = ["{trained_dir}"]\nattack = ["clean", "fgsm:eps=0.1"]\ndefense = ["jpeg"]\n'
        f'n-images = 12\ndata-root = "{fake_fmnist}"\ndevice = "cpu"\nno-progress = true\n')
    assert main(["eval", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "toml")]) == 0
    strip = lambda p: [{k: v for k, v in r.items() if not k.endswith("seconds")}  # noqa: E731
                       for r in json.loads((p / "results.json").read_text())]
    assert strip(tmp_path / "toml") == strip(tmp_path / "flags")
    (tmp_path / "bad.toml").write_text("n_imagez = 3\n")
    assert main(["eval", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "x")]) == 2


def test_audit_takes_model_directories_for_the_classifier_and_its_reverse_attack(tmp_path, fake_fmnist, trained_dir,
                                                                               monkeypatch):
    import dataclasses

    from advrepair.auditing import AuditReport
    from advrepair.auditing.presets import PRESETS, AuditPreset

    # the command's wiring is under test, not the budgets: every row at a fraction of them
    quick = PRESETS[AuditPreset.QUICK]
    monkeypatch.setitem(PRESETS, AuditPreset.QUICK, dataclasses.replace(quick, steps=3, square_queries=20))
    out = tmp_path / "audit"
    argv = ["audit", "--classifier", str(trained_dir), "--defense", str(trained_dir), "--eps", "0.1",
            "--reverse-steps", "2", "--n-images", "4", "--out", str(out), "--data-root", str(fake_fmnist),
            "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    report = AuditReport.from_json((out / "audit.json").read_text())
    assert report.defense["name"] == "reverse-attack" and report.defense["steps"] == 2
    assert report.randomness["kind"] == "input-keyed" and any(r.name.startswith("bpda-eot") for r in report.rows)
    assert any(r.name.startswith("defense-aware") for r in report.rows)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*argv[:3], "--defense", str(empty), *argv[5:]]) == 2
    cascade = tmp_path / "cascade"
    assert main([*argv[:-7], "--out", str(cascade), *argv[-5:], "--cascade"]) == 0
    cascaded = AuditReport.from_json((cascade / "audit.json").read_text())
    # not compared with the full audit: this defense is randomized, so its EOT rows draw afresh
    assert cascaded.cascade and "Cascade:" in (cascade / "audit.md").read_text()


def test_flags_and_a_toml_run_file_build_the_same_request(tmp_path, monkeypatch):
    from advrepair.apps import commands

    seen = []
    monkeypatch.setattr(commands, "evaluate", lambda request: seen.append(request))
    flags = ["eval", "--model-dir", "m1", "--model-dir", "m2", "--attack", "clean", "--attack", "pgd:eps=0.1",
             "--defense", "jpeg", "--n-images", "30", "--out", str(tmp_path / "o"), "--device", "cpu"]
    (tmp_path / "run.toml").write_text(f'model-dir = ["m1", "m2"]\nattack = ["clean", "pgd:eps=0.1"]\n'
                                       f'defense = ["jpeg"]\nn-images = 30\nout = "{tmp_path / "o"}"\n')
    assert main(flags) == 0
    assert main(["eval", "--config", str(tmp_path / "run.toml"), "--device", "cpu"]) == 0
    assert isinstance(seen[0], commands.EvalRequest) and seen[0] == seen[1]
    assert seen[0].model_dirs == (Path("m1"), Path("m2")) and seen[0].defenses == ("jpeg",)
