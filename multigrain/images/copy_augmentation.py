"""The copy-detection training transform of `train.py --augmentation copy-detection`: a random resized crop, then a
random subset of the edits of `multigrain.images.copy_edits`, as DISC21's queries were made."""

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as F
from torchvision.transforms.functional import InterpolationMode

from . import copy_edits as edits
from .transforms import IMAGENET_MEAN, IMAGENET_STD, to_float_tensor

# The probability of each edit of CopyDetectionAugmentation, applied in this order to the random resized crop.
EDIT_PROBABILITIES = {
    "flip_horizontally": 0.5,
    "flip_vertically": 0.1,
    "rotate_slightly": 0.2,
    "rotate_quarter": 0.1,
    "rescale": 0.3,
    "change_colours": 0.8,
    "grayscale": 0.05,
    "blur": 0.3,
    "paste_over": 0.15,
    "paste_into": 0.15,
    "add_emojis": 0.3,
    "add_text": 0.3,
    "reencode_jpeg": 0.5,
}


class CopyDetectionAugmentation:
    """The copy-detection training transform: a random resized crop of `crop_size` (`crop_scale`: 25% to all of the
    area, aspect 3/4 to 4/3), then each edit of EDIT_PROBABILITIES with its probability, in that order, at full
    strength (the colour change up to ±30%): flips, rotations, rescaling, colour and grayscale, blur, another image of
    `other_images` pasted over part of the crop or the crop pasted into another image (at 40% to 90% of its
    sides), emoji-like shapes, text, JPEG re-encoding; then the float tensor, normalised.

    `other_images` is a sequence of PIL images (an ImageList without transform), e.g. the training images; without
    it the two pastes are skipped. The random draws come from torch's and numpy's global generators, which
    SeededItems seeds for every sample.
    """

    def __init__(
        self,
        crop_size,
        *,
        other_images=None,
        crop_scale=(0.25, 1.0),
        interpolation=InterpolationMode.BILINEAR,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ):
        self.crop = transforms.RandomResizedCrop(
            crop_size, scale=crop_scale, ratio=(3 / 4, 4 / 3), interpolation=interpolation
        )
        self.crop_size = crop_size
        self.other_images = other_images
        self.to_tensor = transforms.Compose([*to_float_tensor(), transforms.Normalize(mean=mean, std=std)])
        self.photometric = None  # all of it runs in the workers

    def _other(self, rng):
        return self.other_images[int(rng.integers(len(self.other_images)))]

    def edit(self, image, rng):
        """The crop of `image` with its random edits, a PIL image of crop_size × crop_size."""
        image = self.crop(image)
        size = image.size
        operations = {
            "flip_horizontally": edits.flip_horizontally,
            "flip_vertically": edits.flip_vertically,
            "rotate_slightly": lambda x: edits.rotate_slightly(x, rng, 1.0),
            "rotate_quarter": lambda x: edits.rotate_quarter(x, rng),
            "rescale": lambda x: edits.rescale(x, rng, 1.0),
            "change_colours": lambda x: edits.change_colours(x, rng, 1.0, max_change=0.3),
            "grayscale": edits.grayscale,
            "blur": lambda x: edits.blur(x, rng, 1.0),
            "paste_over": lambda x: edits.paste_over(x, self._other(rng), rng, 1.0),
            "paste_into": lambda x: self._paste_into_other(x, rng),
            "add_emojis": lambda x: edits.add_emojis(x, rng, int(rng.integers(1, 4))),
            "add_text": lambda x: edits.add_text(x, rng),
            "reencode_jpeg": lambda x: edits.reencode_jpeg(x, rng, 1.0),
        }
        for name, probability in EDIT_PROBABILITIES.items():
            if rng.random() < probability and (self.other_images is not None or not name.startswith("paste")):
                image = operations[name](image)
        return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)

    def _paste_into_other(self, image, rng):
        background = F.resize(self._other(rng), list(image.size[::-1]), antialias=True)
        fractions = rng.uniform(0.4, 0.9, size=2)
        box = (max(1, round(image.width * fractions[0])), max(1, round(image.height * fractions[1])))
        return edits.paste_into(image, background, box, rng)[0]

    def __call__(self, image):
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        return self.to_tensor(self.edit(image, rng))

    def __repr__(self):
        others = f"{len(self.other_images)} other images" if self.other_images is not None else "no other images"
        return f"{type(self).__name__}(crop_size={self.crop_size}, {others})"
