import pytest
import torch

from multigrain.images.transforms import IMAGENET_EIGVAL, IMAGENET_EIGVEC, Lighting


def test_lighting_with_zero_std_is_identity():
    img = torch.rand(3, 5, 7)
    assert torch.equal(Lighting(0.0)(img), img)


def test_lighting_matches_hand_computation():
    img = torch.rand(3, 4, 6)
    torch.manual_seed(123)
    out = Lighting(0.1)(img)

    torch.manual_seed(123)
    alpha = torch.randn(3).tolist()
    expected = img.clone()
    for channel in range(3):
        offset = sum(IMAGENET_EIGVEC[channel][k] * alpha[k] * 0.1 * IMAGENET_EIGVAL[k] for k in range(3))
        expected[channel] += offset
    expected /= 1.1  # the published code's division by 1 + alphastd
    torch.testing.assert_close(out, expected)
    # Undoing the division leaves one constant per channel, and it is not zero.
    difference = out * 1.1 - img
    assert torch.allclose(difference, difference[:, :1, :1].expand_as(difference), atol=1e-6)
    assert difference.abs().max() > 0


def test_lighting_rejects_bad_input():
    with pytest.raises(ValueError, match="alphastd"):
        Lighting(-0.1)
    with pytest.raises(ValueError, match="3-channel"):
        Lighting(0.1)(torch.rand(1, 4, 4))
