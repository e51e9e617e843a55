"""Every public entry point outside attacks, defenses, checkpoints, datasets and the CLI
refuses bad input with an error that names the problem.

One table, ``CASES``: each row is a target (``"subpackage.Name"`` from that subpackage's
``__all__``), a call that feeds it bad input, the exception type expected and a regex the
message must match. The regexes name the actual problem (the bad value, the broken rule,
the expected shape), so a row cannot pass on an unrelated error (a crash further down, a
different check). ``test_every_public_name_is_covered_or_exempt`` makes sure every name in
the subpackages' ``__all__`` (and the public functions and classes of ``advrepair.runtime``,
which has no ``__all__``) has a row or an entry in ``EXEMPT`` saying why not.

Attacks and defense modules: tests/test_properties.py; checkpoints: tests/test_checkpoint.py;
datasets: tests/test_data.py; the CLI: tests/test_cli.py.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

import advrepair.adaptive as adaptive_pkg
import advrepair.engine as engine_pkg
import advrepair.evaluation as evaluation_pkg
import advrepair.models as models_pkg
import advrepair.report as report_pkg
import advrepair.runtime as runtime_mod
import advrepair.ssl as ssl_pkg
import advrepair.training as training_pkg
from advrepair.adaptive import (BPDA, EOT, DefenseAwarePGD, black_box_flag, gradient_flag, lambda_sweep,
                                monotonicity_flag, randomized_accuracy, randomness_flag)
from advrepair.data import ImageDataset
from advrepair.engine import (MomentumSignStep, default_step_rule, project, projected_gradient,
                              random_direction, random_start, random_start_numbers, relative_tanh_surrogate,
                              seeded_random_start, soft_sign_surrogate, tanh_surrogate)
from advrepair.enums import Norm
from advrepair.errors import CheckpointError, InputError
from advrepair.evaluation import (AttackSpec, ModelEntry, ResultsStore, accuracy_of, evaluate_attack, evaluate_matrix,
                                  images_for_stderr, worst_case)
from advrepair.evaluation.adaptive import AdaptiveConfig
from advrepair.models import (Classifier, Normalize, PreActResNet18, SmallCNN, SmallVGG, WideResNet, build_model,
                              register_architecture, wrap_model, wrn_28_10)
from advrepair.report import accuracy_table, cost_table, write_report
from advrepair.runtime import (AutocastModule, autocast_context, has_convolutions, layout_of, parse_precision,
                               prepare_images, prepare_module, resolve_device)
from advrepair.ssl import (N_AUG_NUMBERS, AugmentConfig, ContrastiveHead, ContrastiveTask, InpaintingNet,
                           InpaintingTask, RotationHead, RotationTask, augment, augment_views, build_task,
                           center_mask, check_task_name, multiview_contrastive_loss, nt_xent, random_rect_mask,
                           rotate_all, rotation_accuracy, task_from_checkpoint_parts)
from advrepair.training import (ClassifierRecipe, PurifierRecipe, SSLRecipe, measure_training_cost,
                                train_classifier, train_ssl_task)
from conftest import make_shapes

# ---------------------------------------------------------------- small shared inputs

SIZE, CLASSES = 28, 4


def _model() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(in_channels=1, num_classes=CLASSES, input_size=SIZE, width=4, feature_dim=16).eval()


MODEL = _model()
X = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1])


def _with_pixel(x: torch.Tensor, value: float) -> torch.Tensor:
    out = x.clone()
    out.view(-1)[-1] = value
    return out


NAN_X = _with_pixel(X, float("nan"))
BRIGHT_X = _with_pixel(X, 1.5)  # one pixel above 1


def _empty_dataset() -> ImageDataset:
    return ImageDataset(name="empty", images=torch.zeros(0, 1, SIZE, SIZE, dtype=torch.uint8),
                        labels=torch.zeros(0, dtype=torch.long), classes=[f"c{k}" for k in range(CLASSES)])


def _color_dataset() -> ImageDataset:
    gray = make_shapes(8, seed=0)
    return ImageDataset(name="color", images=gray.images.expand(-1, 3, -1, -1).contiguous(), labels=gray.labels,
                        classes=gray.classes)


class _SSLIdentity(nn.Module):
    """The least a defense-aware attack needs: forward and a per-image ssl_loss."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def ssl_loss(self, images: torch.Tensor, stream: str = "measure", differentiable: bool = False) -> torch.Tensor:
        return images.flatten(1).mean(1)


def _contrastive_task() -> ContrastiveTask:
    torch.manual_seed(0)
    return ContrastiveTask(ContrastiveHead(16, 8, 4), n_views=2, negatives=torch.rand(4, 1, SIZE, SIZE))


def _rotation_task() -> RotationTask:
    torch.manual_seed(0)
    return RotationTask(RotationHead("image", in_channels=1, width=2))


def _inpainting_task() -> InpaintingTask:
    torch.manual_seed(0)
    return InpaintingTask(InpaintingNet(1, SIZE, 2))


def _record(**extra: Any) -> dict[str, Any]:
    return {"key": "k", "dataset": "shapes", "model": "m", "attack": {"name": "pgd"}, "defense": None,
            "n_images": 2, "accuracy": 0.5, "stderr": 0.3, "attack_seconds": 0.1, "defense_seconds": 0.0, **extra}


def _a_file(tmp: Path) -> Path:
    (tmp / "not-a-folder").write_text("x")
    return tmp / "not-a-folder"


def _corrupt_store(tmp: Path, text: str) -> ResultsStore:
    (tmp / "results.json").write_text(text)
    return ResultsStore(tmp)


