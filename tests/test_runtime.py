"""Runtime helpers: device names, autocast precision, channels-last layout."""
from __future__ import annotations

import pytest
import torch

from advrepair.attacks.registry import make_attack
from advrepair.errors import InputError
from advrepair.models.small_cnn import SmallCNN
from advrepair.runtime import (PRECISIONS, AutocastModule, autocast_context, parse_precision, prepare_images,
                               prepare_module, resolve_device)

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per op): on this CNN the logits move
# by 0.4-0.6 % of their largest magnitude (measured on 3 seeds); we allow 2 %.
BF16_RELATIVE_TOLERANCE = 0.02


pytestmark = pytest.mark.usefixtures("one_thread")


def _cnn(seed: int = 0, channels: int = 1) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(in_channels=channels, num_classes=10, width=8, feature_dim=32,
                    mean=(0.3,) * channels, std=(0.3,) * channels).eval()


def _images(n: int = 16, channels: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, channels, 28, 28, generator=torch.Generator().manual_seed(seed))


def _relative_gap(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref).abs().max() / ref.abs().max())


# ---------------------------------------------------------------- devices

def test_auto_picks_cuda_only_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device(" AUTO ") == torch.device("cuda")


def test_explicit_devices_are_checked(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(InputError, match="1 CUDA device"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "meta", 3, None])
def test_unknown_devices_are_refused(name):
    with pytest.raises(InputError):
        resolve_device(name)


def test_mps_is_refused_where_missing(monkeypatch):
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)
    with pytest.raises(InputError, match="MPS"):
        resolve_device("mps")


# ---------------------------------------------------------------- precision

def test_precision_names_and_aliases():
    assert PRECISIONS == ("fp32", "bf16", "fp16")
    assert [parse_precision(p) for p in ("FP32", "float32", "bfloat16", "bf16", "half", "float16")] == \
        ["fp32", "fp32", "bf16", "bf16", "fp16", "fp16"]


@pytest.mark.parametrize("bad", ["fp8", "int8", "", "bf-16", None, 16.0])
def test_bad_precision_names_are_refused(bad):
    with pytest.raises(InputError, match="precision"):
        parse_precision(bad)
    with pytest.raises(InputError, match="precision"):
        autocast_context("cpu", bad)


def test_fp16_is_refused_on_the_cpu():
    with pytest.raises(InputError, match="fp16.*CUDA"):
        autocast_context("cpu", "fp16")
    with pytest.raises(InputError, match="fp16.*CUDA"):
        AutocastModule(_cnn(), "cpu", "fp16")


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    model, x = _cnn(), _images()
    with torch.no_grad():
        ref = model(x)
        with autocast_context("cpu", "bf16"):
            low = model(x)
    assert low.dtype == torch.bfloat16, "the forward pass must really run in bf16"
    gap = _relative_gap(low, ref)
    assert 0 < gap <= BF16_RELATIVE_TOLERANCE


