"""torch.func as an independent oracle for the engine's gradients: per-image gradients from
vmap(grad(...)) of a single-image loss must give the engine's step exactly."""
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from advrepair.engine import projected_gradient
from advrepair.enums import Norm


def test_one_engine_step_equals_a_step_from_vmapped_per_image_gradients(random_cnn):
    torch.manual_seed(0)
    x, y = torch.rand(5, 1, 28, 28), torch.tensor([0, 3, 5, 7, 9])
    params = {k: v.detach() for k, v in random_cnn.named_parameters()}
    buffers = {k: v.detach() for k, v in random_cnn.named_buffers()}

    def single_loss(image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = functional_call(random_cnn, (params, buffers), (image[None],))
        return F.cross_entropy(logits, label[None])

    per_image = vmap(grad(single_loss))(x, y)
    expected = (x + 0.05 * per_image.sign()).clamp(x - 0.1, x + 0.1).clamp(0, 1)
    ours = projected_gradient(x, lambda z, _k: F.cross_entropy(random_cnn(z), y, reduction="none"), center=x,
                              eps=0.1, step_size=0.05, steps=1, norm=Norm.LINF)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_l2_step_direction_matches_the_normalized_per_image_gradient(random_cnn):
    torch.manual_seed(1)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    params = {k: v.detach() for k, v in random_cnn.named_parameters()}
    buffers = {k: v.detach() for k, v in random_cnn.named_buffers()}

    def single_loss(image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(random_cnn, (params, buffers), (image[None],)), label[None])

    g = vmap(grad(single_loss))(x, y)
    unit = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    ours = projected_gradient(x, lambda z, _k: F.cross_entropy(random_cnn(z), y, reduction="none"), center=x,
                              eps=10.0, step_size=0.01, steps=1, norm=Norm.L2)
    inside = ((x + 0.01 * unit) > 0) & ((x + 0.01 * unit) < 1)  # where [0, 1] does not clip
    torch.testing.assert_close(ours[inside], (x + 0.01 * unit)[inside], rtol=0, atol=1e-5)