def _ray(tmp: Path, n_images: int = 4, **kwargs: Any) -> Any:
    # argument checks come before Ray is imported or started: no cluster, no Ray needed
    from advrepair.evaluation.distributed import evaluate_matrix_ray

    return evaluate_matrix_ray(make_shapes(4).subset(range(n_images)), [ModelEntry("m", MODEL)],
                               [AttackSpec("clean")], ResultsStore(tmp), **kwargs)


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    target: str                        # "subpackage.Name" the row covers
    why: str                           # what is wrong with the input (the test id)
    call: Callable[[Path], Any]        # feeds the bad input; gets a fresh temporary folder
    match: str                         # regex the message must match
    error: type[BaseException] = InputError

    @property
    def id(self) -> str:
        return f"{self.target}: {self.why}"


CASES: list[Case] = [
    # ---- advrepair.adaptive
    Case("adaptive.BPDA", "defense not callable", lambda t: BPDA("median"), r"BPDA needs a callable defense"),
    Case("adaptive.BPDA", "surrogate not callable", lambda t: BPDA(nn.Identity(), surrogate=3),
         r"surrogate must be None \(identity\) or callable"),
    Case("adaptive.EOT", "zero draws", lambda t: EOT(MODEL, draws=0), r"draws must be an integer >= 1, got 0"),
    Case("adaptive.EOT", "model not callable", lambda t: EOT("model"), r"EOT needs a callable model"),
    Case("adaptive.DefenseAwarePGD", "defense without ssl_loss",
         lambda t: DefenseAwarePGD(MODEL, nn.Identity(), lambda_s=1.0), r"needs a defense with an ssl_loss method"),
    Case("adaptive.DefenseAwarePGD", "negative lambda_s",
         lambda t: DefenseAwarePGD(MODEL, _SSLIdentity(), lambda_s=-1.0), r"lambda_s must be >= 0"),
    Case("adaptive.DefenseAwarePGD", "NaN images",
         lambda t: DefenseAwarePGD(MODEL, _SSLIdentity(), eps=0.1, alpha=0.05, steps=1)(NAN_X, Y), r"NaN"),
    Case("adaptive.lambda_sweep", "no lambdas",
         lambda t: lambda_sweep(MODEL, _SSLIdentity(), X, Y, [], eps=0.1, alpha=0.05, steps=1),
         r"lambdas must be a non-empty sequence"),
    Case("adaptive.lambda_sweep", "images above 1",
         lambda t: lambda_sweep(MODEL, _SSLIdentity(), BRIGHT_X, Y, [0.0], eps=0.1, alpha=0.05, steps=1),
         r"\[0, 1\]"),
    Case("adaptive.lambda_sweep", "one label for two images",
         lambda t: lambda_sweep(MODEL, _SSLIdentity(), X, Y[:1], [0.0], eps=0.1, alpha=0.05, steps=1),
         r"labels must have shape \(2,\)"),
    Case("adaptive.lambda_sweep", "defense without ssl_loss",
         lambda t: lambda_sweep(MODEL, nn.Identity(), X, Y, [0.0], eps=0.1, alpha=0.05, steps=1),
         r"needs a defense with an ssl_loss method"),
    Case("adaptive.black_box_flag", "accuracy above 1", lambda t: black_box_flag({"pgd": 1.5}, {"square": 0.2}),
         r"white_box\['pgd'\] must be an accuracy in \[0, 1\]"),
    Case("adaptive.black_box_flag", "list instead of dict", lambda t: black_box_flag({"pgd": 0.3}, [0.2]),
         r"black_box must be a dict"),
    Case("adaptive.black_box_flag", "negative margin",
         lambda t: black_box_flag({"pgd": 0.3}, {"square": 0.2}, margin=-0.1), r"margin must be >= 0"),
    Case("adaptive.gradient_flag", "NaN images", lambda t: gradient_flag(MODEL, NAN_X, Y), r"NaN"),
    Case("adaptive.gradient_flag", "float labels", lambda t: gradient_flag(MODEL, X, Y.float()),
         r"labels must be integer class indices"),
    Case("adaptive.monotonicity_flag", "triples instead of pairs", lambda t: monotonicity_flag([(10, 0.5, 1)]),
         r"\(strength, accuracy\) pairs"),
    Case("adaptive.monotonicity_flag", "NaN accuracy",
         lambda t: monotonicity_flag([(10, 0.5), (20, float("nan"))]), r"must be an accuracy in \[0, 1\], got nan"),
    Case("adaptive.monotonicity_flag", "negative tolerance", lambda t: monotonicity_flag([(10, 0.5)], -0.1),
         r"tolerance must be >= 0"),
    Case("adaptive.randomness_flag", "one pass compares nothing", lambda t: randomness_flag(MODEL, X, passes=1),
         r"passes must be an integer >= 2, got 1"),
    Case("adaptive.randomness_flag", "images above 1", lambda t: randomness_flag(MODEL, BRIGHT_X), r"\[0, 1\]"),
    Case("adaptive.randomized_accuracy", "zero draws", lambda t: randomized_accuracy(MODEL, X, Y, draws=0),
         r"draws must be an integer >= 1, got 0"),
    Case("adaptive.randomized_accuracy", "three labels for two images",
         lambda t: randomized_accuracy(MODEL, X, torch.tensor([0, 1, 2])), r"labels must have shape \(2,\)"),

    # ---- advrepair.engine
    Case("engine.projected_gradient", "negative steps",
         lambda t: projected_gradient(X, lambda z, k: z.sum((1, 2, 3)), center=X, eps=0.1, step_size=0.01,
                                      steps=-1), r"steps must be an integer >= 0, got -1"),
    Case("engine.projected_gradient", "negative eps",
         lambda t: projected_gradient(X, lambda z, k: z.sum((1, 2, 3)), center=X, eps=-0.1, step_size=0.01,
                                      steps=1), r"eps must be >= 0, got -0.1"),
    Case("engine.projected_gradient", "a negative per-image eps",
         lambda t: projected_gradient(X, lambda z, k: z.sum((1, 2, 3)), center=X, eps=torch.tensor([0.1, -0.1]),
                                      step_size=0.01, steps=1), r"eps must be >= 0 for every image"),
    Case("engine.projected_gradient", "NaN step size",
         lambda t: projected_gradient(X, lambda z, k: z.sum((1, 2, 3)), center=X, eps=0.1,
                                      step_size=float("nan"), steps=1), r"step_size must be >= 0, got nan"),
    Case("engine.projected_gradient", "start and center of other shapes",
         lambda t: projected_gradient(X, lambda z, k: z.sum((1, 2, 3)), center=X[:1], eps=0.1, step_size=0.01,
                                      steps=1), r"start and center must have the same \(B, \.\.\.\) shape"),
    Case("engine.projected_gradient", "loss not callable",
         lambda t: projected_gradient(X, 0.5, center=X, eps=0.1, step_size=0.01, steps=1),
         r"loss_fn must be callable"),
    Case("engine.projected_gradient", "unknown norm",
         lambda t: projected_gradient(X, lambda z, k: z.sum((1, 2, 3)), center=X, eps=0.1, step_size=0.01,
                                      steps=1, norm="L3"), r"unknown norm 'L3'"),
    Case("engine.project", "negative eps", lambda t: project(X, X, -0.1, Norm.LINF), r"eps must be >= 0"),
    Case("engine.project", "unknown norm", lambda t: project(X, X, 0.1, "L1"), r"unknown norm 'L1'"),
    Case("engine.project", "x and center of other shapes", lambda t: project(X, X[0], 0.1, Norm.L2),
         r"x and center must have the same \(B, \.\.\.\) shape"),
    Case("engine.project", "per-image eps of the wrong length",
         lambda t: project(X, X, torch.tensor([0.1, 0.1, 0.1]), Norm.LINF), r"one budget per image \(2\)"),
    Case("engine.random_start", "uniforms of the wrong shape",
         lambda t: random_start(X, 0.1, Norm.L2, torch.rand(2, SIZE * SIZE)),
         rf"uniform numbers of shape \(2, {2 * SIZE * SIZE + 1}\) for L2"),
    Case("engine.random_start", "NaN eps", lambda t: random_start(X, float("nan"), Norm.LINF, torch.rand_like(X)),
         r"eps must be >= 0, got nan"),
    Case("engine.seeded_random_start", "NaN eps", lambda t: seeded_random_start(X, float("nan"), Norm.LINF, 0, "s"),
         r"eps must be >= 0, got nan"),
    Case("engine.seeded_random_start", "not a tensor", lambda t: seeded_random_start([0.5], 0.1, Norm.LINF, 0, "s"),
         r"center and center must be tensors"),
    Case("engine.random_direction", "unknown norm", lambda t: random_direction(X, "L3", 0, "s"), r"unknown norm 'L3'"),
    Case("engine.random_direction", "not a tensor", lambda t: random_direction("x", Norm.L2, 0, "s"),
         r"center and center must be tensors"),
    Case("engine.random_start_numbers", "unknown norm", lambda t: random_start_numbers(X, "Linfinity"),
         r"unknown norm 'Linfinity'"),
    Case("engine.MomentumSignStep", "negative decay", lambda t: MomentumSignStep(decay=-0.5),
         r"decay must be >= 0, got -0.5"),
    Case("engine.default_step_rule", "unknown norm", lambda t: default_step_rule("L0"), r"unknown norm 'L0'"),
    Case("engine.tanh_surrogate", "zero temperature", lambda t: tanh_surrogate(0.0),
         r"temperature must be > 0, got 0.0"),
    Case("engine.soft_sign_surrogate", "negative temperature", lambda t: soft_sign_surrogate(-1.0),
         r"temperature must be > 0, got -1.0"),
    Case("engine.relative_tanh_surrogate", "NaN temperature", lambda t: relative_tanh_surrogate(float("nan")),
         r"temperature must be a number, got NaN"),

    # ---- advrepair.evaluation
    Case("evaluation.AttackSpec", "unknown attack", lambda t: AttackSpec("pgdd"), r"unknown attack 'pgdd'"),
    Case("evaluation.AttackSpec", "unknown through mode", lambda t: AttackSpec("pgd", through="magic"),
         r"through must be None or one of \('bpda', 'full'\)"),
    Case("evaluation.AttackSpec", "clean through a defense", lambda t: AttackSpec("clean", through="bpda"),
         r"clean spec has no attack"),
    Case("evaluation.AttackSpec", "params as a string", lambda t: AttackSpec("pgd", "eps=0.1"),
         r"params must be a dict"),
    Case("evaluation.ModelEntry", "classifier not a module", lambda t: ModelEntry("m", "cnn.safetensors"),
         r"classifier must be an nn.Module"),
    Case("evaluation.ModelEntry", "defense not callable", lambda t: ModelEntry("m", MODEL, defenses={"jpeg": 75}),
         r"defense 'jpeg' must be a callable"),
    Case("evaluation.evaluate_attack", "empty dataset",
         lambda t: evaluate_attack(_empty_dataset(), ModelEntry("m", MODEL), None, ResultsStore(t), row="r",
                                   progress=False), r"non-empty ImageDataset"),
    Case("evaluation.evaluate_attack", "an attack name instead of an Attack",
         lambda t: evaluate_attack(make_shapes(4), ModelEntry("m", MODEL), "pgd", ResultsStore(t), row="r",
                                   progress=False), r"attack must be a built Attack"),
    Case("evaluation.evaluate_attack", "no row name",
         lambda t: evaluate_attack(make_shapes(4), ModelEntry("m", MODEL), None, ResultsStore(t), row=" ",
                                   progress=False), r"row must name the row"),
    Case("evaluation.evaluate_attack", "zero batch size",
         lambda t: evaluate_attack(make_shapes(4), ModelEntry("m", MODEL), None, ResultsStore(t), row="r",
                                   batch_size=0, progress=False), r"batch_size must be an integer >= 1, got 0"),
    Case("evaluation.evaluate_matrix", "empty dataset",
         lambda t: evaluate_matrix(_empty_dataset(), [ModelEntry("m", MODEL)], [AttackSpec("clean")],
                                   ResultsStore(t), progress=False), r"empty dataset"),
    Case("evaluation.evaluate_matrix", "zero batch size",
         lambda t: evaluate_matrix(make_shapes(4), [ModelEntry("m", MODEL)], [AttackSpec("clean")],
                                   ResultsStore(t), batch_size=0, progress=False),
         r"batch_size must be an integer >= 1, got 0"),
    Case("evaluation.evaluate_matrix", "nonsense device",
         lambda t: evaluate_matrix(make_shapes(4), [ModelEntry("m", MODEL)], [AttackSpec("clean")],
                                   ResultsStore(t), device="gpu-please", progress=False),
         r"unknown device 'gpu-please'"),
    Case("evaluation.evaluate_matrix", "a bare model instead of a ModelEntry",
         lambda t: evaluate_matrix(make_shapes(4), [MODEL], [AttackSpec("clean")], ResultsStore(t),
                                   progress=False), r"models must be a list of ModelEntry"),
    Case("evaluation.evaluate_matrix", "attack names instead of AttackSpecs",
         lambda t: evaluate_matrix(make_shapes(4), [ModelEntry("m", MODEL)], ["pgd"], ResultsStore(t),
                                   progress=False), r"attacks must be a list of AttackSpec"),
    Case("evaluation.evaluate_matrix", "a folder instead of a store",
         lambda t: evaluate_matrix(make_shapes(4), [ModelEntry("m", MODEL)], [AttackSpec("clean")], t,
                                   progress=False), r"store must be a ResultsStore"),
    Case("evaluation.evaluate_matrix", "key_images below the shard size",
         lambda t: evaluate_matrix(make_shapes(4), [ModelEntry("m", MODEL)], [AttackSpec("clean")],
                                   ResultsStore(t), key_images=2, progress=False),
         r"key_images=2 is smaller than this shard's 4 images"),
    Case("evaluation.accuracy_of", "float scores instead of booleans",
         lambda t: accuracy_of(torch.tensor([1.0, 0.0])), r"needs a \(N,\) bool tensor"),
    Case("evaluation.accuracy_of", "a list", lambda t: accuracy_of([True, False]), r"needs a \(N,\) bool tensor"),
    Case("evaluation.images_for_stderr", "zero standard error", lambda t: images_for_stderr(0.0),
         r"max_stderr must be > 0, got 0.0"),
    Case("evaluation.images_for_stderr", "accuracy above 1", lambda t: images_for_stderr(0.05, p=1.5),
         r"p must be an accuracy in \[0, 1\], got 1.5"),
    Case("evaluation.ResultsStore", "results.json that is not JSON", lambda t: _corrupt_store(t, "[{oops"),
         r"results.json is not valid JSON"),
    Case("evaluation.ResultsStore", "results.json that is not a list", lambda t: _corrupt_store(t, "{}"),
         r"must hold a JSON list of records"),
    Case("evaluation.worst_case", "no records", lambda t: worst_case(ResultsStore(t), []),
         r"needs at least one record"),
    Case("evaluation.worst_case", "a path instead of a store", lambda t: worst_case(str(t), [_record()]),
         r"store must be a ResultsStore"),
    Case("evaluation.worst_case", "records without n_images", lambda t: worst_case(ResultsStore(t), [{"key": "k"}]),
         r"result records \(dicts with n_images\)"),
    Case("evaluation.adaptive.AdaptiveConfig", "negative eps", lambda t: AdaptiveConfig(eps=-0.1),
         r"eps must be > 0, got -0.1"),
    Case("evaluation.adaptive.AdaptiveConfig", "negative alpha", lambda t: AdaptiveConfig(eps=0.1, alpha=-0.01),
         r"alpha must be > 0"),
    Case("evaluation.adaptive.AdaptiveConfig", "zero steps", lambda t: AdaptiveConfig(eps=0.1, steps=0),
         r"steps must be an integer >= 1, got 0"),
    Case("evaluation.adaptive.AdaptiveConfig", "zero surrogate temperature",
         lambda t: AdaptiveConfig(eps=0.1, surrogate_temperature=0.0), r"surrogate_temperature must be > 0"),
    Case("evaluation.adaptive.AdaptiveConfig", "NaN lambda",
         lambda t: AdaptiveConfig(eps=0.1, lambdas=(0.0, float("nan"))), r"lambdas must be >= 0"),
    Case("evaluation.distributed.evaluate_matrix_ray", "zero workers", lambda t: _ray(t, workers=0),
         r"workers must be an integer >= 1, got 0"),
    Case("evaluation.distributed.evaluate_matrix_ray", "zero batch size", lambda t: _ray(t, batch_size=0),
         r"batch_size must be .*>= 1"),
    Case("evaluation.distributed.evaluate_matrix_ray", "no images", lambda t: _ray(t, n_images=0),
         r"no images to evaluate"),
    Case("evaluation.distributed.evaluate_matrix_ray", "unknown device", lambda t: _ray(t, device="gpu-please"),
         r"gpu-please"),
    Case("evaluation.distributed.evaluate_matrix_ray", "negative GPUs", lambda t: _ray(t, gpus_per_worker=-1),
         r"gpus_per_worker must be a number >= 0"),
    Case("evaluation.ResultsStore", "a file as the output folder", lambda t: ResultsStore(_a_file(t)),
         r"is a file; give a folder"),
    Case("evaluation.ResultsStore", "a record without a key", lambda t: ResultsStore(t).add({"accuracy": 1.0}),
         r"record must be a dict with a string 'key'"),

    # ---- advrepair.models
    Case("models.build_model", "unknown architecture", lambda t: build_model("resnet-9000"),
         r"unknown architecture 'resnet-9000'", CheckpointError),
    Case("models.wrap_model", "one mean/std value for three channels",
         lambda t: wrap_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)), (0.5,), (0.25,)),
         r"mean and std need one value per input channel \(3\)"),
    Case("models.wrap_model", "zero std",
         lambda t: wrap_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(2)), (0.5,), (0.0,)),
         r"std must be > 0 in every channel"),
    Case("models.register_architecture", "empty name", lambda t: register_architecture("", SmallCNN),
         r"architecture name must be a non-empty string"),
    Case("models.register_architecture", "builder not callable",
         lambda t: register_architecture("my-cnn", "SmallCNN"), r"'my-cnn' needs a callable builder"),
    Case("models.Classifier", "one mean value for three channels",
         lambda t: Classifier(in_channels=3, num_classes=10, input_size=32, mean=(0.5,), std=(0.5,)),
         r"mean/std need 3 values"),
    Case("models.Normalize", "zero std", lambda t: Normalize((0.5,), (0.0,)), r"std must be > 0 in every channel"),
    Case("models.Normalize", "three channels for a one-channel normalization",
         lambda t: Normalize((0.5,), (0.5,))(torch.rand(2, 3, 8, 8)), r"images must be \(B, 1, H, W\)"),
    Case("models.SmallCNN", "three-channel images", lambda t: MODEL(torch.rand(2, 3, SIZE, SIZE)),
         r"SmallCNN takes \(B, 1, 28, 28\) images \(1 channel\(s\), 28x28 pixels\), got \(2, 3, 28, 28\)"),
    Case("models.SmallCNN", "32x32 images", lambda t: MODEL.features(torch.rand(2, 1, 32, 32)),
         r"28x28 pixels\), got \(2, 1, 32, 32\)"),
    Case("models.SmallCNN", "uint8 images", lambda t: MODEL((X * 255).to(torch.uint8)),
         r"float images in \[0, 1\], got dtype torch.uint8"),
    Case("models.SmallCNN", "zero classes", lambda t: SmallCNN(num_classes=0), r"num_classes must be an integer >= 1"),
    Case("models.SmallVGG", "images of another size",
         lambda t: SmallVGG(in_channels=1, input_size=SIZE, width=2, feature_dim=8)(torch.rand(1, 1, 32, 32)),
         r"SmallVGG takes \(B, 1, 28, 28\) images"),
    Case("models.PreActResNet18", "one-channel images", lambda t: PreActResNet18()(torch.rand(1, 1, 32, 32)),
         r"PreActResNet18 takes \(B, 3, H, W\) images \(3 channel\(s\)\), got \(1, 1, 32, 32\)"),
    Case("models.WideResNet", "depth not 6n + 4", lambda t: WideResNet(depth=11, widen=1),
         r"depth must be 6n \+ 4, got 11"),
    Case("models.WideResNet", "images without a channel axis",
         lambda t: WideResNet(depth=10, widen=1)(torch.rand(3, 32, 32)), r"takes \(B, 3, H, W\) images"),
    Case("models.wrn_28_10", "one mean value for three channels", lambda t: wrn_28_10(mean=(0.5,)),
         r"mean/std need 3 values"),

    # ---- advrepair.ssl
    Case("ssl.augment", "NaN images", lambda t: augment(NAN_X, torch.rand(2, N_AUG_NUMBERS)), r"NaN"),
    Case("ssl.augment", "uniforms of the wrong shape", lambda t: augment(X, torch.rand(2, 3)),
         r"u must have shape \(B, 10\) for 2 images, got \(2, 3\)"),
    Case("ssl.augment", "two-channel images", lambda t: augment(torch.rand(2, 2, 8, 8), torch.rand(2, N_AUG_NUMBERS)),
         r"gray \(1 channel\) or RGB \(3 channel\) images"),
    Case("ssl.augment_views", "one view's uniforms per image",
         lambda t: augment_views(X, torch.rand(2, N_AUG_NUMBERS)), r"u must have shape \(B, n, 10\)"),
    Case("ssl.augment_views", "images above 1", lambda t: augment_views(BRIGHT_X, torch.rand(2, 3, N_AUG_NUMBERS)),
         r"\[0, 1\]"),
    Case("ssl.AugmentConfig", "crop scale lo > hi", lambda t: AugmentConfig(crop_scale=(0.8, 0.2)),
         r"crop_scale must satisfy 0 < lo <= hi <= 1"),
    Case("ssl.AugmentConfig", "probability above 1", lambda t: AugmentConfig(jitter_p=1.5),
         r"jitter_p must lie in \[0, 1\]"),
    Case("ssl.ContrastiveHead", "zero input features", lambda t: ContrastiveHead(0),
         r"in_dim must be an integer >= 1, got 0"),
    Case("ssl.ContrastiveTask", "zero temperature", lambda t: ContrastiveTask(ContrastiveHead(16, 8, 4), tau=0.0),
         r"tau must be > 0"),
    Case("ssl.ContrastiveTask", "one view", lambda t: ContrastiveTask(ContrastiveHead(16, 8, 4), n_views=1),
         r"n_views \(positives are pairs of views\) must be an integer >= 2"),
    Case("ssl.ContrastiveTask", "negatives above 1",
         lambda t: ContrastiveTask(ContrastiveHead(16, 8, 4), negatives=2 * torch.ones(3, 1, SIZE, SIZE)),
         r"negatives must lie in \[0, 1\]"),
    Case("ssl.ContrastiveTask", "loss on NaN images",
         lambda t: _contrastive_task().per_image_loss(MODEL, NAN_X, torch.rand(2, 2, N_AUG_NUMBERS), None), r"NaN"),
    Case("ssl.ContrastiveTask", "training loss with uniforms for four views",
         lambda t: _contrastive_task().training_loss(MODEL, X, torch.rand(2, 4, N_AUG_NUMBERS)),
         r"u of shape \(2, 2, 10\)"),
    Case("ssl.multiview_contrastive_loss", "one view per image",
         lambda t: multiview_contrastive_loss(torch.rand(2, 1, 4), torch.rand(3, 4), 0.2),
         r"z_views \(B, n >= 2, d\)"),
    Case("ssl.multiview_contrastive_loss", "zero temperature",
         lambda t: multiview_contrastive_loss(torch.rand(2, 2, 4), torch.rand(3, 4), 0.0), r"tau must be > 0"),
    Case("ssl.nt_xent", "batches of different sizes", lambda t: nt_xent(torch.rand(2, 4), torch.rand(3, 4), 0.2),
         r"z1 and z2 must be \(N, d\) embeddings of the same shape"),
    Case("ssl.nt_xent", "negative temperature", lambda t: nt_xent(torch.rand(2, 4), torch.rand(2, 4), -0.2),
         r"tau must be > 0"),
    Case("ssl.InpaintingNet", "images of another size",
         lambda t: InpaintingNet(1, SIZE, 2)(torch.rand(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)),
         r"built for \(1, 28, 28\) images"),
    Case("ssl.InpaintingTask", "loss on images above 1",
         lambda t: _inpainting_task().per_image_loss(MODEL, BRIGHT_X, torch.empty(2, 0), None), r"\[0, 1\]"),
    Case("ssl.InpaintingTask", "unknown mask mode", lambda t: InpaintingTask(InpaintingNet(1, SIZE, 2), "diamond"),
         r"unknown mask mode 'diamond'"),
    Case("ssl.center_mask", "zero fraction", lambda t: center_mask(2, SIZE, SIZE, frac=0.0),
         r"frac .* must lie in \(0, 1\], got 0.0"),
    Case("ssl.center_mask", "empty batch", lambda t: center_mask(0, SIZE, SIZE), r"batch must be an integer >= 1"),
    Case("ssl.random_rect_mask", "rect_frac lo > hi",
         lambda t: random_rect_mask(torch.rand(2, 1, 4), SIZE, SIZE, rect_frac=(0.5, 0.2)),
         r"rect_frac must satisfy 0 < lo <= hi <= 1"),
    Case("ssl.random_rect_mask", "uniforms without the rectangle axis",
         lambda t: random_rect_mask(torch.rand(2, 4), SIZE, SIZE), r"u of shape \(B, R, 4\), got \(2, 4\)"),
    Case("ssl.random_rect_mask", "zero height", lambda t: random_rect_mask(torch.rand(2, 1, 4), 0, SIZE),
         r"height must be an integer >= 1"),
    Case("ssl.RotationHead", "three-channel images for a one-channel head",
         lambda t: RotationHead("image", in_channels=1, width=2)(torch.rand(2, 3, 8, 8)),
         r"takes \(N, 1, S, S\) images, got \(2, 3, 8, 8\)"),
    Case("ssl.RotationHead", "unknown source", lambda t: RotationHead("pixels"), r"source must be one of"),
    Case("ssl.RotationTask", "loss on NaN images",
         lambda t: _rotation_task().per_image_loss(MODEL, NAN_X, torch.empty(2, 0), None), r"NaN"),
    Case("ssl.RotationTask", "training loss on images above 1",
         lambda t: _rotation_task().training_loss(MODEL, BRIGHT_X, torch.empty(2, 0)), r"\[0, 1\]"),
    Case("ssl.RotationTask", "head of another task", lambda t: RotationTask(ContrastiveHead(4)),
         r"RotationTask needs a RotationHead"),
    Case("ssl.rotate_all", "non-square images", lambda t: rotate_all(torch.rand(2, 1, 28, 24)),
         r"square NCHW images \(B, C, S, S\), got \(2, 1, 28, 24\)"),
    Case("ssl.rotation_accuracy", "zero batch size",
         lambda t: rotation_accuracy(MODEL, _rotation_task(), X, batch_size=0), r"batch_size must be an integer >= 1"),
    Case("ssl.build_task", "unknown task", lambda t: build_task("jigsaw", MODEL),
         r"unknown self-supervised task 'jigsaw'"),
    Case("ssl.check_task_name", "not a name", lambda t: check_task_name(3), r"unknown self-supervised task 3"),
    Case("ssl.task_from_checkpoint_parts", "head of another task",
         lambda t: task_from_checkpoint_parts("rotation", ContrastiveHead(4), {}),
         r"a rotation task needs a RotationHead", CheckpointError),

    # ---- advrepair.training
    Case("training.ClassifierRecipe", "zero epochs", lambda t: ClassifierRecipe(epochs=0),
         r"epochs must be an integer >= 1, got 0"),
    Case("training.ClassifierRecipe", "negative learning rate", lambda t: ClassifierRecipe(lr=-1e-3),
         r"lr must be > 0, got -0.001"),
    Case("training.ClassifierRecipe", "unknown optimizer", lambda t: ClassifierRecipe(optimizer="adamw"),
         r"unknown optimizer 'adamw'"),
    Case("training.ClassifierRecipe", "unknown schedule", lambda t: ClassifierRecipe(schedule="step"),
         r"unknown schedule 'step'"),
    Case("training.ClassifierRecipe", "NaN adversarial budget",
         lambda t: ClassifierRecipe(adversarial=True, eps=float("nan")), r"eps must be a number, got NaN"),
    Case("training.ClassifierRecipe", "fractional batch size", lambda t: ClassifierRecipe(batch_size=12.5),
         r"batch_size must be an integer >= 1, got 12.5"),
    Case("training.SSLRecipe", "zero batch size", lambda t: SSLRecipe(batch_size=0),
         r"batch_size must be an integer >= 1, got 0"),
    Case("training.SSLRecipe", "NaN learning rate", lambda t: SSLRecipe(lr=float("nan")),
         r"lr must be a number, got NaN"),
    Case("training.SSLRecipe", "empty training subset", lambda t: SSLRecipe(train_subset=0),
         r"train_subset must be an integer >= 1, got 0"),
    Case("training.PurifierRecipe", "NaN learning rate", lambda t: PurifierRecipe(lr=float("nan")),
         r"lr must be a number, got NaN"),
    Case("training.PurifierRecipe", "negative crop padding", lambda t: PurifierRecipe(crop_padding=-1),
         r"crop_padding must be an integer >= 0, got -1"),
    Case("training.train_classifier", "empty dataset",
         lambda t: train_classifier(_model(), _empty_dataset(), ClassifierRecipe(epochs=1), progress=False),
         r"the training set 'empty' is empty"),
    Case("training.train_classifier", "color images for a gray model",
         lambda t: train_classifier(_model(), _color_dataset(), ClassifierRecipe(epochs=1), progress=False),
         r"takes 1-channel images but 'color' has 3-channel images"),
    Case("training.train_classifier", "16x16 images for a 28x28 model",
         lambda t: train_classifier(_model(), make_shapes(8, size=16), ClassifierRecipe(epochs=1), progress=False),
         r"takes 28x28 images but 'shapes' has 16x16 images"),
    Case("training.train_classifier", "more classes than outputs",
         lambda t: train_classifier(_model(), make_shapes(20, classes=10), ClassifierRecipe(epochs=1),
                                    progress=False), r"'shapes' has 10 classes but the model has 4 outputs"),
    Case("training.train_classifier", "tensors instead of a dataset",
         lambda t: train_classifier(_model(), X, ClassifierRecipe(epochs=1), progress=False),
         r"data must be an ImageDataset"),
    Case("training.train_classifier", "an SSL recipe",
         lambda t: train_classifier(_model(), make_shapes(8), SSLRecipe(), progress=False),
         r"recipe must be a ClassifierRecipe"),
    Case("training.train_ssl_task", "empty dataset",
         lambda t: train_ssl_task(_rotation_task(), _model(), _empty_dataset(), SSLRecipe(epochs=1), progress=False),
         r"the training set 'empty' is empty"),
    Case("training.train_ssl_task", "a task name instead of a task",
         lambda t: train_ssl_task("rotation", _model(), make_shapes(8), SSLRecipe(epochs=1), progress=False),
         r"task must be a SelfSupervisedTask"),
    Case("training.measure_training_cost", "train not callable",
         lambda t: measure_training_cost("train", {"m": MODEL}), r"train must be a callable"),
    Case("training.measure_training_cost", "no networks to count", lambda t: measure_training_cost(lambda: None, {}),
         r"needs a non-empty \{name: nn.Module\} mapping"),

    # ---- advrepair.report
    Case("report.write_report", "folder without results", lambda t: write_report(t / "no-eval-here"),
         r"no results.json in .*no-eval-here"),
    Case("report.accuracy_table", "records without attack and dataset", lambda t: accuracy_table([{"model": "m"}]),
         r"record 0 is not a result record \(missing \['attack', 'dataset'\]\)"),
    Case("report.accuracy_table", "a string", lambda t: accuracy_table("results.json"),
         r"needs a list of result records, got str"),
    Case("report.cost_table", "records without timings",
         lambda t: cost_table([_record(), {"model": "m", "attack": {}, "n_images": 2}]),
         r"record 1 is not a result record \(missing \['attack_seconds', 'defense_seconds'\]\)"),

    # ---- advrepair.runtime
    Case("runtime.resolve_device", "nonsense device", lambda t: resolve_device("graphics-card"),
         r"unknown device 'graphics-card'"),
    Case("runtime.resolve_device", "a number", lambda t: resolve_device(0), r"device must be a string"),
    Case("runtime.autocast_context", "fp16 on the CPU", lambda t: autocast_context("cpu", "fp16"),
         r"'fp16' needs a CUDA device"),
    Case("runtime.AutocastModule", "fp16 on the CPU", lambda t: AutocastModule(MODEL, "cpu", "half"),
         r"'fp16' needs a CUDA device"),
    Case("runtime.parse_precision", "unknown precision", lambda t: parse_precision("fp8"),
         r"unknown precision 'fp8'"),
    Case("runtime.prepare_module", "not a module", lambda t: prepare_module(lambda x: x, "cpu"),
         r"prepare_module needs an nn.Module"),
    Case("runtime.layout_of", "not a module", lambda t: layout_of(torch.zeros(2, 3, 4, 4)),
         r"layout_of needs an nn.Module"),
    Case("runtime.has_convolutions", "not a module", lambda t: has_convolutions([torch.zeros(2, 3, 4, 4)]),
         r"has_convolutions needs an nn.Module"),
    Case("runtime.prepare_images", "images without a batch axis", lambda t: prepare_images(X[0], "cpu"),
         r"4-D NCHW tensor, got \(1, 28, 28\)"),
]

