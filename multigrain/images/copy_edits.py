"""Copy-detection edits of images, as DISC21's queries were made: the operations, and the edited copies of the
synthetic benchmarks (tools/synthetic_data.py) and of the validation of train.py --data-kind collection.

Every operation takes a PIL RGB image and returns a new one; those with random parameters draw them from a numpy
Generator `rng`, and `strength` in [0, 1] scales how strong they are. `make_variant` and `make_copy_edit` chain them
as the synthetic benchmarks do; `multigrain.images.copy_augmentation` applies a random subset of them to training
crops. Only numpy and PIL are needed (tools/synthetic_data.py runs without torch).
"""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

TEXT_CHARACTERS = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ")

# --- the operations -----------------------------------------------------------------------------------------


def flip_horizontally(image):
    """The left-right mirror image."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def flip_vertically(image):
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def rotate_slightly(image, rng, strength, max_degrees=25.0):
    """A rotation by up to max_degrees × strength either way, the corners filled with black, the size kept."""
    return image.rotate(rng.uniform(-max_degrees, max_degrees) * strength, resample=Image.Resampling.BICUBIC)


def rotate_quarter(image, rng):
    """A rotation by 90, 180 or 270 degrees."""
    turns = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
    return image.transpose(turns[int(rng.integers(3))])


def crop(image, rng, strength):
    """A crop of 1 − 0.6 × strength to all of the area, its aspect ratio changed by up to exp(±0.3 × strength)."""
    width, height = image.size
    area = rng.uniform(1 - 0.6 * strength, 1)
    aspect = np.exp(rng.uniform(-0.3, 0.3) * strength)
    crop_width = min(width, max(8, round(width * np.sqrt(area * aspect))))
    crop_height = min(height, max(8, round(height * np.sqrt(area / aspect))))
    left = rng.integers(0, width - crop_width + 1)
    top = rng.integers(0, height - crop_height + 1)
    return image.crop((left, top, left + crop_width, top + crop_height))


def rescale(image, rng, strength, size=None):
    """Through a lower resolution (down to 1 − 0.5 × strength of `size`) and back up to `size` (default: the
    image's): the detail lost by a copy shrunk and enlarged again."""
    width, height = size or image.size
    shrink = rng.uniform(1 - 0.5 * strength, 1)
    low_resolution = (max(8, round(width * shrink)), max(8, round(height * shrink)))
    return image.resize(low_resolution, Image.Resampling.BILINEAR).resize((width, height), Image.Resampling.BICUBIC)


def change_colours(image, rng, strength, max_change=0.15):
    """Brightness, contrast and saturation each multiplied by 1 ± up to max_change × strength."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(1 + rng.uniform(-max_change, max_change) * strength)
    return image


def grayscale(image):
    return ImageOps.grayscale(image).convert("RGB")


def blur(image, rng, strength):
    """A Gaussian blur of radius up to 1% of the shorter side × (1 + strength)."""
    radius = min(image.size) * 0.01 * (1 + strength) * rng.uniform(0.25, 1)
    return image.filter(ImageFilter.GaussianBlur(radius))


def reencode_jpeg(image, rng, strength):
    """The image saved as a JPEG of quality 95 − 70 × strength × U(0.5, 1) and decoded again."""
    quality = round(95 - 70 * strength * rng.uniform(0.5, 1))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def paste_over(image, other, rng, strength):
    """`other` (another picture) pasted over a random part of the image, 15% to 15 + 25 × strength % of its sides."""
    image = image.copy()
    width, height = image.size
    side = 0.15 + 0.25 * strength * rng.random()
    overlay_size = (max(4, round(width * side)), max(4, round(height * side)))
    position = (
        int(rng.integers(0, width - overlay_size[0] + 1)),
        int(rng.integers(0, height - overlay_size[1] + 1)),
    )
    image.paste(other.resize(overlay_size, Image.Resampling.BILINEAR), position)
    return image


def paste_into(image, background, box_size, rng):
    """The image resized to box_size (width, height) and pasted at a random place of `background`; returns the
    picture and the box [x1, y1, x2, y2]."""
    picture = background.copy()
    box_width, box_height = box_size
    left = int(rng.integers(0, picture.width - box_width + 1))
    top = int(rng.integers(0, picture.height - box_height + 1))
    picture.paste(image.resize((box_width, box_height), Image.Resampling.BICUBIC), (left, top))
    return picture, [float(left), float(top), float(left + box_width), float(top + box_height)]


def _draw_emoji(draw, box, rng):
    """An emoji-like face: a filled disc with two eyes and a mouth, in random colours."""
    left, top, right, bottom = box
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    feature = tuple(int(c) for c in rng.integers(0, 256, size=3))
    draw.ellipse(box, fill=colour)
    width, height = right - left, bottom - top
    for eye_x in (0.33, 0.67):
        center = (left + eye_x * width, top + 0.38 * height)
        draw.ellipse(
            (center[0] - 0.07 * width, center[1] - 0.08 * height, center[0] + 0.07 * width, center[1] + 0.08 * height),
            fill=feature,
        )
    draw.arc(
        (left + 0.25 * width, top + 0.4 * height, right - 0.25 * width, bottom - 0.2 * height),
        20,
        160,
        fill=feature,
        width=max(1, round(0.06 * width)),
    )


def add_emojis(image, rng, count):
    """`count` emoji-like faces of 12% to 25% of the shorter side, at random places."""
    image = image.copy()
    width, height = image.size
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        side = max(4, round(min(width, height) * rng.uniform(0.12, 0.25)))
        left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        _draw_emoji(draw, (left, top, left + side, top + side), rng)
    return image


def add_text(image, rng):
    """A random line of 4 to 11 capitals, digits and spaces in a random colour, PIL's default font."""
    image = image.copy()
    width, height = image.size
    text = "".join(rng.choice(TEXT_CHARACTERS) for _ in range(int(rng.integers(4, 12))))
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    ImageDraw.Draw(image).text(
        (int(rng.integers(0, max(1, width // 2))), int(rng.integers(0, max(1, height - 10)))), text, fill=colour
    )
    return image


def resize_randomly(image, rng, strength):
    """Resized by exp(U(−0.4, 0.3) × strength), at least 16 pixels a side."""
    width, height = image.size
    scale = np.exp(rng.uniform(-0.4, 0.3) * strength)
    new_size = (max(16, round(width * scale)), max(16, round(height * scale)))
    return image.resize(new_size, Image.Resampling.BICUBIC)


# --- the edited copies of the synthetic benchmarks ----------------------------------------------------------


def make_variant(image, rng, strength, rotate=False, mirror=False):
    """An attacked copy of `image` of the same size: crop, rescale, colour change and JPEG re-encoding.

    `strength` in [0, 1] scales every attack; `rotate` adds a rotation of up to 25 × strength degrees;
    `mirror` flips the image left-right first, a common copy attack that untrained features do not see
    through (learned features do, from the flips of the training augmentation). Colour changes stay
    within 15%: brightness, contrast and saturation carry the class and the instance in the synthetic
    pictures, and a trained network is more sensitive to them than an untrained one.
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    size = image.size
    if mirror:
        image = flip_horizontally(image)
    if rotate:
        image = rotate_slightly(image, rng, strength)
    image = crop(image, rng, strength)
    image = rescale(image, rng, strength, size)
    image = change_colours(image, rng, strength)
    return reencode_jpeg(image, rng, strength)


def make_copy_edit(image, overlay, rng, strength=1.0):
    """A DISC21-style edited copy of `image`: the attacks of `make_variant` (a flip half of the time, crop,
    rotation, rescaling, colour change, JPEG), then `overlay` (another picture) pasted over part of it, added text
    and emoji-like shapes, and a new size; `strength` in [0, 1] scales the overlay's size and the number of
    shapes."""
    image = make_variant(image, rng, strength=strength, rotate=True, mirror=rng.random() < 0.5)
    if rng.random() < 0.5 + 0.5 * strength:
        image = paste_over(image, overlay, rng, strength)
    image = add_emojis(image, rng, int(rng.integers(0, 1 + round(3 * strength))))
    if rng.random() < 0.5 + 0.5 * strength:
        image = add_text(image, rng)
    return resize_randomly(image, rng, strength)
