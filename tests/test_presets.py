import numpy as np
import pytest
import torch
from PIL import Image

from presets import AUTO_AUGMENT_POLICIES, ClassificationPresetEval, ClassificationPresetTrain, RetrievalPresetEval


def random_image(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


@pytest.mark.parametrize("crop_size", [32, 48])
def test_full_train_preset_output(crop_size):
    preset = ClassificationPresetTrain(crop_size=crop_size)
    out = preset(random_image(80, 60))
    assert out.shape == (3, crop_size, crop_size)
    assert out.dtype == torch.float32


def test_full_train_preset_values_before_normalize_are_in_unit_range():
    # On a black image the lighting noise pushes some channels below 0; only the clamp brings them
    # back to exactly 0 (the division by 1 + alphastd keeps the top of the range below 1).
    preset = ClassificationPresetTrain(crop_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), lighting=5.0)
    black = Image.new("RGB", (64, 64), (0, 0, 0))
    torch.manual_seed(0)
    outputs = torch.stack([preset(black) for _ in range(8)])
    assert outputs.min() >= 0.0 and outputs.max() <= 1.0
    assert (outputs == 0.0).any() and (outputs > 0.0).any()


def test_train_preset_normalizes():
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    preset = ClassificationPresetTrain(crop_size=16, color_jitter=0.0, lighting=0.0)
    out = preset(white)
    expected = (1.0 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[:, 0, 0], expected)


def test_policy_replaces_color_jitter_and_lighting():
    preset = ClassificationPresetTrain(crop_size=16, auto_augment_policy="ta_wide")
    names = [type(t).__name__ for t in preset.transforms.transforms]
    assert "TrivialAugmentWide" in names
    assert "ColorJitter" not in names and "Lighting" not in names
    full = ClassificationPresetTrain(crop_size=16)
    full_names = [type(t).__name__ for t in full.transforms.transforms]
    assert "ColorJitter" in full_names and "Lighting" in full_names


@pytest.mark.parametrize("policy", AUTO_AUGMENT_POLICIES)
def test_each_auto_augment_policy_runs(policy):
    preset = ClassificationPresetTrain(crop_size=24, auto_augment_policy=policy)
    torch.manual_seed(0)
    for seed in range(3):
        out = preset(random_image(50, 40, seed))
        assert out.shape == (3, 24, 24)
        assert out.dtype == torch.float32


def test_unknown_policy_names_it_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'cutout'") as error:
        ClassificationPresetTrain(crop_size=24, auto_augment_policy="cutout")
    assert all(policy in str(error.value) for policy in AUTO_AUGMENT_POLICIES)


@pytest.mark.parametrize("size", [(100, 60), (60, 100), (70, 70)])
def test_classification_eval_preset_output_size(size):
    out = ClassificationPresetEval(crop_size=32)(random_image(*size))
    assert out.shape == (3, 32, 32)
    assert out.dtype == torch.float32


def test_classification_eval_preset_default_resize_is_256_over_224():
    preset = ClassificationPresetEval(crop_size=224)
    assert preset.transforms.transforms[0].size == 256
    assert ClassificationPresetEval(crop_size=500).transforms.transforms[0].size == 571
    assert ClassificationPresetEval(crop_size=32, resize_size=40).transforms.transforms[0].size == 40


@pytest.mark.parametrize(
    "size, max_size, expected_hw",
    [
        ((640, 427), 500, (333, 500)),  # landscape, downsized
        ((427, 640), 500, (500, 333)),  # portrait
        ((300, 300), 500, (500, 500)),  # square, upsized
        ((40, 30), 100, (75, 100)),  # landscape, upsized
        ((1000, 2), 100, (1, 100)),  # extreme ratio keeps at least one pixel
    ],
)
def test_retrieval_eval_preset_resizes_the_largest_side(size, max_size, expected_hw):
    out = RetrievalPresetEval(max_size=max_size)(random_image(*size))
    assert out.shape == (3, *expected_hw)
    assert out.dtype == torch.float32