# ---------------------------------------------------------------- what has no row, and why

EXEMPT: dict[str, str] = {
    # constants, type aliases, protocols and plain data classes: no input to reject
    "evaluation.CLEAN": "a constant (the attack name meaning 'no attack')",
    "evaluation.Accuracy": "plain frozen data class of two counts, built by accuracy_of",
    "evaluation.record_key": "hashes any keyword parts (non-JSON values through str): nothing is invalid",
    "engine.LoopTrace": "plain data class with empty defaults, filled by projected_gradient",
    "engine.LossFn": "a type alias",
    "engine.StepRule": "a Protocol (interface), not callable code",
    "engine.SignStep": "no constructor arguments; direction() maps a gradient tensor, whatever its shape",
    "engine.L2Step": "no constructor arguments; direction() maps a gradient tensor, whatever its shape",
    "engine.fast_input_gradients": "accepts anything: a non-module passes through untouched (tested)",
    "engine.is_thin_convolution": "a predicate: anything that is not an eligible Conv2d is False (tested)",
    "engine.tap_input_gradients_enabled": "takes no arguments",
    "engine.fused_conv_pool_available": "takes no arguments",
    "ssl.N_AUG_NUMBERS": "a constant",
    "ssl.TASK_NAMES": "a constant",
    "ssl.SelfSupervisedTask": "abstract base class; its concrete tasks have rows",
    "models.available_architectures": "takes no arguments",
    # covered in other test files
    "models.ModelCard": "tests/test_checkpoint.py",
    "models.load_checkpoint": "tests/test_checkpoint.py",
    "models.read_card": "tests/test_checkpoint.py",
    "models.save_checkpoint": "tests/test_checkpoint.py",
    "models.from_timm": "tests/test_adapters.py (timm missing; config handling via a fake timm)",
    "models.from_robustbench": "tests/test_adapters.py (unknown dataset and threat model, robustbench missing)",
    "models.Purifier": "tests/test_purifier.py::test_bad_arguments_raise_input_error",
    "models.Critic": "tests/test_purifier.py::test_bad_arguments_raise_input_error",
    "training.train_purifier": "tests/test_purifier.py::test_bad_arguments_raise_input_error",
    "training.train_on_transformation": "tests/test_adversarial_transformation.py (bad-arguments test)",
    "training.compare_training_cost": "tests/test_adversarial_transformation.py (bad-arguments test)",
    "training.fit_imitator": "tests/test_adversarial_transformation.py (bad-arguments test)",
}

