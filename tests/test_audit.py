"""advrepair.audit: any classifier, any defense, the whole adaptive protocol in one call."""
import hashlib
import json
import textwrap

import pytest
import torch
from torch import nn

import advrepair
from advrepair.adaptive.contract import capabilities_of, describe_defense
from advrepair.adaptive.randomness import NudgedDraws, Randomness, detect_randomness, fresh_draws
from advrepair.auditing import PRESETS, AuditPreset, AuditReport, comparison_table
from advrepair.apps.cli import main
from advrepair.errors import InputError
from fake_data import write_fashion_mnist

pytestmark = pytest.mark.usefixtures("one_thread")


class Blur(nn.Module):
    """A user's deterministic defense with no contract pieces at all (no params, no seed)."""

    def __init__(self, strength: float = 0.5) -> None:
        super().__init__()
        self.strength = strength

    def forward(self, x):
        return (1 - self.strength) * x + self.strength * nn.functional.avg_pool2d(x, 3, 1, 1)


class FreshNoise(nn.Module):
    """Randomized on every call, and no ``seed`` attribute to give it away."""

    def forward(self, x):
        return (x + 0.2 * (torch.rand_like(x) - 0.5)).clamp(0, 1)


class KeyedNoise(nn.Module):
    """Noise seeded by the image's bytes: the same input always gets the same output."""

    def forward(self, x):
        out = []
        for image in x:
            key = int.from_bytes(hashlib.sha256(image.detach().numpy().tobytes()).digest()[:7], "little")
            g = torch.Generator().manual_seed(key)
            out.append((image + 0.2 * (torch.rand(image.shape, generator=g) - 0.5)).clamp(0, 1))
        return torch.stack(out)


def _small(shapes_test, n=12):
    return shapes_test.subset(range(n)).tensors()


def test_five_lines_give_a_typed_report_with_rows_worst_case_and_flags(trained_cnn, shapes_test, tmp_path):
    images, labels = _small(shapes_test)
    report = advrepair.audit(trained_cnn, Blur(), images, labels, eps=0.1, preset="quick", out=tmp_path,
                             progress=False)
    assert isinstance(report, AuditReport) and report.preset == "quick" and report.n_images == 12
    names = {r.name for r in report.rows}
    assert {"clean", "static-apgd-ce", "static-apgd-dlr", "bpda-apgd-ce", "bpda-apgd-dlr", "full-gradient-apgd-ce",
            "square"} <= names
    assert "bpda-eot-apgd-ce" not in names  # deterministic, found by running it
    defended = [r for r in report.rows if r.defended]
    assert report.worst_case_accuracy <= min(r.accuracy for r in defended) + 1e-12
    assert all(0 <= r.stderr <= 0.5 and r.n_images == 12 and r.budget for r in report.rows)
    square = report.row("square")
    assert square.attack["n_queries"] == PRESETS[AuditPreset.QUICK].square_queries and square.forward_per_image > 0
    assert report.randomness["kind"] == "deterministic"
    assert AuditReport.from_json(report.to_json()) == report
    md = report.to_markdown()
    assert "Preset **quick**" in md and "Worst case per image" in md and "apgd-dlr" in md
    assert {p.name for p in tmp_path.iterdir()} >= {"audit.json", "audit.md", "audit_rows.png", "results.json"}
    table = comparison_table([report, report], ["a", "b"])
    assert table.count("| quick | 12 |") == 2 and f"**{100 * report.worst_case_accuracy:.1f} ±" in table


def test_a_rerun_resumes_from_the_records_and_gives_the_same_report(trained_cnn, shapes_test, tmp_path):
    images, labels = _small(shapes_test, 8)
    first = advrepair.audit(trained_cnn, Blur(), images, labels, eps=0.1, out=tmp_path, progress=False)
    n_records = len(json.loads((tmp_path / "results.json").read_text()))
    again = advrepair.audit(trained_cnn, Blur(), images, labels, eps=0.1, out=tmp_path, progress=False)
    assert again == first and len(json.loads((tmp_path / "results.json").read_text())) == n_records
    # without a folder nothing is kept, and the numbers are the same
    fresh = advrepair.audit(trained_cnn, Blur(), images, labels, eps=0.1, progress=False)
    assert [(r.name, r.accuracy, r.attack) for r in fresh.rows] == [(r.name, r.accuracy, r.attack) for r in first.rows]


