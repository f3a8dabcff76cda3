"""Image transforms of the recipe that torchvision does not have, and the evaluation input of the models."""

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.transforms import functional as F
from torchvision.transforms.functional import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PCA of the ImageNet RGB pixels (AlexNet, Krizhevsky et al. 2012); eigenvectors are the columns.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class Lighting(nn.Module):
    """AlexNet-style PCA lighting noise on a float (C=3, H, W) image in [0, 1].

    alpha ~ Normal(0, alphastd) per eigenvector; the offset eigvec @ (alpha * eigval) is added
    to every pixel of the matching channel, and the result is divided by 1 + alphastd as in the
    published MultiGrain code (the paper's numbers were trained with it). alphastd = 0 is the identity.
    """

    def __init__(self, alphastd: float = 0.1, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC):
        super().__init__()
        if alphastd < 0:
            raise ValueError(f"Lighting alphastd must be >= 0, got {alphastd}")
        self.alphastd = alphastd
        self.register_buffer("eigval", torch.tensor(eigval, dtype=torch.float32), persistent=False)
        self.register_buffer("eigvec", torch.tensor(eigvec, dtype=torch.float32), persistent=False)

    def draw(self) -> torch.Tensor:
        """The alphas of one image, (3,): Normal(0, alphastd) from torch's global generator."""
        return torch.randn(3) * self.alphastd

    def apply(self, img: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """The noise of `alpha` (..., 3) on `img` (..., 3, H, W): one image or a batch, each with its alphas."""
        rgb = (alpha * self.eigval) @ self.eigvec.T
        return (img + rgb.to(img.dtype)[..., None, None]) / (1.0 + self.alphastd)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[-3] != 3:
            raise ValueError(f"Lighting expects a 3-channel (C, H, W) image, got shape {tuple(img.shape)}")
        if self.alphastd == 0:
            return img
        return self.apply(img, self.draw())

    def extra_repr(self) -> str:
        return f"alphastd={self.alphastd}"


class ClampToUnitRange(nn.Module):
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return img.clamp(0.0, 1.0)


class ResizeLargestSide(nn.Module):
    """Resize so that the longer side equals max_size (aspect ratio kept, upsizing allowed).

    The shorter side is truncated to an integer, as in the published MultiGrain code and in
    torchvision.transforms.v2.Resize(size=None, max_size=...).
    """

    def __init__(self, max_size: int, interpolation=InterpolationMode.BILINEAR):
        super().__init__()
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self.max_size = max_size
        self.interpolation = interpolation

    def forward(self, img):
        _, height, width = F.get_dimensions(img)
        if height >= width:
            size = [self.max_size, max(1, int(self.max_size * width / height))]
        else:
            size = [max(1, int(self.max_size * height / width)), self.max_size]
        return F.resize(img, size, interpolation=self.interpolation, antialias=True)

    def extra_repr(self) -> str:
        return f"max_size={self.max_size}, interpolation={self.interpolation.value}"


class PILToHWCTensor:
    """RGB PIL image -> uint8 (H, W, 3) tensor, the pixels in the order PIL keeps them: samples stack into a
    batch by plain copies (PILToTensor's (3, H, W) view of the same memory stacks by a transposing copy, 7×
    slower), and batch.permute(0, 3, 1, 2) is the (N, 3, H, W) batch in channels-last memory."""

    def __call__(self, image):
        return torch.from_numpy(np.array(image, dtype=np.uint8))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def to_float_tensor():
    """PIL image -> float (C, H, W) tensor in [0, 1]."""
    return [torchvision.transforms.PILToTensor(), torchvision.transforms.ConvertImageDtype(torch.float)]


class RetrievalPresetEval:
    """Resize so the longer side is max_size, no crop, normalise: the input of retrieval, of finetune_p
    and of multigrain.eval_transform."""

    def __init__(
        self,
        *,
        max_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation=InterpolationMode.BILINEAR,
    ):
        self.transforms = torchvision.transforms.Compose(
            [
                ResizeLargestSide(max_size, interpolation=interpolation),
                *to_float_tensor(),
                torchvision.transforms.Normalize(mean=mean, std=std),
            ]
        )

    def __call__(self, img):
        return self.transforms(img)
