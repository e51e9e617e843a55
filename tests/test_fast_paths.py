"""The faster paths give the results of the plain ones (issue 18): the SmallCNN's pool-before-
ReLU order exactly, the channels-last layout within a stated tolerance, the repair's chunk size
exactly, APGD without the images it has already fooled exactly, and so the audit; the audit
scored from the defense outputs its attacks computed exactly; Square's window writes exactly.
Speed itself is measured in bench/, never here."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from advrepair import audit, zoo
from advrepair.adaptive import memo as memo_module
from advrepair.evaluation import adaptive as adaptive_module
from advrepair.attacks.apgd import APGD, APGDCE, APGDDLR
from advrepair.attacks.apgd_t import APGDT
from advrepair.attacks.square import _CHUNK, _SIGN_TRIES, Square
from advrepair.auditing.presets import PRESETS, AuditPreset
from advrepair.defenses import MedianFilter, ReverseAttack
from advrepair.models import SmallCNN
from advrepair.runtime import layout_of, prepare_module
from advrepair.seeding import image_generators

pytestmark = pytest.mark.usefixtures("one_thread_module")

#: channels-last changes only the float summation order of the convolutions
LOGIT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def real_images() -> torch.Tensor:
    """Real Fashion-MNIST images (the shipped negative bank) plus flat ones, whose constant
    regions tie inside every pooling window."""
    bank = zoo.load_negatives()[:62]
    return torch.cat([bank, torch.zeros(1, 1, 28, 28), torch.full((1, 1, 28, 28), 0.5)])


def _relu_first(model: SmallCNN) -> nn.Sequential:
    """The textbook conv-ReLU-pool order over the same layers."""
    b = model.body
    return nn.Sequential(b[0], b[2], b[1], b[3], b[5], b[4], b[6], b[7], b[8])


@pytest.mark.parametrize("name", ["fmnist-cnn-pgd", "fmnist-cnn-standard"])
def test_pool_before_relu_gives_the_same_values_and_gradients_bit_for_bit(name, real_images):
    model, _ = zoo.load(name, channels_last=False)
    assert isinstance(model.body[1], nn.MaxPool2d) and isinstance(model.body[2], nn.ReLU)
    reference = _relu_first(model)
    x1 = real_images.clone().requires_grad_(True)
    x2 = real_images.clone().requires_grad_(True)
    f1, f2 = model.embed(x1), reference(x2)
    assert torch.equal(f1, f2)
    weights = list(model.body.parameters())
    g1 = torch.autograd.grad(f1.square().sum(), [x1, *weights])
    g2 = torch.autograd.grad(f2.square().sum(), [x2, *weights])
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))  # the input's and the training gradients


def test_checkpoints_keep_their_parameter_names():
    names = set(SmallCNN().state_dict())
    assert {"body.0.weight", "body.3.weight", "body.7.weight", "head.weight"} <= names


def _routing(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N,) bytes of each image's piecewise-linear decisions in ``model``: the window position
    every 2x2 max-pool takes and the sign of every ReLU's input."""
    inputs: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: inputs.append((m, i[0].detach().contiguous())))
             for m in model.modules() if isinstance(m, (nn.MaxPool2d, nn.ReLU))]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    parts = [torch.nn.functional.max_pool2d(t, 2, return_indices=True)[1].flatten(1).to(torch.int64)
             if isinstance(m, nn.MaxPool2d) else (t > 0).flatten(1).to(torch.int64) for m, t in inputs]
    return torch.cat(parts, 1)