def test_a_randomized_defense_without_a_seed_attribute_always_gets_eot(trained_cnn, shapes_test):
    images, labels = _small(shapes_test, 8)
    report = advrepair.audit(trained_cnn, FreshNoise(), images, labels, eps=0.1, progress=False)
    assert report.randomness["kind"] == "per-call"
    eot = report.row("bpda-eot-apgd-ce")
    assert eot.attack["eot_iter"] == PRESETS[AuditPreset.QUICK].eot_draws
    assert report.row("full-gradient-apgd-ce").attack["eot_iter"] == PRESETS[AuditPreset.QUICK].eot_draws
    assert next(f for f in report.flags if f.name.startswith("randomized defense")).fired


def test_randomness_is_found_by_running_the_defense(shapes_test):
    from advrepair.defenses import BitDepthReduction, JPEGCompression, MedianFilter, RandomResizePad

    images, _ = _small(shapes_test, 6)
    for deterministic in (Blur(), JPEGCompression(75), MedianFilter(3), BitDepthReduction(4), nn.Identity()):
        assert detect_randomness(deterministic, images).kind is Randomness.DETERMINISTIC, deterministic
    assert detect_randomness(FreshNoise(), images).kind is Randomness.PER_CALL
    keyed = detect_randomness(KeyedNoise(), images)
    assert keyed.kind is Randomness.INPUT_KEYED and keyed.repeat_difference == 0
    draws, how = fresh_draws(KeyedNoise(), keyed, images)
    assert isinstance(draws, NudgedDraws) and "nudging" in how
    assert not torch.equal(draws(images), draws(images))
    pad = RandomResizePad(seed=3)
    unseeded, how = fresh_draws(pad, detect_randomness(pad, images), images)
    assert getattr(unseeded, "seed", 0) is None and pad.seed == 3 and "seed=None" in how


def test_two_configurations_of_one_user_defense_never_share_a_record(trained_cnn, shapes_test, tmp_path):
    assert describe_defense(Blur(0.3)) != describe_defense(Blur(0.6))
    def scale_by(factor):
        return lambda x: x * factor

    scaled = [scale_by(0.5), scale_by(0.7)]
    assert describe_defense(scaled[0]) != describe_defense(scaled[1])  # closures differ
    images, labels = _small(shapes_test, 6)
    a = advrepair.audit(trained_cnn, Blur(0.3), images, labels, eps=0.1, out=tmp_path, progress=False)
    n = len(json.loads((tmp_path / "results.json").read_text()))
    b = advrepair.audit(trained_cnn, Blur(0.9), images, labels, eps=0.1, out=tmp_path, progress=False)
    assert len(json.loads((tmp_path / "results.json").read_text())) > n + 5  # new defended records
    assert a.row("clean", defended=False) == b.row("clean", defended=False)  # the classifier's own are shared


def test_the_contract_lists_what_each_defense_offers():
    from advrepair.defenses import JPEGCompression

    assert capabilities_of(Blur()).absent() == ["params", "trajectory", "bpda_surrogate", "unroll", "ssl_loss",
                                                 "fresh_randomness", "rowwise_randomness"]
    jpeg = capabilities_of(JPEGCompression(75))
    assert jpeg.params and jpeg.bpda_surrogate and not jpeg.ssl_loss


