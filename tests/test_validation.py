import pytest
import torch

from advrepair.errors import InputError
from advrepair.validation import check_images, check_labels, check_positive


def test_accepts_float_nchw_in_unit_range():
    x = torch.rand(2, 1, 4, 4)
    assert check_images(x) is x


@pytest.mark.parametrize("bad, words", [
    (torch.rand(2, 4, 4), "NCHW"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), "floating-point"),
    (torch.full((1, 1, 2, 2), 1.5), "[0, 1]"),
    (torch.full((1, 1, 2, 2), -0.1), "[0, 1]"),
    (torch.full((1, 1, 2, 2), float("nan")), "NaN"),
    (torch.empty(0, 1, 2, 2), "empty"),
    ([[0.0]], "torch.Tensor"),
])
def test_rejects_bad_images_naming_the_problem(bad, words):
    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
        check_images(bad)


def test_labels_checks():
    check_labels(torch.tensor([0, 3]), 2, num_classes=4)
    with pytest.raises(InputError, match="shape"):
        check_labels(torch.tensor([0]), 2)
    with pytest.raises(InputError, match="integer"):
        check_labels(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(InputError, match="< 4"):
        check_labels(torch.tensor([0, 4]), 2, num_classes=4)
    with pytest.raises(InputError, match=">= 0"):
        check_labels(torch.tensor([-1, 0]), 2)


def test_positive_checks():
    assert check_positive(0.0, "eps", allow_zero=True) == 0.0
    with pytest.raises(InputError, match="eps must be >= 0"):
        check_positive(-0.1, "eps", allow_zero=True)
    with pytest.raises(InputError, match="alpha must be > 0"):
        check_positive(0, "alpha")
    with pytest.raises(InputError, match="NaN"):
        check_positive(float("nan"), "eps")