@pytest.mark.parametrize("name", ["fmnist-cnn-pgd", "fmnist-cnn-standard"])
def test_channels_last_keeps_the_predictions_and_the_logits_within_tolerance(name, real_images):
    plain, _ = zoo.load(name, channels_last=False)
    fast, _ = zoo.load(name)
    assert layout_of(plain) == "contiguous" and layout_of(fast) == "channels_last"
    with torch.no_grad():
        a, b = plain(real_images), fast(real_images)
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert (a - b).abs().max() <= LOGIT_TOLERANCE
    x1 = real_images.clone().requires_grad_(True)
    x2 = real_images.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(plain(x1).logsumexp(1).sum(), x1)
    (g2,) = torch.autograd.grad(fast(x2).logsumexp(1).sum(), x2)
    # The input gradient is as close wherever both layouts route it through the same pool
    # positions and ReLUs. A near-tie that the other summation order breaks the other way
    # reroutes it (seen on an AVX2 CPU: one image of 64 per model, up to 1% of the gradient; it
    # moves with the batch too, PyTorch's own contiguous layers included), so such images are
    # left out, and there must be few.
    same = (_routing(plain, real_images) == _routing(fast, real_images)).all(1)
    assert int(same.sum()) >= len(real_images) - 8
    scale = max(1.0, float(g1.abs().max()))
    assert (g1 - g2)[same].abs().max() <= LOGIT_TOLERANCE * scale


def test_the_layout_default_follows_the_convolutions():
    assert layout_of(prepare_module(SmallCNN(), "cpu")) == "channels_last"
    assert layout_of(prepare_module(SmallCNN(), "cpu", channels_last=False)) == "contiguous"
    assert layout_of(prepare_module(nn.Linear(3, 2), "cpu")) is None


def test_the_default_chunk_repairs_as_any_other_chunk_in_channels_last(real_images):
    """Batch independence must survive the layout: the automatic chunk (128 here), 32, 64 or 5
    images give each image the same repair (the kernels chosen per batch size must not matter)."""
    classifier, _ = zoo.load("fmnist-cnn-pgd")
    task, _ = zoo.load("fmnist-cnn-pgd-contrastive")
    x = real_images[:40]
    default = ReverseAttack(classifier, task, eps_v=0.2, steps=4)
    assert default.chunk_size is None and default.chunk_for(x) == 128
    repaired = default(torch.cat([x, x, x, x]))[:40]  # 160 images: one chunk of 128, one of 32
    assert torch.equal(repaired, default.variant(chunk_size=32)(x))
    assert torch.equal(repaired, default.variant(chunk_size=64)(x))
    assert torch.equal(repaired[:10], default.variant(chunk_size=5)(x[:10]))