def test_presets_grow_and_standard_has_the_reference_budgets():
    quick, standard, thorough = (PRESETS[p] for p in AuditPreset)
    assert standard.steps == 100 and standard.eot_draws == 20 and standard.square_queries == 5000
    assert standard.target_classes == 9 and standard.recommended_images == 1000
    for field in ("steps", "eot_draws", "square_queries", "restarts", "unroll_steps"):
        assert getattr(quick, field) <= getattr(standard, field) <= getattr(thorough, field), field
    for budget in PRESETS.values():
        assert budget.config(0.1, "Linf", 0).attack == "apgd"


@pytest.mark.parametrize("call, message", [
    (lambda clf, x, y: advrepair.audit(clf, Blur(), (x * 255).to(torch.uint8), y, eps=0.1), "floating-point"),
    (lambda clf, x, y: advrepair.audit(clf, Blur(), x[0], y, eps=0.1), "NCHW"),
    (lambda clf, x, y: advrepair.audit(clf, Blur(), x, y[:3], eps=0.1), "labels"),
    (lambda clf, x, y: advrepair.audit(clf, Blur(), x, y, eps=0.0), "eps"),
    (lambda clf, x, y: advrepair.audit(clf, Blur(), x, y, eps=0.1, preset="fast"), "preset"),
    (lambda clf, x, y: advrepair.audit(clf, Blur(), x, y, eps=0.1, norm="L3"), "norm"),
    (lambda clf, x, y: advrepair.audit(clf, "blur", x, y, eps=0.1), "callable"),
    (lambda clf, x, y: advrepair.audit(clf, lambda im: im[:, :, :4], x, y, eps=0.1), "shape"),
    (lambda clf, x, y: advrepair.audit(nn.Sequential(nn.Flatten(), nn.Linear(784, 1), nn.Flatten(0)), Blur(), x, y,
                                       eps=0.1), "logits of shape"),
    (lambda clf, x, y: advrepair.audit(nn.Sequential(nn.Flatten(), nn.Linear(784, 2)), Blur(), x, y + 2,
                                       eps=0.1), "labels go up to"),
    (lambda clf, x, y: advrepair.audit(lambda im: im, Blur(), x, y, eps=0.1), "nn.Module"),
])
def test_bad_input_is_one_clear_input_error(trained_cnn, shapes_test, call, message):
    images, labels = _small(shapes_test, 4)
    with pytest.raises(InputError, match=message):
        call(trained_cnn, images, labels)


def test_cli_audits_a_users_own_classifier_and_defense(tmp_path, monkeypatch, capsys):
    data = write_fashion_mnist(tmp_path / "fmnist", n_train=20, n_test=40)
    (tmp_path / "my_defenses.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        from advrepair.models import SmallCNN

        def make_classifier(seed):
            torch.manual_seed(seed)
            return SmallCNN(num_classes=10, width=4, feature_dim=16)

        class Shrink(nn.Module):
            def __init__(self, eps):
                super().__init__()
                self.eps = eps

            def forward(self, x):
                return 0.5 + (x - 0.5) * (1 - self.eps)

        def make_defense(classifier, eps):
            return Shrink(eps)
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "audit"
    argv = ["audit", "--classifier", "my_defenses:make_classifier", "--defense", "my_defenses:make_defense",
            "--eps", "0.1", "--n-images", "10", "--out", str(out), "--data-root", str(data), "--device", "cpu",
            "--no-progress"]
    assert main(argv) == 0
    saved = AuditReport.from_json((out / "audit.json").read_text())
    assert saved.defense["name"] == "Shrink" and saved.n_images == 10 and saved.classifier == "my_defenses:make_classifier"
    assert "Worst case per image" in capsys.readouterr().out
    for bad, says in ((["--defense", "my_defenses:nothing"], "no attribute"),
                      (["--defense", "no_such_module:f"], "cannot import"),
                      (["--classifier", "fmnist-cnn-pgd-contrastive"], "not a classifier"),
                      (["--defense", "unknown-defense"], "neither none")):
        args = list(argv)
        flag = bad[0]
        args[args.index(flag) + 1] = bad[1]
        assert main(args) == 2
        assert says in capsys.readouterr().err
