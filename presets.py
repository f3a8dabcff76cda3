import torch
from torch import nn
from torchvision import transforms
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

AUTO_AUGMENT_POLICIES = ("autoaugment", "ra", "ta_wide", "augmix")


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

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[-3] != 3:
            raise ValueError(f"Lighting expects a 3-channel (C, H, W) image, got shape {tuple(img.shape)}")
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3) * self.alphastd
        rgb = self.eigvec @ (alpha * self.eigval)
        return (img + rgb.to(img.dtype).view(3, 1, 1)) / (1.0 + self.alphastd)

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


def _to_float_tensor():
    return [transforms.PILToTensor(), transforms.ConvertImageDtype(torch.float)]


class ClassificationPresetTrain:
    """Training transform for a PIL RGB image.

    Without an auto-augment policy this is the paper's "full" augmentation: random resized crop,
    flip, colour jitter, PCA lighting, clamp to [0, 1], normalise. A policy replaces colour
    jitter and lighting.
    """

    def __init__(
        self,
        *,
        crop_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation=InterpolationMode.BILINEAR,
        hflip_prob=0.5,
        auto_augment_policy=None,
        ra_magnitude=9,
        augmix_severity=3,
        color_jitter=0.3,
        lighting=0.1,
    ):
        if auto_augment_policy is not None and auto_augment_policy not in AUTO_AUGMENT_POLICIES:
            raise ValueError(
                f"Unknown auto-augment policy {auto_augment_policy!r}; "
                f"valid policies: {', '.join(AUTO_AUGMENT_POLICIES)}"
            )
        trans = [
            transforms.RandomResizedCrop(
                crop_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation=interpolation
            )
        ]
        if hflip_prob > 0:
            trans.append(transforms.RandomHorizontalFlip(hflip_prob))

        if auto_augment_policy is None:
            if color_jitter > 0:
                trans.append(
                    transforms.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)
                )
            trans += _to_float_tensor()
            if lighting > 0:
                trans.append(Lighting(lighting))
            trans.append(ClampToUnitRange())
        else:
            if auto_augment_policy == "autoaugment":
                policy = transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET, interpolation=interpolation)
            elif auto_augment_policy == "ra":
                policy = transforms.RandAugment(magnitude=ra_magnitude, interpolation=interpolation)
            elif auto_augment_policy == "ta_wide":
                policy = transforms.TrivialAugmentWide(interpolation=interpolation)
            else:
                policy = transforms.AugMix(severity=augmix_severity, interpolation=interpolation)
            trans.append(policy)
            trans += _to_float_tensor()

        trans.append(transforms.Normalize(mean=mean, std=std))
        self.transforms = transforms.Compose(trans)

    def __call__(self, img):
        return self.transforms(img)


class ClassificationPresetEval:
    """Resize the shorter side to resize_size (default crop_size * 256 / 224), centre crop, normalise."""

    def __init__(
        self,
        *,
        crop_size,
        resize_size=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation=InterpolationMode.BILINEAR,
    ):
        if resize_size is None:
            resize_size = round(crop_size * 256 / 224)
        self.transforms = transforms.Compose(
            [
                transforms.Resize(resize_size, interpolation=interpolation),
                transforms.CenterCrop(crop_size),
                *_to_float_tensor(),
                transforms.Normalize(mean=mean, std=std),
            ]
        )

    def __call__(self, img):
        return self.transforms(img)


class RetrievalPresetEval:
    """Resize so the longer side is max_size, no crop, normalise (retrieval and finetune_p input)."""

    def __init__(
        self,
        *,
        max_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation=InterpolationMode.BILINEAR,
    ):
        self.transforms = transforms.Compose(
            [
                ResizeLargestSide(max_size, interpolation=interpolation),
                *_to_float_tensor(),
                transforms.Normalize(mean=mean, std=std),
            ]
        )

    def __call__(self, img):
        return self.transforms(img)