def test_fp32_switches_off_an_enclosing_autocast():
    model, x = _cnn(), _images(4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with autocast_context("cpu", "fp32"):
            out = model(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, model(x), atol=1e-6)


def test_autocast_module_returns_float32_and_is_attackable():
    model = _cnn()
    fast = AutocastModule(model, "cpu", "bf16")
    x = _images(8)
    with torch.no_grad():
        out, ref = fast(x), model(x)
    assert out.dtype == torch.float32
    assert 0 < _relative_gap(out, ref) <= BF16_RELATIVE_TOLERANCE
    assert fast.num_classes == 10 and fast.features(x).shape == (8, 32)  # the model's attributes show through
    y = ref.argmax(1)
    adv = make_attack("pgd", fast, eps=0.05, alpha=0.01, steps=3)(x, y)
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.dtype == torch.float32
    with torch.no_grad():
        assert torch.nn.functional.cross_entropy(model(adv), y) > torch.nn.functional.cross_entropy(ref, y)


# ---------------------------------------------------------------- channels last

def test_channels_last_gives_the_same_outputs():
    ref_model, model = _cnn(channels=3), _cnn(channels=3)
    x = _images(8, channels=3)
    prepared = prepare_module(model, "cpu", channels_last=True)
    assert prepared is model
    conv = model.body[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert model.head.weight.is_contiguous()  # 2-D parameters keep their layout
    xl = prepare_images(x, "cpu", channels_last=True)
    assert xl.is_contiguous(memory_format=torch.channels_last) and torch.equal(xl, x)
    with torch.no_grad():
        torch.testing.assert_close(model(xl), ref_model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x), ref_model(x), atol=1e-5, rtol=1e-5)


def test_prepare_without_channels_last_keeps_the_layout_and_refuses_non_modules():
    model = prepare_module(_cnn(), "cpu", channels_last=False)
    assert model.body[0].weight.is_contiguous()
    with pytest.raises(InputError, match="nn.Module"):
        prepare_module(lambda z: z, "cpu")
    with pytest.raises(InputError, match="4-D"):
        prepare_images(torch.rand(3, 8, 8), "cpu")
    with pytest.raises(InputError):
        prepare_module(_cnn(), "tpu")


# ---------------------------------------------------------------- CUDA (run where a GPU is lent)

@cuda_only
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_cuda_is_close_to_fp32(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = prepare_module(_cnn(channels=3), "cuda", channels_last=True)
    x = prepare_images(_images(16, channels=3), "cuda", channels_last=True)
    with torch.no_grad():
        with autocast_context("cuda", "fp32"):
            ref = model(x)
        low = AutocastModule(model, "cuda", precision)(x)
    assert low.dtype == torch.float32 and low.device.type == "cuda"
    assert _relative_gap(low, ref) <= BF16_RELATIVE_TOLERANCE


@cuda_only
def test_channels_last_on_cuda_matches_cpu():
    cpu_model, x = _cnn(channels=3), _images(8, channels=3)
    gpu_model = prepare_module(_cnn(channels=3), "cuda", channels_last=True)
    with torch.no_grad(), autocast_context("cuda", "fp32"):
        out = gpu_model(prepare_images(x, "cuda", channels_last=True)).cpu()
    # TF32 convolutions (if enabled) round to 10 mantissa bits
    torch.testing.assert_close(out, cpu_model(x), atol=2e-3, rtol=2e-3)


# ---------------------------------------------------------------- CUDA: the library's paths on a GPU
# Each runs a code path on "cuda" that the CPU suite only reaches on the CPU; the per-image
# random numbers come from CPU generators, so CPU and GPU runs start from the same draws
# and differ only by float rounding (and TF32 convolutions, when cuDNN allows them).

GPU = "cuda"
# one of every registered attack, at a cost of a few passes
_GPU_ATTACKS = {
    "fgsm": {}, "pgd": {"steps": 2}, "bim": {"steps": 2}, "mifgsm": {"steps": 2}, "difgsm": {"steps": 2},
    "tifgsm": {"steps": 2, "len_kernel": 3}, "cw": {"steps": 2}, "cw-pgd": {"steps": 2}, "apgd": {"steps": 2},
    "apgd-ce": {"steps": 2}, "apgd-dlr": {"steps": 2}, "apgd-t": {"steps": 2, "n_target_classes": 2},
    "fab": {"steps": 2}, "fab-t": {"steps": 2, "n_target_classes": 2}, "square": {"n_queries": 5},
    "hopskipjump": {"steps": 1, "max_queries": 200, "init_num_evals": 4, "init_size": 5},
    "autoattack": {"version": "custom", "attacks": ["apgd-ce:steps=2", "fab-t:steps=2,n_target_classes=2",
                                                    "square:n_queries=3"]},
    "ssp": {"steps": 2, "layer": "body.3"},
}


def _gpu_task(name: str, model: SmallCNN):
    from advrepair.ssl import build_task

    torch.manual_seed(0)
    options = {"contrastive": dict(negatives=_images(8, model.in_channels, seed=5), hidden_dim=16, out_dim=8,
                                   n_views=2),
               "rotation": dict(width=4), "inpainting": dict(width=4, mask="random")}[name]
    return build_task(name, model, **options).eval()


@cuda_only
def test_per_image_draws_do_not_depend_on_the_device():
    from advrepair.seeding import image_generators, per_image_uniform

    x = _images(6, channels=3)
    on_gpu = per_image_uniform(x.to(GPU), 0, (7,), "stream")
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), per_image_uniform(x, 0, (7,), "stream"))
    assert [g.initial_seed() for g in image_generators(x.to(GPU), 3, "s")] == \
        [g.initial_seed() for g in image_generators(x, 3, "s")]


