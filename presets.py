from torchvision import transforms
from torchvision.transforms.functional import InterpolationMode

from multigrain.images.photometric import CropWithParams, PhotometricAugmentation
from multigrain.images.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClampToUnitRange,
    Lighting,
    PILToHWCTensor,
    to_float_tensor,
)
from multigrain.images.transforms import (
    RetrievalPresetEval as RetrievalPresetEval,  # the retrieval input, used by the scripts
)

AUTO_AUGMENT_POLICIES = ("autoaugment", "ra", "ta_wide", "augmix")


class ClassificationPresetTrain:
    """Training transform for a PIL RGB image.

    Without an auto-augment policy this is the paper's "full" augmentation: random resized crop,
    flip, colour jitter, PCA lighting, clamp to [0, 1], normalise. A policy replaces colour
    jitter and lighting.

    With `photometric_on_device` (full augmentation only) the transform stops after the flip and returns
    a `CropWithParams`: the uint8 (H, W, 3) crop and its photometric parameters, drawn as the full
    augmentation draws them; `self.photometric` applies them to a batch on the training device. Otherwise
    `self.photometric` is None.
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
        photometric_on_device=False,
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

        self.photometric = None
        if photometric_on_device:
            if auto_augment_policy is not None:
                raise ValueError(
                    f"the auto-augment policy {auto_augment_policy!r} runs on PIL images: "
                    "it cannot have the photometric augmentation on the device"
                )
            self.photometric = PhotometricAugmentation(color_jitter=color_jitter, lighting=lighting, mean=mean, std=std)
            trans.append(PILToHWCTensor())
        elif auto_augment_policy is None:
            if color_jitter > 0:
                trans.append(
                    transforms.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)
                )
            trans += to_float_tensor()
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
            trans += to_float_tensor()

        if self.photometric is None:
            trans.append(transforms.Normalize(mean=mean, std=std))
        self.transforms = transforms.Compose(trans)

    def __call__(self, img):
        img = self.transforms(img)
        return img if self.photometric is None else CropWithParams(img, self.photometric.draw())


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
                *to_float_tensor(),
                transforms.Normalize(mean=mean, std=std),
            ]
        )

    def __call__(self, img):
        return self.transforms(img)