PACKAGES = {"adaptive": adaptive_pkg, "engine": engine_pkg, "evaluation": evaluation_pkg, "models": models_pkg,
            "ssl": ssl_pkg, "training": training_pkg, "report": report_pkg}


def _public_names() -> set[str]:
    names = {f"{short}.{name}" for short, pkg in PACKAGES.items() for name in pkg.__all__}
    # advrepair.runtime has no __all__: its public functions and classes
    names |= {f"runtime.{name}" for name, obj in vars(runtime_mod).items()
              if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
              and obj.__module__ == runtime_mod.__name__}
    return names


def _resolve(target: str) -> Any:
    obj: Any = __import__("advrepair")
    for part in target.split("."):
        if not hasattr(obj, part):
            __import__(f"{obj.__name__}.{part}")
        obj = getattr(obj, part)
    return obj


def test_every_public_name_is_covered_or_exempt():
    public = _public_names()
    assert len(public) > 80, "fewer public names than expected: did an __all__ go missing?"
    covered = {c.target for c in CASES}
    missing = public - covered - set(EXEMPT)
    assert not missing, f"public names without a bad-input case (add a row to CASES or explain in EXEMPT): " \
                        f"{sorted(missing)}"
    stale = set(EXEMPT) - public
    assert not stale, f"EXEMPT names that are no longer public: {sorted(stale)}"
    both = set(EXEMPT) & covered
    assert not both, f"names both covered and exempt (drop the EXEMPT entry): {sorted(both)}"
    for target in covered:
        _resolve(target)  # every row names something that exists


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_a_clear_message(case: Case, tmp_path: Path):
    with pytest.raises(case.error, match=case.match):
        case.call(tmp_path)


