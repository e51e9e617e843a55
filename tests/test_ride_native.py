"""RIDE's native engine (advrepair/engine/kernels/ride_step.c): the same fit as the grouped
engine and the one-by-one reference on both of its convolution paths (Winograd on even sizes,
direct on odd ones), bit-identical in any batch and thread count, and the cases it leaves to
the grouped engine."""
from __future__ import annotations

import pytest
import torch

from advrepair.defenses.ride import RIDE, RideNetSpec, resolve_network
from advrepair.defenses.ride.native_engine import native_engine_covers, pack_parameters
from advrepair.defenses.ride.networks import _draw_init
from advrepair.engine.native import load_kernel

pytestmark = pytest.mark.skipif(load_kernel("ride_step") is None, reason="no C compiler here")


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(b: int, hh: int, ww: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 1, hh, ww, generator=torch.Generator().manual_seed(seed))


def _grouped(monkeypatch: pytest.MonkeyPatch, defense: RIDE, x: torch.Tensor, **kwargs):  # noqa: ANN202
    with monkeypatch.context() as patch:
        patch.setenv("ADVREPAIR_NATIVE_KERNELS", "0")
        assert not native_engine_covers(resolve_network(defense.network, 1), 1, defense.dropout, x.device, x.dtype)
        return defense.fit(x, **kwargs)


@pytest.mark.parametrize("size", [(10, 12), (9, 11)], ids=["winograd", "direct"])
@pytest.mark.parametrize("mode, batch, dropout", [("ride", 2, 0.5), ("idip", 1, 0.5), ("dae", 1, 0.0), ("dip", 2, 0.5)])
def test_native_engine_fits_as_the_grouped_engine_and_the_reference(monkeypatch, size, mode, batch, dropout):
    x, clean = _images(3, *size), _images(3, *size, seed=5)
    defense = RIDE(mode=mode, iterations=5, checkpoints=2, batch=batch, lr=1e-2, seed=3, estimate_samples=2,
                   dropout=dropout)
    assert native_engine_covers(resolve_network("auto", 1), 1, dropout, x.device, x.dtype)
    native = defense.fit(x, clean=clean, trajectory=True)
    grouped = _grouped(monkeypatch, defense, x, clean=clean, trajectory=True)
    reference = defense.fit_sequential(x, clean=clean, trajectory=True)
    one_step = RIDE(mode=mode, iterations=1, checkpoints=1, batch=batch, lr=1e-2, seed=3, estimate_samples=2,
                    dropout=dropout).fit(x).estimate
    assert (native.estimate - one_step).abs().max() > 1e-3  # the fit moved far beyond the tolerance
    for other in (grouped, reference):
        torch.testing.assert_close(native.estimate, other.estimate, atol=1e-5, rtol=0)
        torch.testing.assert_close(native.checkpoints, other.checkpoints, atol=1e-5, rtol=0)
        torch.testing.assert_close(native.final_loss, other.final_loss, atol=1e-6, rtol=1e-5)
        assert native.trajectory is not None and other.trajectory is not None
        torch.testing.assert_close(native.trajectory.to_clean, other.trajectory.to_clean, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", [RideNetSpec(width=16, depth=2, dropout_layers=(1,)),
                                  RideNetSpec(width=16, depth=5, dropout_layers=(1, 4)),
                                  RideNetSpec(width=16, depth=3, dropout_layers=())])
def test_other_depths_and_dropout_layers(spec):
    x = _images(2, 8, 8, seed=2)
    defense = RIDE(network=spec, iterations=4, checkpoints=2, lr=1e-2, seed=1)
    torch.testing.assert_close(defense(x), defense.fit_sequential(x).estimate, atol=1e-5, rtol=0)


def test_bit_identical_in_any_batch_position_and_thread_count():
    x = _images(7, 12, 12, seed=4)
    defense = RIDE(iterations=6, checkpoints=2, lr=1e-2, seed=0, chunk_size=5)
    alone = defense(x[3:4])
    torch.set_num_threads(2)
    two_threads = defense(x)
    torch.set_num_threads(1)
    assert torch.equal(two_threads[3:4], alone)
    assert torch.equal(defense(x.flip(0))[3:4], alone)
    odd = _images(3, 9, 9, seed=6)
    assert torch.equal(defense(odd)[2:3], defense(odd[2:3]))


def test_cases_left_to_the_grouped_engine():
    mnist, cpu = resolve_network("mnist", 1), torch.device("cpu")
    assert native_engine_covers(mnist, 1, 0.5, cpu, torch.float32)
    assert not native_engine_covers(mnist, 3, 0.5, cpu, torch.float32)                   # colour images
    assert not native_engine_covers(resolve_network("cifar", 1), 1, 0.5, cpu, torch.float32)  # width 32
    assert not native_engine_covers(mnist, 1, 0.3, cpu, torch.float32)                   # dropout drawn as uniforms
    assert native_engine_covers(RideNetSpec(16, 3, ()), 1, 0.3, cpu, torch.float32)      # ... unless there is none
    assert not native_engine_covers(mnist, 1, 0.5, cpu, torch.float64)
    assert not native_engine_covers(mnist, 1, 0.5, torch.device("meta"), torch.float32)
    # and those fits still agree with the reference through the grouped engine
    x = _images(2, 8, 8).double()
    defense = RIDE(iterations=3, checkpoints=1, lr=1e-2, seed=0)
    torch.testing.assert_close(defense(x), defense.fit_sequential(x).estimate, atol=1e-7, rtol=0)


def test_parameters_are_packed_per_layer_as_tap_input_output():
    spec = resolve_network("mnist", 1)
    flat = _draw_init(torch.Generator().manual_seed(0), spec, 1, torch.float32)
    packed = pack_parameters(flat)
    assert packed.numel() == sum(t.numel() for t in flat)
    w2 = flat[2]  # (out 16, in 16, 3, 3)
    start = flat[0].numel() + flat[1].numel()
    layer = packed[start:start + w2.numel()].view(3, 3, 16, 16)
    assert torch.equal(layer[1, 2, 4, 7], w2[7, 4, 1, 2])
    assert torch.equal(packed[start + w2.numel():start + w2.numel() + 16], flat[3])
