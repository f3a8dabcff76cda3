"""The photometric half of the paper's "full" augmentation, run on a whole batch on the training device.

Colour jitter (torchvision's ColorJitter with hue off), PCA lighting, clamp to [0, 1] and normalisation
are per-pixel maps with a few random numbers per image. A DataLoader worker decodes, crops and flips,
and returns the uint8 crop with the numbers drawn for it (`PhotometricAugmentation.draw`, from the
sample's own seed); the training step applies them to the batch (`PhotometricAugmentation.forward`),
each image with its own numbers, without reading any value back to the host.

The draw is torchvision's: `ColorJitter.get_params` (a random order of the four ops, hue skipped, then
one uniform factor per op) followed by `Lighting.draw`, so from the same generator state it gives the
factors, order and alphas that the PIL path (presets.ClassificationPresetTrain) applies. The ops
themselves are computed in float where PIL computes in uint8, truncating after each op and rounding
the contrast's grayscale mean: measured on JPEGs and noise, outputs differ by at most 3.8/255 on a pixel
and 1.8/255 on an image's average, PIL's being the darker (tests/test_photometric.py holds them to 5/255
and 2.5/255).
"""

from typing import NamedTuple

import torch
from torch import nn
from torchvision import transforms

from .transforms import IMAGENET_MEAN, IMAGENET_STD, Lighting

# The columns of a sample's parameters.
FACTORS = slice(0, 3)  # brightness, contrast, saturation factors (1: unchanged)
ORDER = slice(3, 6)  # the op applied first, second, third: BRIGHTNESS, CONTRAST or SATURATION
ALPHAS = slice(6, 9)  # the lighting alphas, Normal(0, alphastd)
NUM_PARAMS = 9
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2  # ColorJitter's numbers for its ops; 3, hue, is off
GRAYSCALE = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L")


class CropWithParams(NamedTuple):
    """What the loader gives under device augmentation: uint8 `pixels` (..., H, W, 3) of the cropped and
    flipped image(s), as PIL stores them, and the `params` (..., NUM_PARAMS) of their photometric
    augmentation. DataLoader's default collate turns the samples into one of a batch."""

    pixels: torch.Tensor
    params: torch.Tensor


class PhotometricAugmentation(nn.Module):
    """Colour jitter (brightness = contrast = saturation = `color_jitter`, in torchvision's random order),
    PCA lighting of std `lighting`, clamp to [0, 1], normalise with `mean` and `std`.

    `draw()` gives one image's parameters, on the CPU; `forward(pixels, params)` augments a uint8 batch
    (N, 3, H, W) on any device into the normalised float32 input of the model, in the memory format of
    `pixels`; `on_device` does it to a batch of the loader.
    """

    def __init__(self, *, color_jitter=0.3, lighting=0.1, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        jitter = transforms.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)
        self.ranges = (jitter.brightness, jitter.contrast, jitter.saturation)  # None each when color_jitter is 0
        self.lighting = Lighting(lighting)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def draw(self) -> torch.Tensor:
        """One image's parameters, (NUM_PARAMS,) float32, from torch's global generator: what ColorJitter
        and then Lighting draw (nothing for the parts that are off)."""
        factors, order, alphas = [1.0, 1.0, 1.0], [BRIGHTNESS, CONTRAST, SATURATION], [0.0, 0.0, 0.0]
        if self.ranges[0] is not None:
            ops, *factors, _ = transforms.ColorJitter.get_params(*self.ranges, None)
            order = [op for op in ops.tolist() if op != 3]
        if self.lighting.alphastd > 0:
            alphas = self.lighting.draw().tolist()
        return torch.tensor([*factors, *order, *alphas], dtype=torch.float32)

    def color_jitter(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The colour jitter of `params` on float `images` (N, 3, H, W) in [0, 1]. Each op blends the image
        with a degenerate one, clamped to [0, 1]: black (brightness), the image's mean gray (contrast),
        each pixel's gray (saturation). Every image goes through three blends whose factor and degenerate
        are picked per image, so that the batch needs no branch on its values."""
        factors, order = params[:, FACTORS], params[:, ORDER].long()
        red, green, blue = GRAYSCALE
        for position in range(3):
            op = order[:, position : position + 1]
            factor = factors.gather(1, op).view(-1, 1, 1, 1)
            gray = (images[:, 0:1] * red).add_(images[:, 1:2], alpha=green).add_(images[:, 2:3], alpha=blue)
            contrast = (op == CONTRAST).view(-1, 1, 1, 1) * gray.mean((2, 3), keepdim=True)
            degenerate = torch.where((op == SATURATION).view(-1, 1, 1, 1), gray, contrast)
            images = torch.lerp(degenerate, images, factor).clamp_(0, 1)
        return images

    def forward(self, pixels: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {pixels.dtype} {tuple(pixels.shape)}")
        if params.shape != (pixels.shape[0], NUM_PARAMS):
            raise ValueError(f"expected params ({pixels.shape[0]}, {NUM_PARAMS}), got {tuple(params.shape)}")
        params = params.to(torch.float32)
        images = self.color_jitter(pixels.to(torch.float32).div_(255), params)
        images = self.lighting.apply(images, params[:, ALPHAS]).clamp_(0, 1)
        return images.sub_(self.mean).div_(self.std)

    def on_device(self, crops: CropWithParams, device, memory_format=torch.contiguous_format) -> torch.Tensor:
        """The model input of a loader batch: `crops` copied to `device` (asynchronously from pinned memory),
        augmented there, in `memory_format`. The module must be on `device`."""
        pixels = crops.pixels.to(device, non_blocking=True).permute(0, 3, 1, 2)  # channels-last memory
        pixels = pixels.contiguous(memory_format=memory_format)
        return self(pixels, crops.params.to(device, non_blocking=True))

    def extra_repr(self) -> str:
        return f"ranges={self.ranges}"