# ---------------------------------------------------------------- the fixes keep valid input working


def test_write_report_on_a_missing_folder_creates_nothing(tmp_path):
    with pytest.raises(InputError):
        write_report(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


def test_valid_inputs_still_pass_the_new_checks(tmp_path):
    assert MODEL(X).shape == (2, CLASSES) and MODEL.features(X).shape == (2, 16)
    # networks with global pooling still take other image sizes
    assert WideResNet(depth=10, widen=1, num_classes=3)(torch.rand(1, 3, 16, 16)).shape == (1, 3)
    assert torch.equal(project(X, X, 0.1, "Linf"), project(X, X, 0.1, Norm.LINF))
    assert torch.equal(project(X + 1, X, float("inf"), Norm.LINF), torch.ones_like(X))
    out = projected_gradient(X, lambda z, k: z.sum((1, 2, 3)), center=X, eps=torch.tensor([0.1, 0.0]),
                             step_size=0.05, steps=0)
    assert torch.equal(out, X)
    assert accuracy_of(torch.tensor([True, False])).value == 0.5
    assert images_for_stderr(0.05, p=1.0) == 0
    assert monotonicity_flag([(10, 0.5), (20, 0.6)])["fired"]
    assert not black_box_flag({}, {})["fired"]
    assert randomized_accuracy(MODEL, X, Y, draws=1)["draws"] == 1
    assert center_mask(1, 8, 8, frac=1.0).sum() == 64
    assert augment_views(X, torch.rand(2, 3, N_AUG_NUMBERS)).shape == (6, 1, SIZE, SIZE)
    assert AttackSpec("PGD", {"eps": 0.1}).build(MODEL) is not None
    task = _contrastive_task()
    loss = task.per_image_loss(MODEL, X, torch.rand(2, 2, N_AUG_NUMBERS), task.context(MODEL))
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    store = ResultsStore(tmp_path)
    store.add(_record(), {"correct": torch.tensor([True, False]).numpy()})
    assert worst_case(store, store.records).value == 0.5
    assert "m" in accuracy_table(store.records) and "m" in cost_table(store.records)
    assert json.loads((tmp_path / "results.json").read_text())[0]["key"] == "k"
