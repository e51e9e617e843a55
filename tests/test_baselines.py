"""Input-transformation baselines: JPEG, total variation, median, bit depth, random resize-pad."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from advrepair.adaptive.bpda import BPDA
from advrepair.defenses.bit_depth import BitDepthReduction
from advrepair.defenses.jpeg import DifferentiableJPEG, JPEGCompression, pillow_jpeg, quantization_table
from advrepair.defenses.median import MedianFilter, median_filter
from advrepair.defenses.resize_pad import RandomResizePad
from advrepair.defenses.total_variation import (TotalVariation, rof_energy, total_variation, tv_bregman,
                                                tv_chambolle)
from advrepair.errors import InputError


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images (a few low-frequency waves and an edge) in [0.1, 0.9]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    f = torch.rand(n, c, 1, 1, 4, generator=g)
    img = (0.5 + 0.2 * torch.sin(6 * f[..., 0] * xx + 4 * f[..., 1] * yy + 6 * f[..., 2])
           + 0.15 * (xx + f[..., 3] > 1).float())
    return img.clamp(0.1, 0.9)


def noisy(clean: torch.Tensor, eps: float = 0.1, seed: int = 1) -> torch.Tensor:
    """An adversarial-like perturbation: random signs of size eps (L-inf budget eps)."""
    g = torch.Generator().manual_seed(seed)
    return (clean + eps * torch.sign(torch.randn(clean.shape, generator=g))).clamp(0, 1)


DEFENSES = {
    "jpeg": lambda: JPEGCompression(75),
    "jpeg-444": lambda: JPEGCompression(50, subsampling="4:4:4"),
    "jpeg-diff": lambda: JPEGCompression(75, differentiable=True),
    "jpeg-diff-st": lambda: DifferentiableJPEG(60, rounding="straight-through"),
    "tv-chambolle": lambda: TotalVariation(0.1, "chambolle", max_iter=60),
    "tv-bregman": lambda: TotalVariation(0.1, "bregman", max_iter=60),
    "tv-dropout": lambda: TotalVariation(0.1, "bregman", keep_prob=0.5, seed=3, max_iter=60),
    "median": lambda: MedianFilter(3),
    "bit-depth": lambda: BitDepthReduction(3),
    "bit-depth-st": lambda: BitDepthReduction(3, straight_through=True),
    "resize-pad": lambda: RandomResizePad(seed=0),
    "resize-pad-bilinear": lambda: RandomResizePad(ratio=1.25, mode="bilinear", seed=5),
}


# ---------------------------------------------------------------- shared contract

@pytest.mark.parametrize("name", sorted(DEFENSES))
@pytest.mark.parametrize("channels,dtype", [(1, torch.float32), (3, torch.float64)])
def test_output_in_unit_box_with_input_shape_and_dtype(name, channels, dtype):
    x = noisy(smooth_images(3, channels, 20)).to(dtype)
    out = DEFENSES[name]()(x)
    assert out.shape == x.shape and out.dtype == dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.isfinite(out).all()
    assert not torch.equal(out, x), "every defense must change a noisy image"


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_image_does_not_depend_on_its_batch_mates(name):
    defense = DEFENSES[name]()
    images = noisy(smooth_images(5, 3, 20, seed=2), seed=3)
    strangers = noisy(smooth_images(6, 3, 20, seed=7), seed=8)
    alone = defense(images[2:3])
    in_batch = defense(images)[2:3]
    with_strangers = defense(torch.cat([strangers[:4], images[2:3], strangers[4:]]))[4:5]
    assert torch.equal(alone, in_batch)
    assert torch.equal(alone, with_strangers)


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_params_are_json_and_name_the_defense(name):
    p = DEFENSES[name]().params()
    assert json.loads(json.dumps(p)) == p
    assert isinstance(p["name"], str) and len(p) >= 2


@pytest.mark.parametrize("name", sorted(DEFENSES))
@pytest.mark.parametrize("bad", ["range", "nan", "dtype", "shape"])
def test_invalid_images_raise_input_error(name, bad):
    x = smooth_images(2, 3, 20)
    x = {"range": x * 2, "nan": x.masked_fill(x > 0.8, float("nan")), "dtype": (x * 255).to(torch.uint8),
         "shape": x[0]}[bad]
    with pytest.raises(InputError):
        DEFENSES[name]()(x)


@pytest.mark.parametrize("make", [
    lambda: JPEGCompression(0), lambda: JPEGCompression(101), lambda: JPEGCompression(50.5),
    lambda: JPEGCompression(True), lambda: JPEGCompression(75, subsampling="4:2:2"),
    lambda: DifferentiableJPEG(75, rounding="floor"),
    lambda: MedianFilter(2), lambda: MedianFilter(0), lambda: MedianFilter(3.0),
    lambda: BitDepthReduction(0), lambda: BitDepthReduction(17), lambda: BitDepthReduction(2.5),
    lambda: TotalVariation(-0.1), lambda: TotalVariation(0.1, solver="admm"),
    lambda: TotalVariation(0.1, keep_prob=0.0, solver="bregman"),
    lambda: TotalVariation(0.1, keep_prob=1.5, solver="bregman"),
    lambda: TotalVariation(0.1, keep_prob=0.5, solver="chambolle"), lambda: TotalVariation(0.1, max_iter=0),
    lambda: RandomResizePad(ratio=1.0), lambda: RandomResizePad(ratio=float("inf")),
    lambda: RandomResizePad(mode="area"),
])
def test_bad_arguments_raise_input_error(make):
    with pytest.raises(InputError):
        make()


def test_bad_image_geometry_raises_input_error():
    with pytest.raises(InputError, match="grayscale .* or RGB"):
        JPEGCompression(75)(torch.rand(1, 2, 16, 16))
    with pytest.raises(InputError, match="grayscale .* or RGB"):
        DifferentiableJPEG(75)(torch.rand(1, 4, 16, 16))
    with pytest.raises(InputError, match="kernel_size 7"):
        MedianFilter(7)(torch.rand(1, 1, 3, 16))
    with pytest.raises(InputError, match="no room"):
        RandomResizePad(ratio=1.05)(torch.rand(1, 1, 8, 8))


# ---------------------------------------------------------------- denoising

@pytest.mark.parametrize("defense,eps,factor", [
    (TotalVariation(0.05, "chambolle"), 0.1, 0.5), (TotalVariation(0.05, "bregman"), 0.1, 0.5),
    (JPEGCompression(25), 0.03, 0.85), (DifferentiableJPEG(25), 0.03, 0.85),
], ids=["tv-chambolle", "tv-bregman", "jpeg", "jpeg-diff"])
def test_defense_moves_a_noisy_image_toward_the_clean_one(defense, eps, factor):
    # Measured ratios after/before: TV (weight 0.05, eps 0.1) ~0.38-0.45; JPEG q25 at
    # eps 0.03: 0.58-0.74. JPEG does NOT denoise eps = 0.1 sign noise at q >= 50 (ratio
    # 0.92-1.07): it only removes small perturbations.
    clean = smooth_images(4, 1, 28)
    x = noisy(clean, eps=eps)
    before = (x - clean).flatten(1).norm(dim=1)
    after = (defense(x) - clean).flatten(1).norm(dim=1)
    assert (after < factor * before).all(), (before, after)


def test_median_removes_sparse_l0_like_noise():
    # Median smoothing targets L0 attacks (Xu et al.): a few pixels changed by a lot. On dense
    # sign noise a 3x3 median barely helps (the median of c +- eps is c +- eps).
    clean = smooth_images(4, 3, 28)
    g = torch.Generator().manual_seed(0)
    hit = torch.rand(clean.shape, generator=g) < 0.08
    x = torch.where(hit, torch.rand(clean.shape, generator=g).round(), clean)
    before = (x - clean).flatten(1).norm(dim=1)
    after = (MedianFilter(3)(x) - clean).flatten(1).norm(dim=1)
    assert (after < 0.3 * before).all(), (before, after)


def test_bit_depth_recovers_a_clean_image_on_its_grid_exactly():
    levels = 7
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, levels + 1, (4, 3, 8, 8), generator=g).float() / levels
    x = (clean + 0.06 * (2 * torch.rand(clean.shape, generator=g) - 1)).clamp(0, 1)
    assert torch.equal(BitDepthReduction(3)(x), clean)
    assert torch.equal(BitDepthReduction(3, straight_through=True)(x), clean)
    one_bit = BitDepthReduction(1)(torch.tensor([[[[0.2, 0.49, 0.51, 0.9]]]]))
    assert one_bit.flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


def test_median_matches_scipy_mirror_mode():
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    for k in (3, 5):
        ref = ndimage.median_filter(x.numpy(), size=(1, 1, k, k), mode="mirror")
        assert np.array_equal(median_filter(x, k).numpy(), ref)
    assert torch.equal(MedianFilter(1)(x), x)


# ---------------------------------------------------------------- total variation

def test_tv_solvers_agree_and_minimize_the_rof_energy():
    clean = smooth_images(4, 3, 24)
    x = noisy(clean, eps=0.1).double()
    w = 0.1
    uc, nc = tv_chambolle(x, w, max_iter=300, tol=1e-6)
    ub, nb = tv_bregman(x, w, max_iter=300, tol=1e-6)
    # Measured: max |uc - ub| = 0.006, mean 6e-4, energies equal to 7e-4 relative; TV falls to 7-13%.
    assert (uc - ub).abs().max() < 0.01
    assert (uc - ub).abs().mean() < 1e-3
    ec, eb = rof_energy(uc, x, w), rof_energy(ub, x, w)
    assert torch.allclose(ec, eb, rtol=2e-3)
    assert (ec < 0.5 * rof_energy(x, x, w)).all()
    # A feasible perturbation of the solution never has lower energy (it is a minimizer).
    bumped = ub + 0.01 * torch.randn_like(ub)
    assert (rof_energy(bumped, x, w) > eb).all()
    assert (total_variation(uc) < 0.5 * total_variation(x)).all()
    assert (total_variation(ub) < 0.5 * total_variation(x)).all()


@pytest.mark.parametrize("solver", ["chambolle", "bregman"])
def test_tv_tends_to_identity_as_weight_goes_to_zero(solver):
    x = noisy(smooth_images(2, 1, 16))
    gaps = [float((TotalVariation(w, solver, tol=1e-6, max_iter=300)(x) - x).abs().max())
            for w in (1e-2, 1e-3, 1e-4)]
    assert gaps[0] > gaps[1] > gaps[2]
    # The exact minimizer is u = x - weight * div p with |p| <= 1, so |u - x| <= 4 weight.
    assert gaps[2] < 4e-4 * 1.1
    assert gaps[0] > 5e-3
    assert torch.equal(TotalVariation(0.0, solver)(x), x)


def test_tv_stops_each_image_on_its_own():
    flat = torch.full((1, 1, 16, 16), 0.5)
    rough = noisy(smooth_images(1, 1, 16))
    defense = TotalVariation(0.1, "chambolle", max_iter=100, tol=1e-4)
    defense(torch.cat([flat, rough]))
    iters = defense.last_iterations.tolist()
    assert iters[0] < 5 < iters[1]


def test_tv_dropout_mask_is_seeded_by_content_and_fills_dropped_pixels():
    clean = smooth_images(3, 1, 24)
    x = noisy(clean, eps=0.05)
    defense = TotalVariation(0.05, "bregman", keep_prob=0.5, seed=1, max_iter=150)
    mask = defense.dropout_mask(x)
    assert mask.shape == (3, 1, 24, 24) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert 0.4 < float(mask.mean()) < 0.6
    assert torch.equal(mask[1:2], defense.dropout_mask(x[1:2]))
    assert not torch.equal(mask, TotalVariation(0.05, "bregman", keep_prob=0.5, seed=2).dropout_mask(x))
    unseeded = TotalVariation(0.05, "bregman", keep_prob=0.5, seed=None)
    assert not torch.equal(unseeded.dropout_mask(x), unseeded.dropout_mask(x))
    # Dropped pixels are reconstructed from their neighbours, not left at 0.
    out = defense(x)
    dropped = mask.expand_as(x) == 0
    assert (out - clean)[dropped].abs().mean() < 0.05
    assert not torch.equal(out, TotalVariation(0.05, "bregman", max_iter=150)(x))


def test_tv_matches_scikit_image_when_available():
    restoration = pytest.importorskip("skimage.restoration")
    x = noisy(smooth_images(1, 1, 24)).double()
    w = 0.1
    ours = tv_chambolle(x, w, max_iter=500, tol=1e-7)[0][0, 0].numpy()
    ref = restoration.denoise_tv_chambolle(x[0, 0].numpy(), weight=w, eps=1e-7, max_num_iter=500)
    assert np.abs(ours - ref).max() < 5e-3
    # Our split-Bregman solver must reach the same ROF minimizer as skimage's Chambolle. (skimage's
    # own denoise_tv_bregman is no oracle here: no weight brings it within 0.08 of either
    # Chambolle solution, it discretizes the problem differently.)
    ours_b = tv_bregman(x, w, max_iter=500, tol=1e-7)[0][0, 0].numpy()
    assert np.abs(ours_b - ref).max() < 1e-2

    def rof_energy(u):
        f = x[0, 0].numpy()
        dx, dy = np.diff(u, axis=1, append=u[:, -1:]), np.diff(u, axis=0, append=u[-1:, :])
        return 0.5 * ((u - f) ** 2).sum() + w * np.sqrt(dx ** 2 + dy ** 2).sum()

    assert rof_energy(ours_b) <= rof_energy(ref) * 1.001


# ---------------------------------------------------------------- JPEG

@pytest.mark.parametrize("quality", [10, 50, 75, 95])
def test_quantization_tables_match_libjpeg(quality):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    tables = Image.open(buf).quantization
    assert quantization_table(quality).flatten().long().tolist() == list(tables[0])
    assert quantization_table(quality, chroma=True).flatten().long().tolist() == list(tables[1])


@pytest.mark.parametrize("channels,size,subsampling", [(1, 28, "4:2:0"), (3, 32, "4:2:0"), (3, 28, "4:2:0"),
                                                       (3, 31, "4:4:4")])
@pytest.mark.parametrize("quality", [50, 75])
def test_differentiable_jpeg_is_close_to_pillow(channels, size, subsampling, quality):
    x = noisy(smooth_images(8, channels, size), eps=0.03)
    ref = pillow_jpeg(x, quality, subsampling)
    moved = float(((x * 255).round() / 255 - ref).abs().mean())  # what JPEG itself changes
    # Measured mean |approx - Pillow| in 1/255 units over these cases: straight-through
    # 0.16-0.67, cubic 0.62-1.05 (JPEG itself moves pixels by 4.9-7.9); the max is up to
    # 12/255 where a coefficient lands on the other side of a rounding boundary.
    for rounding, tol in (("straight-through", 1.0), ("cubic", 1.5)):
        approx = DifferentiableJPEG(quality, subsampling, rounding)(x)
        err = float((approx - ref).abs().mean())
        assert err < tol / 255, (rounding, err * 255)
        assert err < 0.3 * moved, (rounding, err * 255, moved * 255)


def test_pillow_jpeg_round_trip_properties():
    x = smooth_images(2, 1, 24)
    near_lossless = JPEGCompression(100)(x)
    assert (near_lossless - x).abs().max() <= 2 / 255
    assert torch.equal((near_lossless * 255).round(), near_lossless * 255)  # 8-bit output
    harsh = JPEGCompression(5)(x)
    assert (harsh - x).abs().mean() > (JPEGCompression(90)(x) - x).abs().mean()
    # Output is a fresh tensor without autograd graph: the real codec is not differentiable.
    xg = x.clone().requires_grad_(True)
    assert not JPEGCompression(75)(xg).requires_grad


def test_bpda_jpeg_uses_real_codec_forward_and_approximation_gradient():
    jpeg = JPEGCompression(75)
    x = noisy(smooth_images(2, 3, 16), eps=0.03).requires_grad_(True)
    wrapped = BPDA(jpeg, jpeg.bpda_surrogate())
    out = wrapped(x)
    assert torch.allclose(out, jpeg(x.detach()), atol=1e-6)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert wrapped.params()["surrogate"] == "DifferentiableJPEG"


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("defense", [
    DifferentiableJPEG(75, rounding="cubic"), DifferentiableJPEG(75, "4:4:4", rounding="straight-through"),
    BitDepthReduction(3, straight_through=True), RandomResizePad(seed=0), RandomResizePad(seed=None),
    TotalVariation(0.05, "chambolle", max_iter=20), TotalVariation(0.05, "bregman", keep_prob=0.7, max_iter=20),
    MedianFilter(3),
], ids=["jpeg-cubic", "jpeg-st", "bits-st", "resize-pad", "resize-pad-unseeded", "tv-chambolle",
        "tv-dropout", "median"])
def test_differentiable_variants_give_finite_nonzero_gradients(defense):
    x = noisy(smooth_images(2, 3, 16), eps=0.05).requires_grad_(True)
    out = defense(x)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


def test_plain_bit_depth_masks_gradients_and_straight_through_is_identity():
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    BitDepthReduction(3)(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    x.grad = None
    BitDepthReduction(3, straight_through=True)(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_cubic_rounding_gradient_matches_shin_and_song():
    # d/dx [round(x) + (x - round(x))^3] = 3 (x - round(x))^2: zero at integers, 0.75 at halves.
    from advrepair.defenses.jpeg import _cubic_round
    t = torch.tensor([1.0, 1.25, -0.5 + 1e-4, 2.4], requires_grad=True)
    _cubic_round(t).sum().backward()
    r = t.detach() - t.detach().round()
    assert torch.allclose(t.grad, 3 * r ** 2)
    assert float(t.grad[0]) == 0.0 and float(t.grad[2]) > 0.7


# ---------------------------------------------------------------- random resize-pad

def test_resize_pad_draws_and_seeding():
    x = noisy(smooth_images(6, 3, 28))
    defense = RandomResizePad(seed=0)
    big_h, big_w = defense.canvas_size(28, 28)
    assert (big_h, big_w) == (31, 31)  # round(28 * 331 / 299)
    for rh, rw, top, left in defense.draws(x):
        assert 28 <= rh < big_h and rw == rh
        assert 0 <= top <= big_h - rh and 0 <= left <= big_w - rw
    assert len({d for d in defense.draws(x)}) > 1, "different images draw different transforms"
    assert torch.equal(defense(x), RandomResizePad(seed=0)(x))
    assert not torch.equal(defense(x), RandomResizePad(seed=1)(x))
    unseeded = RandomResizePad(seed=None)
    outs = torch.stack([unseeded(x) for _ in range(4)])
    assert not all(torch.equal(outs[0], o) for o in outs[1:])


def test_resize_pad_keeps_aspect_ratio_of_non_square_images():
    x = torch.rand(3, 1, 20, 40)
    defense = RandomResizePad(ratio=1.2, seed=0)
    big_h, big_w = defense.canvas_size(20, 40)
    assert (big_h, big_w) == (24, 48)
    for rh, rw, _, _ in defense.draws(x):
        assert rw == round(40 * rh / 20)
    assert defense(x).shape == x.shape


def test_resize_pad_leaves_a_zero_border_band_that_shrinks_the_image_content():
    # A constant white image: the padding brings zeros in, so the output is darker somewhere
    # near at least one border, and never brighter than the input.
    x = torch.ones(4, 1, 28, 28)
    out = RandomResizePad(seed=0)(x)
    assert (out <= 1).all()
    border = torch.cat([out[..., 0, :], out[..., -1, :], out[..., :, 0], out[..., :, -1]], -1)
    assert (border.amin(-1) < 0.9).all()
    assert torch.allclose(out[..., 12:16, 12:16], torch.ones(4, 1, 4, 4))