@cuda_only
@pytest.mark.parametrize("name", sorted(_GPU_ATTACKS))
def test_every_attack_runs_on_cuda(name):
    model = prepare_module(_cnn(channels=3), GPU)
    x = _images(6, channels=3).to(GPU)
    y = model(x).argmax(1)
    adv = make_attack(name, model, eps=0.05, **_GPU_ATTACKS[name])(x, None if name == "ssp" else y)
    assert adv.device == x.device and adv.dtype == torch.float32 and adv.shape == x.shape
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


@cuda_only
def test_a_random_start_is_the_same_on_cuda_and_cpu():
    cpu_model, x = _cnn(channels=3), _images(6, channels=3)
    y = cpu_model(x).argmax(1)
    start_cpu = make_attack("pgd", cpu_model, eps=0.05, steps=0)(x, y)
    gpu_model = prepare_module(_cnn(channels=3), GPU)
    start_gpu = make_attack("pgd", gpu_model, eps=0.05, steps=0)(x.to(GPU), y.to(GPU))
    torch.testing.assert_close(start_gpu.cpu(), start_cpu, atol=1e-6, rtol=0)


@cuda_only
def test_transfer_and_targeted_attacks_on_cuda():
    target, source = prepare_module(_cnn(0, 3), GPU), prepare_module(_cnn(1, 3), GPU)
    x = _images(6, channels=3).to(GPU)
    y = target(x).argmax(1)
    adv = make_attack("transfer", target, source=source, attack="mifgsm", eps=0.05, steps=2)(x, y)
    assert adv.device == x.device
    for mode in ("random", "least-likely", "given"):
        attack = make_attack("pgd", target, eps=0.05, alpha=0.02, steps=2).set_target_mode(mode)
        given = (y + 1) % 10 if mode == "given" else None
        assert attack(x, y, given).device == x.device


def _gpu_defenses(model: SmallCNN) -> dict:
    """Every defense, built as callers build them: parameter-free ones on the CPU and never
    moved; those around a network get the network on the GPU."""
    from advrepair.defenses import (RIDE, AdversarialTransformation, BitDepthReduction, DifferentiableJPEG,
                                    JPEGCompression, MedianFilter, NRPDefense, RandomResizePad, ReverseAttack,
                                    TotalVariation)
    from advrepair.models import Purifier

    torch.manual_seed(0)
    tasks = [(prepare_module(_gpu_task(n, model), GPU), 1.0) for n in ("contrastive", "rotation", "inpainting")]
    return {
        "jpeg": JPEGCompression(75), "jpeg-differentiable": DifferentiableJPEG(75),
        "jpeg-444-straight": DifferentiableJPEG(75, subsampling="4:4:4", rounding="straight-through"),
        "tv-chambolle": TotalVariation(0.05, max_iter=20),
        "tv-bregman-dropout": TotalVariation(0.05, solver="bregman", keep_prob=0.5, max_iter=20),
        "median": MedianFilter(3), "bit-depth": BitDepthReduction(4), "resize-pad": RandomResizePad(seed=0),
        "nrp-dynamic": NRPDefense(prepare_module(Purifier(model.in_channels, width=4, dense_blocks=1), GPU),
                                  dynamic=True),
        "ride": RIDE(iterations=3, checkpoints=2, seed=0), "dip": RIDE(mode="dip", iterations=3, checkpoints=1),
        "xiao2020": AdversarialTransformation(prepare_module(_cnn(1, model.in_channels), GPU), steps=2, seed=0),
        "reverse-attack": ReverseAttack(model, tasks, eps_v=0.05, steps=3, seed=0),
    }


