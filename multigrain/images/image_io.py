"""Opening image files as the RGB picture a person sees, with errors that name the file."""

import numpy as np
from PIL import Image, ImageOps

from ..storage.input_files import open_regular_file

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class BadImageError(OSError):
    """An image file that cannot be decoded (truncated, empty, not an image, unreadable)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, CMYK and 16-bit images as 8-bit RGB; transparency composited on white."""
    if image.mode in SIXTEEN_BIT_MODES:
        levels = np.asarray(image).astype(np.int64) >> 8  # 16-bit levels to 8-bit, not clipped
        image = Image.fromarray(levels.clip(0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_rgb(path, exif_transpose: bool = True) -> Image.Image:
    """The RGB picture stored in `path`, turned upright by its EXIF orientation unless `exif_transpose`
    is False (the pixels as stored, as the official retrieval evaluation tools read them). Only a regular file
    is read: a FIFO or a device is a bad image, not a wait without end."""
    try:
        with open_regular_file(path) as file, Image.open(file) as image:
            if exif_transpose:
                image = ImageOps.exif_transpose(image)
            image.load()
            return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadImageError(f"cannot read image {path}: {e}") from e
