"""APGD, APGD-T and AutoAttack: agreement with torchattacks, the cascade's bookkeeping,
budget invariants and batch independence."""
import pytest
import torch
import torchattacks
from torch import nn

from advrepair.attacks import registry
from advrepair.attacks.apgd import APGD, APGDCE, checkpoints
from advrepair.attacks.losses import dlr_loss, targeted_dlr_loss
from advrepair.attacks.apgd_t import APGDT
from advrepair.attacks.autoattack import AutoAttack
from advrepair.errors import InputError

# eps where attacks bite on the fixture model (clean ~0.99, robust ~0.5); 20 steps keep the
# file fast on 2 cores and already separate the attacks from clean accuracy.
EPS, STEPS = 0.16, 20
# 200 images: one image is 0.005; runs from different random starts differ by a few images
TOL = 0.05


def _robust(model, adv, y):
    with torch.no_grad():
        return model(adv).argmax(1) == y


@pytest.fixture(scope="module")
def ours(trained_cnn, shapes_test):
    """Our APGD-CE and APGD-DLR run alone on the 200 test images (shared by several tests)."""
    x, y = shapes_test.tensors()
    return {loss: _robust(trained_cnn, APGD(trained_cnn, eps=EPS, steps=STEPS, loss=loss, seed=0)(x, y), y)
            for loss in ("ce", "dlr")}


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_robust_accuracy_agrees_with_torchattacks(trained_cnn, shapes_test, ours, loss):
    x, y = shapes_test.tensors()
    theirs = torchattacks.APGD(trained_cnn, norm="Linf", eps=EPS, steps=STEPS, n_restarts=1, seed=0,
                               loss=loss)(x, y)
    clean = _robust(trained_cnn, x, y).float().mean().item()
    acc_ours = ours[loss].float().mean().item()
    acc_theirs = _robust(trained_cnn, theirs, y).float().mean().item()
    assert clean > 0.8, "the fixture model should have learned the shapes"
    assert acc_ours < clean - 0.2, "APGD should hurt a standard model"
    assert abs(acc_ours - acc_theirs) <= TOL


def test_apgd_t_robust_accuracy_agrees_with_torchattacks(trained_cnn, shapes_test):
    x, y = shapes_test.tensors()
    # 4 classes: 3 targets (torchattacks uses n_classes - 1)
    adv = APGDT(trained_cnn, eps=EPS, steps=STEPS, n_target_classes=3, seed=0)(x, y)
    theirs = torchattacks.APGDT(trained_cnn, norm="Linf", eps=EPS, steps=STEPS, n_restarts=1, seed=0,
                                n_classes=4)(x, y)
    acc_ours = _robust(trained_cnn, adv, y).float().mean().item()
    acc_theirs = _robust(trained_cnn, theirs, y).float().mean().item()
    assert acc_ours < 0.8
    assert abs(acc_ours - acc_theirs) <= TOL