def _labels_with_some_wrong(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10  # misclassified clean: never attacked
    return y


@pytest.mark.parametrize("name", ["fmnist-cnn-pgd", "fmnist-cnn-standard"])
@pytest.mark.parametrize("make", [lambda m: APGDCE(m, eps=0.1, steps=12, n_restarts=2),
                                  lambda m: APGDDLR(m, eps=0.1, steps=12),
                                  lambda m: APGDT(m, eps=0.1, steps=12, n_target_classes=3)],
                         ids=["apgd-ce-2-restarts", "apgd-dlr", "apgd-t-3"])
def test_apgd_dropping_fooled_images_changes_no_result_only_the_passes(name, make, real_images, monkeypatch):
    model, _ = zoo.load(name)
    x = real_images[:48]
    y = _labels_with_some_wrong(model, x)
    fast = make(model)
    dropped = fast(x, y)
    monkeypatch.setattr(APGD, "drop_fooled", False)
    reference = make(model)
    assert torch.equal(dropped, reference(x, y))
    assert fast.stats.forward < reference.stats.forward


def test_the_audit_with_the_savings_equals_the_audit_without(real_images, monkeypatch, tmp_path):
    """The quick audit of a deterministic defense row by row: the same accuracies, worst
    cases and flags whether or not APGD drops the images it has fooled and scoring reads back
    the defense outputs the attack computed."""
    model, _ = zoo.load("fmnist-cnn-pgd")
    x = real_images[:24]
    y = _labels_with_some_wrong(model, x)

    def run(out: str) -> dict:
        report = audit(model, MedianFilter(3), x, y, eps=0.1, preset="quick", out=tmp_path / out, progress=False)
        return report.to_dict()

    monkeypatch.setattr(memo_module, "MIN_COST_RATIO", 0.0)  # remember even a cheap filter's outputs
    fast = run("fast")
    monkeypatch.setattr(APGD, "drop_fooled", False)
    monkeypatch.setattr(adaptive_module, "SHARE_DEFENSE_OUTPUTS", False)
    reference = run("reference")
    assert _results(fast) == _results({**reference, "notes": fast["notes"]})
    assert any("scored from the defense outputs" in note for note in fast["notes"])
    passes = {r["name"]: r["forward_per_image"] for r in fast["rows"]}
    assert sum(passes.values()) < sum(r["forward_per_image"] for r in reference["rows"])


_VARYING = {"seconds", "seconds_per_image", "forward_per_image", "backward_per_image"}


def _results(report: dict) -> dict:
    rows = [{k: v for k, v in row.items() if k not in _VARYING} for row in report["rows"]]
    return {**{k: v for k, v in report.items() if k not in _VARYING | {"rows", "out"}}, "rows": rows}


def test_the_audit_scoring_from_the_attacks_own_repairs_equals_plain_scoring(real_images, monkeypatch, tmp_path):
    """The reverse attack is deterministic per image and batch-independent, so BPDA and Square
    rows are scored from the repairs (and iterates) their attack computed: every row, iterate
    accuracy and worst case equals the audit that repairs each returned image again."""
    model, _ = zoo.load("fmnist-cnn-pgd")
    task, _ = zoo.load("fmnist-cnn-pgd-contrastive")
    defense = ReverseAttack(model, task, eps_v=0.2, steps=3, seed=0)  # type: ignore[arg-type]
    x = real_images[:8]
    y = _labels_with_some_wrong(model, x)
    reused = []
    original_clear = memo_module.DefenseMemo.clear

    def counting_clear(self):
        reused.append(self.reused)
        original_clear(self)

    monkeypatch.setattr(memo_module.DefenseMemo, "clear", counting_clear)
    # every row of the quick preset at half its steps and queries: the scoring is what is compared
    quick = PRESETS[AuditPreset.QUICK]
    monkeypatch.setitem(PRESETS, AuditPreset.QUICK, dataclasses.replace(quick, steps=5, square_queries=40))

    def run(out: str) -> dict:
        return audit(model, defense, x, y, eps=0.1, preset="quick", out=tmp_path / out, progress=False).to_dict()

    fast = run("fast")
    monkeypatch.setattr(adaptive_module, "SHARE_DEFENSE_OUTPUTS", False)
    reference = run("reference")
    eot_rows = {r["name"] for r in fast["rows"] if "eot" in r["name"] or r["name"].startswith("full-gradient")}

    def deterministic(report: dict) -> dict:  # EOT draws with seed=None differ between any two runs
        rows = [r for r in _results(report)["rows"] if r["name"] not in eot_rows]
        return {"rows": rows, "undefended": report["undefended_robust_accuracy"]}

    assert deterministic(fast) == deterministic(reference)
    assert any(r.get("iterate_accuracy") for r in deterministic(fast)["rows"])
    assert sum(reused) >= 3 * len(x)  # most BPDA and Square rows read every image back


def test_the_memo_reads_back_what_the_defense_gives_and_forgets_the_oldest():
    calls = []

    def defense(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape[0])
        return images.flip(-1) * 0.5

    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    memo = memo_module.DefenseMemo(defense, max_bytes=4 * 16 * 4)  # room for four images
    assert torch.equal(memo(x[:4]), defense(x[:4])) and memo.reused == 0
    calls.clear()
    assert torch.equal(memo(x[2:6]), defense(x[2:6]))  # x[2:4] read back, x[4:6] run (and x[0:2] dropped)
    assert calls[0] == 2 and memo.reused == 2
    calls.clear()
    memo(x[:1])
    assert calls == [1]  # forgotten: run again
    memo.clear()
    assert memo.reused == 0 and memo._bytes == 0


def test_the_memo_is_refused_for_defenses_whose_output_is_not_the_image_alone():
    x = torch.rand(9, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    slow_enough = memo_module.MIN_COST_RATIO
    memo_module.MIN_COST_RATIO = 0.0
    try:
        assert memo_module.shares_outputs(lambda z: z.flip(-1), x)
        assert not memo_module.shares_outputs(lambda z: z - z.mean(0, keepdim=True) + 0.5, x)  # batch statistics
        assert not memo_module.shares_outputs(lambda z: (z + 0.01 * torch.rand_like(z)).clamp(0, 1), x)  # per call
        assert not memo_module.shares_outputs(lambda z: z, x[:2])  # too few images to split
    finally:
        memo_module.MIN_COST_RATIO = slow_enough


class _FooledByAnyChange(nn.Module):
    """Class 0 only for (nearly) white images: every random start fools it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x.flatten(1).mean(1, keepdim=True) - 0.999) * 3000  # logits, not probabilities
        return torch.cat([score, torch.zeros(x.shape[0], 3)], 1)


@pytest.mark.parametrize("attack", [APGDCE, APGDT])
def test_apgd_with_every_image_fooled_at_its_start(attack, monkeypatch):
    """The case the property tests found: the whole batch leaves before the first step."""
    model, x = _FooledByAnyChange(), torch.ones(3, 1, 8, 8)
    y = torch.zeros(3, dtype=torch.long)
    fast = attack(model, eps=0.25, steps=5)(x, y)
    monkeypatch.setattr(APGD, "drop_fooled", False)
    assert torch.equal(fast, attack(model, eps=0.25, steps=5)(x, y))
    assert (model(fast).argmax(1) != y).all() and (fast - x).abs().max() <= 0.25 + 1e-6


def test_the_cascade_audit_has_the_worst_case_of_the_full_audit(real_images, tmp_path):
    """AutoAttack's cascade: rows after the static one attack only the images still standing.
    The worst cases, the classifier's own robustness and the paired gain are those of the full
    audit, for fewer passes; each later row attacked no more images than the one before."""
    model, _ = zoo.load("fmnist-cnn-pgd")
    x = real_images[:32]
    y = _labels_with_some_wrong(model, x)
    full = audit(model, MedianFilter(3), x, y, eps=0.1, preset="quick", out=tmp_path / "full", progress=False)
    cascade = audit(model, MedianFilter(3), x, y, eps=0.1, preset="quick", out=tmp_path / "cascade",
                    progress=False, cascade=True)
    for field in ("worst_case_accuracy", "worst_case_outputs_only", "undefended_robust_accuracy", "defense_gain",
                  "defense_gain_stderr"):
        assert getattr(cascade, field) == getattr(full, field), field
    assert cascade.cascade and not full.cascade
    attacked = [r for r in cascade.rows if r.defended and r.name not in ("clean",) and not r.name.startswith("static")]
    assert attacked and attacked[-1].n_images < len(x)
    counts = [r.n_images for r in attacked]
    assert counts == sorted(counts, reverse=True)
    passes = sum(r.forward_per_image * r.n_images for r in cascade.rows)
    assert passes < sum(r.forward_per_image * r.n_images for r in full.rows)
    assert "Cascade:" in cascade.to_markdown() and "| images |" in cascade.to_markdown()
    again = audit(model, MedianFilter(3), x, y, eps=0.1, preset="quick", out=tmp_path / "cascade", progress=False,
                  cascade=True)
    assert again.worst_case_accuracy == cascade.worst_case_accuracy  # resumed from the same records


class _CallCounter(nn.Module):
    def __init__(self, model: nn.Module, noise: float = 0.0) -> None:
        super().__init__()
        self.model, self.noise, self.calls = model, noise, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x + self.noise * torch.randn_like(x))


def test_stacked_eot_draws_equal_the_loop_on_a_deterministic_model(real_images):
    model, _ = zoo.load("fmnist-cnn-pgd")
    x = real_images[:16]
    y = _labels_with_some_wrong(model, x)
    looped, stacked = _CallCounter(model), _CallCounter(model)
    a = APGDCE(looped, eps=0.1, steps=6, eot_iter=3)(x, y)
    b = APGDCE(stacked, eps=0.1, steps=6, eot_iter=3, eot_batched=True)(x, y)
    assert torch.allclose(a, b, atol=1e-6)
    assert stacked.calls * 3 <= looped.calls + 3  # one call per step instead of three


def test_stacked_eot_draws_are_independent_draws_per_row():
    """A per-row random model: the stacked copies of one image see different noise, so the
    averaged gradient is the EOT estimate, not one draw repeated."""
    torch.manual_seed(0)
    model = _CallCounter(SmallCNN(width=4, feature_dim=8).eval(), noise=0.05)
    attack = APGDCE(model, eps=0.1, steps=1, eot_iter=4, eot_batched=True)
    x = torch.rand(2, 1, 28, 28)
    seen = []
    model.register_forward_hook(lambda m, inputs, out: seen.append(out.detach()))
    attack._loss_grad(x, lambda logits: logits[:, 0])
    copies = seen[-1].view(4, 2, -1)
    assert not torch.equal(copies[0], copies[1])


def test_only_defenses_with_rowwise_draws_get_stacked_eot():
    from advrepair.adaptive.contract import capabilities_of
    from advrepair.adaptive.randomness import NudgedDraws
    from advrepair.defenses import JPEGCompression

    assert capabilities_of(NudgedDraws(JPEGCompression())).rowwise_randomness
    assert not capabilities_of(JPEGCompression()).rowwise_randomness
    classifier, _ = zoo.load("fmnist-cnn-pgd")
    task, _ = zoo.load("fmnist-cnn-pgd-contrastive")
    assert capabilities_of(ReverseAttack(classifier, task, eps_v=0.2).variant(seed=None)).rowwise_randomness


def _plain_square_linf(attack: Square, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Square's L-inf loop as first written: every image every query (fooled ones frozen), and
    a fresh full copy of the batch per candidate."""
    b, c, h, w = x.shape
    gens = image_generators(x, attack.seed, "square-Linf-0")
    best = attack._init(x, gens)
    fooled, loss = attack._score(best, y)
    numbers = x.new_empty(0)
    for it in range(attack.n_queries - 1):
        if bool(fooled.all()):
            break
        if it % _CHUNK == 0:
            numbers = torch.stack([torch.rand(_CHUNK, 2 + _SIGN_TRIES * c, generator=g) for g in gens])
        index, _, window = attack._linf_window(x, best, numbers[:, it % _CHUNK], attack._side(it, h, w))
        cand = best.clone()
        cand.flatten(2).scatter_(2, index, window)
        new_fooled, new_loss = attack._score(cand, y)
        take = ~fooled & (new_fooled | (new_loss < loss))
        best = torch.where(take.view(-1, 1, 1, 1), cand, best)
        loss = torch.where(take, new_loss, loss)
        fooled = fooled | new_fooled
    return best


@pytest.mark.parametrize("name", ["fmnist-cnn-pgd", "fmnist-cnn-standard"])
def test_square_window_writes_equal_a_fresh_candidate_per_query(name, real_images):
    model, _ = zoo.load(name)
    x = real_images[:24]
    y = _labels_with_some_wrong(model, x)
    attack = Square(model, eps=0.15, n_queries=150)  # the standard CNN loses images on the way
    assert torch.equal(attack(x, y), _plain_square_linf(attack, x, y))
