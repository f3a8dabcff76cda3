"""The data of a train.py run: the training samples (an ImageFolder's train/ or a collection's images, augmented,
each seeded, with the sampler of repeated augmentation) and the validation of every epoch (top-1 and top-5 on val/,
or the copy detection of a collection's held-out images)."""

import functools
import os

import torch
import torch.utils.data
from torchvision.transforms.functional import InterpolationMode

import engine
import presets
import utils
from multigrain.evaluation.copy_validation import MIN_HELD_OUT, CopyValidation
from multigrain.images.collection import Unlabelled, read_collection
from multigrain.images.copy_augmentation import CopyDetectionAugmentation
from multigrain.images.datasets import (
    ImageFolder,
    ImageList,
    RepeatedViews,
    SeededItems,
    SkipBadImages,
    WithIndex,
    collate_skipping_bad,
)
from multigrain.images.image_io import load_rgb
from multigrain.training import distributed
from sampler import RASampler

VAL_FRACTION = 0.1  # of a collection, held out for validation by default


def check_collection(args):
    """Refuses a collection that cannot be trained on or validated with these flags; returns it (a Collection)."""
    if args.classif_weight > 0 and not args.test_only:
        raise ValueError(
            f"--classif-weight {args.classif_weight}: the classification loss needs class labels, and --data-kind "
            "collection has none (no class folders): pass --classif-weight 0 to train the instance loss alone"
        )
    if args.val_list and args.val_fraction is not None:
        raise ValueError("--val-list and --val-fraction both choose the held-out images: pass one of them")
    return read_collection(
        args.data_path, args.data_root, val_fraction=VAL_FRACTION if args.val_fraction is None else args.val_fraction,
        val_list=args.val_list, min_held_out=MIN_HELD_OUT,
        min_training=0 if args.test_only else args.batch_size * utils.launch_world_size(),
    )  # fmt: skip


def skipping_bad_images(dataset, args):
    return SkipBadImages(dataset) if args.skip_bad_images else dataset


def load_data(args):
    interpolation = InterpolationMode(args.interpolation)
    val_transform = presets.ClassificationPresetEval(
        crop_size=args.val_crop_size, resize_size=args.val_resize_size, interpolation=interpolation
    )
    dataset_val = ImageFolder(os.path.join(args.data_path, "val"), val_transform, loader=load_rgb)
    # Validation is sharded without padding, so every image is counted exactly once.
    shard = range(distributed.get_rank(), len(dataset_val), distributed.get_world_size())
    shard_val = skipping_bad_images(torch.utils.data.Subset(dataset_val, shard), args)
    if args.test_only:
        return None, None, None, shard_val, dataset_val.classes

    dataset = ImageFolder(os.path.join(args.data_path, "train"), loader=load_rgb)
    paths = [path for path, _ in dataset.samples]
    train_transform = training_transform(args, ImageList(paths, paths))
    # Under --ra-decode-once the images are decoded without transform and RepeatedViews augments each copy.
    dataset.transform = None if args.ra_decode_once else train_transform
    return (*seeded_samples(dataset, train_transform, args), shard_val, dataset_val.classes)


def load_collection(args):
    """The training samples of --data-kind collection and their sampler, the copy-detection validation of its held-out
    images (None without them), and the Collection."""
    collection = check_collection(args)
    held_out = collection.images("held_out")
    validation = CopyValidation(held_out, skip_bad_images=args.skip_bad_images) if len(held_out) else None
    if args.test_only:
        return None, None, None, validation, collection
    images = collection.images("training")
    train_transform = training_transform(args, images)
    dataset = Unlabelled(images if args.ra_decode_once else images.with_transform(train_transform))
    return (*seeded_samples(dataset, train_transform, args), validation, collection)


def training_transform(args, other_images):
    """The transform of --augmentation; copy-detection pastes images of `other_images` (an ImageList)."""
    interpolation = InterpolationMode(args.interpolation)
    if args.augmentation == "copy-detection":
        return CopyDetectionAugmentation(args.train_crop_size, other_images=other_images, interpolation=interpolation)
    return presets.ClassificationPresetTrain(
        crop_size=args.train_crop_size,
        interpolation=interpolation,
        auto_augment_policy=args.auto_augment,
        ra_magnitude=args.ra_magnitude,
        augmix_severity=args.augmix_severity,
        color_jitter=args.color_jitter,
        lighting=args.lighting,
        photometric_on_device=args.auto_augment is None,  # the workers then crop and flip, see engine.py
    )


def seeded_samples(dataset, transform, args):
    """The training dataset of `dataset`'s (image, label) items, each sample seeded (SeededItems), its RASampler and
    the photometric augmentation the training step applies on the device (None: the workers applied all of it);
    under --ra-decode-once `dataset` has no transform and RepeatedViews applies `transform` to each copy."""
    reps = args.ra_reps if args.ra_sampler else 1
    train_sampler = RASampler(len(dataset), reps=reps, seed=args.seed, epoch_len_factor=args.epoch_len_factor)
    dataset = RepeatedViews(dataset, transform) if args.ra_decode_once else WithIndex(dataset)
    return skipping_bad_images(SeededItems(dataset), args), train_sampler, transform.photometric


def validation(args, dataset_val, device, amp_dtype):
    """The validation of every epoch, model -> metrics: top-1 and top-5 on the val/ ImageFolder shard `dataset_val`,
    or a collection's copy detection (`dataset_val` a CopyValidation; None: no held-out images, no metrics)."""
    if dataset_val is None:
        return lambda model: {}
    if isinstance(dataset_val, CopyValidation):
        return functools.partial(
            dataset_val.evaluate, device=device, input_size=args.val_input_size or args.train_crop_size,
            interpolation=InterpolationMode(args.interpolation), batch_size=args.batch_size, num_workers=args.workers,
            amp_dtype=amp_dtype,
        )  # fmt: skip
    val_loader = torch.utils.data.DataLoader(
        dataset_val,
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_skipping_bad if args.skip_bad_images else None,
    )
    return functools.partial(
        engine.evaluate, data_loader=val_loader, device=device, amp_dtype=amp_dtype, print_freq=args.print_freq
    )