class _Recorder(nn.Module):
    """Passes through to a model and records the batch size of every forward."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.model(x)


def test_autoattack_cascade_is_worst_case_and_attacks_only_survivors(trained_cnn, shapes_test, ours):
    x, y = shapes_test.tensors()
    rec = _Recorder(trained_cnn).eval()
    aa = AutoAttack(rec, eps=EPS, version="custom", seed=0,
                    attacks=[("apgd-ce", {"steps": STEPS}), f"apgd-dlr:steps={STEPS}"])
    robust = _robust(trained_cnn, aa(x, y), y)
    first, second = aa.report
    assert [first["attack"], second["attack"]] == ["apgd-ce", "apgd-dlr"]
    assert second["params"]["loss"] == "dlr" and second["params"]["steps"] == STEPS

    # the per-image worst case is never above any member run alone
    assert robust.float().mean().item() == pytest.approx(second["robust_accuracy"])
    assert second["robust_accuracy"] <= ours["ce"].float().mean().item()
    assert second["robust_accuracy"] <= ours["dlr"].float().mean().item()
    # the first stage sees the same images as apgd-ce alone, so it finds the same survivors
    assert first["robust_accuracy"] == pytest.approx(ours["ce"].float().mean().item())

    clean_correct = int(_robust(trained_cnn, x, y).sum())
    survivors = round(first["robust_accuracy"] * len(y))
    assert 0 < survivors < clean_correct
    assert first["n_images"] == clean_correct and second["n_images"] == survivors
    # the last model calls are the second member's counted passes plus AutoAttack's check of
    # its output; walking back from the end they must add up exactly, each on survivors only
    total, later = 0, []
    for size in reversed(rec.sizes):
        if total == second["forward"] + survivors:
            break
        total += size
        later.append(size)
    assert total == second["forward"] + survivors
    assert max(later) == survivors
    assert second["forward"] <= survivors * (STEPS + 2)


def test_autoattack_never_attacks_misclassified_images(trained_cnn, shapes_test):
    x, y = shapes_test.tensors(torch.arange(16))
    with torch.no_grad():
        pred = trained_cnn(x).argmax(1)
    y = pred.clone()
    y[:4] = (pred[:4] + 1) % 4  # wrong clean
    aa = AutoAttack(trained_cnn, eps=EPS, version="custom", attacks=["apgd-ce:steps=3"])
    adv = aa(x, y)
    assert torch.equal(adv[:4], x[:4])
    assert aa.report[0]["n_images"] == 12 and aa.clean_accuracy == pytest.approx(0.75)
    assert aa.report[0]["robust_accuracy"] <= 0.75


def test_autoattack_members_are_looked_up_at_call_time(random_cnn):
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    aa = AutoAttack(random_cnn, version="custom", attacks=["apgd-ce:steps=2", "no-such-attack"])
    with pytest.raises(InputError, match="no-such-attack"):
        aa(x, y)
    standard = AutoAttack(random_cnn)  # fab-t and square may be registered later
    assert [m["name"] for m in standard.params()["attacks"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    rand = registry.make_attack("autoattack", random_cnn, version="rand")
    assert all(m["eot_iter"] == 20 for m in rand.params()["attacks"])


def test_autoattack_rejects_bad_configurations(random_cnn):
    with pytest.raises(InputError, match="version"):
        AutoAttack(random_cnn, version="plus-plus")
    with pytest.raises(InputError, match="non-empty"):
        AutoAttack(random_cnn, version="custom")
    with pytest.raises(InputError, match="only for version='custom'"):
        AutoAttack(random_cnn, attacks=["apgd-ce"])
    with pytest.raises(InputError, match="budget"):
        AutoAttack(random_cnn, version="custom", attacks=[("apgd-ce", {"eps": 0.5})])
    with pytest.raises(InputError, match="no parameters"):
        AutoAttack(random_cnn, version="custom", attacks=["apgd-ce:iters=5"])(
            torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))


def _inputs(model, n=16, seed=1):
    torch.manual_seed(seed)
    x = torch.rand(n, 1, 28, 28)
    with torch.no_grad():
        return x, model(x).argmax(1)  # correctly classified, so every image is attacked


@pytest.mark.parametrize("norm, eps", [("Linf", 0.05), ("L2", 1.0)])
@pytest.mark.parametrize("make", [
    lambda m, **k: APGD(m, loss="ce", **k),
    lambda m, **k: APGD(m, loss="dlr", **k),
    lambda m, **k: APGDT(m, n_target_classes=2, **k),
    lambda m, **k: AutoAttack(m, version="custom", attacks=["apgd-ce:steps=3", "apgd-dlr:steps=3"],
                              **{key: v for key, v in k.items() if key not in ("steps", "n_restarts")}),
], ids=["apgd-ce", "apgd-dlr", "apgd-t", "autoattack"])
def test_stays_in_budget_and_box(random_cnn, norm, eps, make):
    x, y = _inputs(random_cnn)
    adv = make(random_cnn, eps=eps, norm=norm, steps=5, n_restarts=2)(x, y)
    d = (adv - x).flatten(1)
    size = d.abs().max(1).values if norm == "Linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1


@pytest.mark.parametrize("cls", [APGDCE, APGDT])
def test_batch_independent_and_seeded(random_cnn, cls):
    x, y = _inputs(random_cnn, n=8, seed=2)
    attack = cls(random_cnn, eps=0.03, steps=5, seed=5)
    full = attack(x, y)
    halves = torch.cat([attack(x[:4], y[:4]), attack(x[4:], y[4:])])
    assert torch.allclose(full, halves, atol=1e-6)
    assert not torch.allclose(full, cls(random_cnn, eps=0.03, steps=5, seed=6)(x, y))


def test_eot_averages_repeated_passes(random_cnn):
    x, y = _inputs(random_cnn, n=4, seed=3)
    one = APGD(random_cnn, eps=0.03, steps=3)
    two = APGD(random_cnn, eps=0.03, steps=3, eot_iter=2)
    # a deterministic model gives the same gradient on every draw, so the average is unchanged
    assert torch.allclose(one(x, y), two(x, y), atol=1e-6)
    assert two.stats.backward == 2 * one.stats.backward


def test_schedule_losses_and_names(random_cnn, trained_cnn):
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == list(range(2, 11))
    z, y, t = torch.randn(5, 10), torch.randint(0, 10, (5,)), torch.randint(0, 10, (5,))
    # DLR is invariant to shifting and positively scaling the logits
    assert torch.allclose(dlr_loss(3 * z + 7, y), dlr_loss(z, y), atol=1e-5)
    assert torch.allclose(targeted_dlr_loss(3 * z + 7, y, t), targeted_dlr_loss(z, y, t), atol=1e-5)
    assert APGD(random_cnn, loss="dlr").name == "apgd-dlr" and APGD(random_cnn).name == "apgd-ce"
    assert registry.make_attack("apgd-dlr", random_cnn).params()["loss"] == "dlr"
    p = registry.make_attack("apgd-t", random_cnn, n_target_classes=3).params()
    assert p["name"] == "apgd-t" and p["n_target_classes"] == 3 and p["loss"] == "dlr-targeted"
    # more targets than wrong classes are capped: 9 on a 4-class model equals 3
    x, y2 = _inputs(trained_cnn, n=8)
    assert torch.equal(APGDT(trained_cnn, eps=0.1, steps=3, n_target_classes=9)(x, y2),
                       APGDT(trained_cnn, eps=0.1, steps=3, n_target_classes=3)(x, y2))


def test_bad_arguments(random_cnn):
    with pytest.raises(InputError, match="unknown APGD loss"):
        APGD(random_cnn, loss="hinge")
    with pytest.raises(InputError, match="steps"):
        APGD(random_cnn, steps=2.5)
    with pytest.raises(InputError, match="n_restarts"):
        APGD(random_cnn, n_restarts=0)
    with pytest.raises(InputError, match="rho"):
        APGD(random_cnn, rho=1.5)
    with pytest.raises(InputError, match="eot_iter"):
        APGD(random_cnn, eot_iter=True)
    with pytest.raises(InputError, match="n_target_classes"):
        APGDT(random_cnn, n_target_classes=0)
    three = nn.Sequential(nn.Flatten(), nn.Linear(784, 3))
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    with pytest.raises(InputError, match="4 classes"):
        APGDT(three, steps=2)(x, y)
    two = nn.Sequential(nn.Flatten(), nn.Linear(784, 2))
    with pytest.raises(InputError, match="3 classes"):
        APGD(two, loss="dlr", steps=2)(x, y)


def test_standard_autoattack_runs_all_four_members(trained_cnn, shapes_test):
    x, y = shapes_test.tensors(torch.arange(24))
    attack = AutoAttack(trained_cnn, eps=0.16, version="standard")
    adv = attack(x, y)
    assert [r["attack"] for r in attack.report] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    accs = [r["robust_accuracy"] for r in attack.report]
    assert accs == sorted(accs, reverse=True)  # a cascade only removes survivors
    with torch.no_grad():
        final = (trained_cnn(adv).argmax(1) == y).float().mean().item()
    assert final == pytest.approx(accs[-1])
    assert (adv - x).abs().max() <= 0.16 + 1e-6
