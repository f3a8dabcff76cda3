"""Each copy-detection edit on real JPEG files."""

import numpy as np
import pytest
from PIL import Image

from multigrain.images import copy_edits as edits
from multigrain.images.image_io import load_rgb
from tools.synthetic_data import render_image

SIZE = (96, 72)


def write_pictures(folder, count=3):
    """`count` synthetic pictures of SIZE written as JPEG files into `folder`, as a collection holds them."""
    generator = np.random.default_rng(0)
    paths = [folder / f"picture_{index}.jpg" for index in range(count)]
    for index, path in enumerate(paths):
        render_image(index, generator, SIZE).save(path, "JPEG", quality=90)
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_pictures(tmp_path_factory.mktemp("copy_edits"))


@pytest.fixture
def image(files):
    return load_rgb(files[0])


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def total_variation(image):
    values = pixels(image).astype(np.float64)
    return np.abs(np.diff(values, axis=0)).mean() + np.abs(np.diff(values, axis=1)).mean()


def rng(seed=0):
    return np.random.default_rng(seed)


def test_flips_and_quarter_rotations_move_pixels_exactly(image):
    assert np.array_equal(pixels(edits.flip_horizontally(image)), pixels(image)[:, ::-1])
    assert np.array_equal(pixels(edits.flip_vertically(image)), pixels(image)[::-1])
    turned = {tuple(pixels(edits.rotate_quarter(image, rng(seed))).shape) for seed in range(20)}
    assert turned == {(72, 96, 3), (96, 72, 3)}  # 180 degrees, and 90 or 270
    for seed in range(6):
        rotated = pixels(edits.rotate_quarter(image, rng(seed)))
        assert any(np.array_equal(rotated, np.rot90(pixels(image), k)) for k in (1, 2, 3))


def test_a_slight_rotation_keeps_the_size_and_blackens_the_corners(image):
    assert np.array_equal(pixels(edits.rotate_slightly(image, rng(), strength=0.0)), pixels(image))
    rotated = edits.rotate_slightly(image, rng(), strength=1.0)
    assert rotated.size == image.size and not np.array_equal(pixels(rotated), pixels(image))
    corners = pixels(rotated)[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners.sum(axis=1) == 0).sum() >= 2


def test_a_crop_is_a_part_of_the_image_of_the_area_strength_allows(image):
    assert np.array_equal(pixels(edits.crop(image, rng(), strength=0.0)), pixels(image))
    for seed in range(5):
        cropped = edits.crop(image, rng(seed), strength=1.0)
        width, height = cropped.size
        assert 0.4 * 0.7 <= width * height / (96 * 72) <= 1.0
        whole = pixels(image)
        found = [
            (top, left)
            for top in range(72 - height + 1)
            for left in range(96 - width + 1)
            if np.array_equal(whole[top : top + height, left : left + width], pixels(cropped))
        ]
        assert found, f"seed {seed}: the crop is not a part of the image"


def test_rescaling_keeps_the_size_and_loses_detail(image):
    assert np.array_equal(pixels(edits.rescale(image, rng(), strength=0.0)), pixels(image))
    rescaled = edits.rescale(image, rng(3), strength=1.0)
    assert rescaled.size == image.size
    assert total_variation(rescaled) < 0.95 * total_variation(image)


def test_colour_changes_grayscale_and_blur(image):
    assert np.array_equal(pixels(edits.change_colours(image, rng(), strength=0.0)), pixels(image))
    changed = [pixels(edits.change_colours(image, rng(seed), 1.0, max_change=0.4)).mean() for seed in range(6)]
    assert max(changed) - min(changed) > 5  # brightness, contrast and saturation moved the mean level
    gray = pixels(edits.grayscale(image))
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    blurred = edits.blur(image, rng(), strength=1.0)
    assert blurred.size == image.size and total_variation(blurred) < 0.9 * total_variation(image)


def test_jpeg_reencoding_loses_more_at_full_strength(image):
    def error(strength):
        return np.abs(pixels(edits.reencode_jpeg(image, rng(), strength)) - pixels(image)).mean()

    assert 0 < error(0.0) < error(1.0)


def test_pasting_another_image_over_a_part_and_the_image_into_another(files, image):
    red = Image.new("RGB", (40, 40), (255, 0, 0))
    pasted = pixels(edits.paste_over(image, red, rng(), strength=1.0))
    covered = (pasted == (255, 0, 0)).all(axis=2).mean()
    assert 0.15**2 * 0.9 <= covered <= 0.4**2 * 1.1
    assert np.array_equal(pixels(image), pixels(load_rgb(files[0])))  # the image itself is left alone

    background = load_rgb(files[1])
    picture, box = edits.paste_into(image, background, (48, 30), rng())
    left, top, right, bottom = map(int, box)
    assert (right - left, bottom - top) == (48, 30) and picture.size == background.size
    inside = pixels(picture)[top:bottom, left:right]
    assert np.array_equal(inside, pixels(image.resize((48, 30), Image.Resampling.BICUBIC)))
    outside = pixels(picture).copy()
    outside[top:bottom, left:right] = pixels(background)[top:bottom, left:right]
    assert np.array_equal(outside, pixels(background))


def test_emojis_text_and_a_new_size(image):
    assert np.array_equal(pixels(edits.add_emojis(image, rng(), 0)), pixels(image))
    with_emojis = pixels(edits.add_emojis(image, rng(), 3))
    assert (with_emojis != pixels(image)).any(axis=2).mean() > 0.05
    with_text = pixels(edits.add_text(image, rng()))
    rows = np.flatnonzero((with_text != pixels(image)).any(axis=(1, 2)))
    assert len(rows) and rows[-1] - rows[0] < 16  # one line of PIL's default font
    for seed in range(5):
        width, height = edits.resize_randomly(image, rng(seed), strength=1.0).size
        assert np.exp(-0.4) * 0.95 <= width / 96 <= np.exp(0.3) * 1.05 and abs(width / height - 96 / 72) < 0.1