@cuda_only
def test_every_defense_runs_on_cuda_and_agrees_with_the_cpu():
    cpu_model = _cnn(channels=3)
    gpu_model = prepare_module(_cnn(channels=3), GPU)
    cpu_defenses, gpu_defenses = _gpu_defenses(cpu_model), _gpu_defenses(gpu_model)
    for d in cpu_defenses.values():  # _gpu_defenses put the networks on the GPU; the reference runs on the CPU
        d.to("cpu")
    x = _images(5, channels=3)
    for name, defense in gpu_defenses.items():
        out = defense(x.to(GPU))
        assert out.device.type == "cuda" and out.shape == x.shape, name
        assert out.min() >= 0 and out.max() <= 1, name
        ref = cpu_defenses[name](x)
        # float rounding (TF32 convolutions, sign steps on nearly-zero gradients) moves a few pixels
        assert (out.detach().cpu() - ref.detach()).abs().mean() < 0.02, name


@cuda_only
def test_gradients_flow_through_defenses_on_cuda():
    from advrepair.adaptive import BPDA
    from advrepair.defenses import DifferentiableJPEG, JPEGCompression

    model = prepare_module(_cnn(channels=3), GPU)
    x = _images(4, channels=3).to(GPU)
    y = model(x).argmax(1)
    jpeg = JPEGCompression(75)  # on the CPU: its surrogate's tables must follow the images
    for defended in (torch.nn.Sequential(DifferentiableJPEG(75), model),
                     torch.nn.Sequential(BPDA(jpeg, jpeg.bpda_surrogate()), model)):
        adv = make_attack("pgd", defended, eps=0.05, alpha=0.02, steps=2)(x, y)
        assert adv.device == x.device and (adv != x).any()


@cuda_only
def test_evaluate_matrix_on_cuda_matches_the_cpu(tmp_path, trained_cnn, shapes_test):
    import copy

    from advrepair.defenses import DifferentiableJPEG, ReverseAttack
    from advrepair.evaluation import AttackSpec, ModelEntry, ResultsStore, evaluate_matrix

    data = shapes_test.subset(range(40))
    specs = [AttackSpec("clean"), AttackSpec("pgd", {"eps": 0.1, "alpha": 0.05, "steps": 2}),
             AttackSpec("pgd", {"eps": 0.1, "alpha": 0.05, "steps": 2}, through="bpda")]
    results = {}
    for device in ("cpu", GPU):
        model = copy.deepcopy(trained_cnn)  # evaluate_matrix moves it: keep the session fixture on the CPU
        # built on the CPU, as a user would: evaluate_matrix places classifier and defenses
        defenses = {"reverse-attack": ReverseAttack(model, _gpu_task("contrastive", model), eps_v=0.2, steps=2),
                    "jpeg": DifferentiableJPEG(75)}
        entry = ModelEntry("cnn", model, card={"weights_sha256": "w"}, defenses=defenses)
        store = ResultsStore(tmp_path / device)
        records = evaluate_matrix(data, [entry], specs, store, batch_size=10, device=device, progress=False)
        assert next(model.parameters()).device.type == device
        assert defenses["reverse-attack"].tasks[0].negatives.device.type == device
        results[device] = {(r["attack"]["name"], r["attack"].get("through"),
                            (r.get("defense") or {}).get("label")): r["accuracy"] for r in records}
        assert len(records) == 8 and all(store.arrays(r)["correct"].shape == (40,) for r in records)
    assert results["cpu"].keys() == results[GPU].keys()
    for key, acc in results["cpu"].items():
        assert abs(results[GPU][key] - acc) <= 3 / 40 + 1e-9, key  # a borderline image may flip


@cuda_only
def test_adaptive_protocol_on_cuda(tmp_path):
    from advrepair.defenses import JPEGCompression, RandomResizePad
    from advrepair.evaluation import ModelEntry, ResultsStore
    from advrepair.evaluation.adaptive import AdaptiveConfig, DefenseUnderTest, run_adaptive
    from conftest import make_shapes

    data = make_shapes(8, seed=5, classes=4)
    torch.manual_seed(0)
    model = SmallCNN(num_classes=4, width=8, feature_dim=32).eval()
    config = AdaptiveConfig(eps=0.1, steps=2, eot_draws=2, unroll_steps=1, lambdas=(), square_queries=3,
                            randomized_draws=2)
    for label, defense in (("jpeg", JPEGCompression(75)), ("resize-pad", RandomResizePad(seed=0))):
        summary = run_adaptive(data, ModelEntry("cnn", model), DefenseUnderTest.build(label, defense, config),
                               config, ResultsStore(tmp_path / label), batch_size=8, device="auto", progress=False)
        assert {"static", "bpda", "full-gradient", "square"} <= set(summary["rows"])
    assert next(model.parameters()).device.type == "cuda"


