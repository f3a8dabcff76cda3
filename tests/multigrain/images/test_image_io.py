import io

import numpy as np
import pytest
from PIL import Image

from multigrain.images.image_io import BadImageError, load_rgb


@pytest.fixture
def picture():
    rng = np.random.default_rng(0)
    return (rng.random((24, 32, 3)) * 255).astype(np.uint8)


def saved(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgb_png_is_unchanged(tmp_path, picture):
    assert np.array_equal(np.asarray(load_rgb(saved(tmp_path, "a.png", Image.fromarray(picture)))), picture)


def test_grayscale_becomes_three_equal_channels(tmp_path, picture):
    gray = picture[..., 0]
    out = np.asarray(load_rgb(saved(tmp_path, "g.png", Image.fromarray(gray, "L"))))
    assert out.shape == (24, 32, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    levels = np.linspace(0, 65535, 24 * 32).astype(np.uint16).reshape(24, 32)
    out = np.asarray(load_rgb(saved(tmp_path, "16.png", Image.fromarray(levels))))
    np.testing.assert_array_equal(out[..., 0], (levels >> 8).astype(np.uint8))
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 200


def test_rgba_and_palette_transparency_over_white(tmp_path, picture):
    rgba = np.dstack([picture, np.full((24, 32), 255, np.uint8)])
    rgba[:12, :, 3] = 0  # top half fully transparent
    out = np.asarray(load_rgb(saved(tmp_path, "t.png", Image.fromarray(rgba, "RGBA"))))
    assert (out[:12] == 255).all() and np.array_equal(out[12:], picture[12:])

    palette = Image.fromarray(picture).quantize(colors=16)
    expected = np.asarray(palette.convert("RGB"))
    assert np.array_equal(np.asarray(load_rgb(saved(tmp_path, "p.png", palette))), expected)
    palette.info["transparency"] = 0
    transparent = np.asarray(load_rgb(saved(tmp_path, "pt.png", palette, transparency=0)))
    is_zero = np.asarray(palette) == 0
    assert is_zero.any() and (transparent[is_zero] == 255).all()
    assert np.array_equal(transparent[~is_zero], expected[~is_zero])


def test_cmyk_jpeg_loads_as_the_same_picture(tmp_path, picture):
    cmyk = Image.fromarray(picture).convert("CMYK")
    out = np.asarray(load_rgb(saved(tmp_path, "c.jpg", cmyk, quality=100))).astype(int)
    assert np.abs(out - picture.astype(int)).mean() < 8


def test_exif_orientation_is_applied(tmp_path, picture):
    # Stored sideways with orientation 6 ("rotate 90° clockwise to display"): the upright picture is
    # the stored one rotated clockwise.
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(picture, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = np.asarray(load_rgb(saved(tmp_path, "e.jpg", stored, exif=exif, quality=100, subsampling=0))).astype(int)
    assert out.shape == picture.shape
    assert np.abs(out - picture.astype(int)).mean() < 8


def test_bad_files_name_themselves(tmp_path, picture):
    good = io.BytesIO()
    Image.fromarray(picture).save(good, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("truncated.jpg", "empty.jpg", "text.jpg", "missing.jpg"):
        with pytest.raises(BadImageError, match=name):
            load_rgb(tmp_path / name)
