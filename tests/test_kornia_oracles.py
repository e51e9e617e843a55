"""kornia as an independent oracle for the input-transformation defenses."""
import kornia
import pytest
import torch

from advrepair.defenses import DifferentiableJPEG, JPEGCompression, MedianFilter


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("channels", [1, 3])
def test_median_filter_equals_kornia_everywhere_including_the_borders(kernel, channels):
    x = torch.rand(3, channels, 20, 17, generator=torch.Generator().manual_seed(kernel))
    torch.testing.assert_close(MedianFilter(kernel)(x), kornia.filters.median_blur(x, (kernel, kernel)), rtol=0, atol=0)


@pytest.mark.parametrize("quality", [50, 75, 90])
def test_jpeg_agrees_with_kornias_codec(quality):
    """kornia's codec rounds with a cubic approximation in the forward pass too, so the two
    differ by design; both must still agree far better than either agrees with the input."""
    gen = torch.Generator().manual_seed(quality)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=gen), size=32, mode="bilinear",
                                             align_corners=False)
    theirs = kornia.enhance.jpeg_codec_differentiable(smooth, torch.tensor([float(quality)]))
    for ours in (JPEGCompression(quality=quality)(smooth), DifferentiableJPEG(quality=quality)(smooth)):
        gap = (ours - theirs).abs().mean()
        change = (ours - smooth).abs().mean()
        assert gap < 0.35 * change, (float(gap), float(change))