@cuda_only
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_attacks_through_reduced_precision_on_cuda(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = prepare_module(_cnn(channels=3), GPU)
    fast = AutocastModule(model, GPU, precision)
    x = _images(8, channels=3).to(GPU)
    with torch.no_grad():
        ref = model(x)
    y = ref.argmax(1)
    for name, params in (("pgd", {"alpha": 0.02, "steps": 3}), ("apgd-ce", {"steps": 3})):
        adv = make_attack(name, fast, eps=0.05, **params)(x, y)
        assert adv.dtype == torch.float32 and adv.device == x.device
        assert (adv - x).abs().max() <= 0.05 + 1e-6
        with torch.no_grad():
            assert torch.nn.functional.cross_entropy(model(adv), y) > torch.nn.functional.cross_entropy(ref, y)


@cuda_only
def test_channels_last_attacks_and_repairs_on_cuda():
    from advrepair.defenses import ReverseAttack

    model = prepare_module(_cnn(channels=3), GPU, channels_last=True)
    x = prepare_images(_images(6, channels=3), GPU, channels_last=True)
    y = model(x).argmax(1)
    for name in ("fab", "fab-t", "apgd-ce", "square", "difgsm"):
        adv = make_attack(name, model, eps=0.05, **_GPU_ATTACKS[name])(x, y)
        assert adv.device == x.device and (adv - x).abs().max() <= 0.05 + 1e-6, name
    tasks = [(prepare_module(_gpu_task(n, model), GPU, channels_last=True), 1.0)
             for n in ("contrastive", "rotation", "inpainting")]
    repaired = ReverseAttack(model, tasks, eps_v=0.05, steps=2)(x)
    assert repaired.device == x.device and (repaired - x).abs().max() <= 0.05 + 1e-6


@cuda_only
def test_checkpoints_load_onto_cuda(tmp_path):
    from advrepair.models import ModelCard, load_checkpoint, save_checkpoint

    model = _cnn(channels=3)
    save_checkpoint(prepare_module(_cnn(channels=3), GPU), tmp_path / "m",
                    ModelCard(kind="classifier", arch=model.arch, config=model.config))
    loaded, _ = load_checkpoint(tmp_path / "m", map_location=GPU)
    assert all(t.device.type == "cuda" for t in list(loaded.parameters()) + list(loaded.buffers()))
    x = _images(4, channels=3)
    with torch.no_grad(), autocast_context(GPU, "fp32"):
        torch.testing.assert_close(loaded(x.to(GPU)).cpu(), model(x), atol=2e-3, rtol=2e-3)


@cuda_only
def test_training_on_cuda(tmp_path):
    from advrepair.training import ClassifierRecipe, SSLRecipe, train_classifier, train_ssl_task
    from advrepair.training.checkpointing import EpochCheckpoint
    from conftest import make_shapes

    data = make_shapes(64, seed=6, classes=4)
    torch.manual_seed(0)
    model = SmallCNN(num_classes=4, width=8, feature_dim=32)
    recipe = ClassifierRecipe(epochs=2, batch_size=32, adversarial=True, steps=1)
    history = train_classifier(model, data, recipe, device=GPU, progress=False,
                               resume=EpochCheckpoint(tmp_path / "ckpt", {"r": 1}))
    assert len(history) == 2 and next(model.parameters()).device.type == "cuda"
    for name in ("contrastive", "rotation", "inpainting"):
        task = _gpu_task(name, model)  # built on the CPU: train_ssl_task places it
        train_ssl_task(task, model, data, SSLRecipe(epochs=1, batch_size=32), device=GPU, progress=False)
        assert next(task.parameters()).device.type == "cuda", name
