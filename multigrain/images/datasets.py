"""Image files as datasets, and the wrappers that the training and evaluation loaders put around datasets."""

import copy
import os

import torch.utils.data
import torchvision
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..training.seeding import seed_all
from .image_io import BadImageError, load_rgb


def is_image_file(name) -> bool:
    """Whether the file name ends with one of torchvision's image extensions, in any case."""
    return str(name).lower().endswith(IMG_EXTENSIONS)


def list_image_files(root, recursive=False, others=None):
    """The paths relative to `root` of its image files (and, if `recursive`, of its sub-folders'), sorted; with an
    `others` list, the paths of the regular files that are not images by their extension are appended to it.

    Only regular files are images (not a FIFO named x.jpg). Links are followed, but every real folder is
    listed once: a link to a folder already listed, or to a folder holding `root` (a loop, such as a link
    to a parent folder), adds nothing.
    """
    names = []
    listed = set()
    top = os.path.realpath(root)

    def holds_root(real):
        return top == real or top.startswith(real.rstrip(os.sep) + os.sep)

    def add(folder, prefix):
        listed.add(os.path.realpath(folder))
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda entry: entry.name):
                if entry.is_dir():
                    real = os.path.realpath(entry.path)
                    if recursive and real not in listed and not holds_root(real):
                        add(entry.path, prefix + entry.name + os.sep)
                elif entry.is_file() and is_image_file(entry.name):
                    names.append(prefix + entry.name)
                elif entry.is_file() and others is not None:
                    others.append(prefix + entry.name)

    add(os.fspath(root), "")
    return sorted(names)


class ImageFolder(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder (class sub-folders of images) with each class's files listed by
    `list_image_files`: regular files only (a FIFO named x.jpg would block the loader), every real folder
    once (a link loop adds nothing)."""

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        samples = []
        for class_name, label in sorted(class_to_idx.items(), key=lambda item: item[1]):
            folder = os.path.join(directory, class_name)
            names = list_image_files(folder, recursive=True)
            if not names and not allow_empty:
                raise FileNotFoundError(f"class folder {folder} holds no image file")
            samples.extend((os.path.join(folder, name), label) for name in names)
        return samples


class ImageList(torch.utils.data.Dataset):
    """RGB images read from `paths`, each optionally rotated, then cropped, then transformed.

    names: one identifier per image (e.g. its path relative to the dataset folder), saved next to
    descriptors. rotations: degrees per image (0: none), applied with Image.rotate(degrees,
    expand=True). boxes: (x1, y1, x2, y2) per image or None, applied with Image.crop. The files are
    opened by `load_rgb`, which turns them upright by their EXIF orientation unless `exif_transpose`
    is False.
    """

    def __init__(self, paths, names, rotations=None, boxes=None, transform=None, exif_transpose=True):
        if len(names) != len(paths):
            raise ValueError(f"got {len(names)} names for {len(paths)} image paths")
        self.paths = [str(path) for path in paths]
        self.names = list(names)
        self.rotations = list(rotations) if rotations is not None else [0] * len(paths)
        self.boxes = list(boxes) if boxes is not None else [None] * len(paths)
        if len(self.rotations) != len(paths) or len(self.boxes) != len(paths):
            raise ValueError("need one rotation and one box (or None) per image")
        self.transform = transform
        self.exif_transpose = exif_transpose

    def with_transform(self, transform):
        images = copy.copy(self)
        images.transform = transform
        return images

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        image = load_rgb(self.paths[index], exif_transpose=self.exif_transpose)
        if self.rotations[index]:
            image = image.rotate(self.rotations[index], expand=True)
        if self.boxes[index] is not None:
            image = image.crop(self.boxes[index])
        return self.transform(image) if self.transform is not None else image


class WithIndex(torch.utils.data.Dataset):
    """Yields (image, label, index): the dataset index is the instance id of the margin loss."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.classes = dataset.classes

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return image, label, index


class RepeatedViews(torch.utils.data.Dataset):
    """Indexed by (index, copies): reads item `index` of `dataset` once, returns `copies` samples.

    `dataset[index]` gives (image, label) with the image not yet transformed (e.g. an ImageFolder
    without transform). Each of the `copies` samples is (transform(image), label, index), from its own
    random draw of `transform`; the index is the instance id of the margin loss. The (index, copies)
    pairs come from `sampler.DecodeOnceBatchSampler`, and `collate_views` makes a batch of them.
    """

    def __init__(self, dataset, transform):
        self.dataset = dataset
        self.transform = transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, copies = item
        image, label = self.dataset[index]
        return [(self.transform(image), label, index) for _ in range(copies)]


class SeededItems(torch.utils.data.Dataset):
    """Indexed by (seed, item): seeds torch, numpy and random with `seed`, then returns dataset[item].

    Each sample's augmentation then depends on its own seed only (see `sampler.SeededBatches`), not on
    the worker that loads it nor on the samples that worker loaded before: the same with any number of
    DataLoader workers, and the same when an epoch resumes in its middle.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, seeded_item):
        seed, item = seeded_item
        seed_all(seed, accelerators=False)  # the transforms draw on the CPU
        return self.dataset[item]


class SkipBadImages(torch.utils.data.Dataset):
    """Yields None, after printing why, for the items whose image file cannot be decoded."""

    def __init__(self, dataset):
        self.dataset = dataset

    @property
    def names(self):
        return self.dataset.names

    def with_transform(self, transform):
        return SkipBadImages(self.dataset.with_transform(transform))

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except BadImageError as e:
            print(f"skipping bad image: {e}", flush=True)
            return None


def collate_skipping_bad(batch):
    """default_collate of the items that are not None (see SkipBadImages)."""
    kept = [item for item in batch if item is not None]
    if not kept:
        raise BadImageError(f"all {len(batch)} images of a batch failed to load (see the messages above)")
    return torch.utils.data.default_collate(kept)


def collate_views(batch):
    """default_collate of the samples of a batch of `RepeatedViews` items.

    An item that is None (an image that `SkipBadImages` could not read) contributes nothing.
    """
    samples = [sample for views in batch if views is not None for sample in views]
    if not samples:
        raise BadImageError(f"all {len(batch)} images of a batch failed to load (see the messages above)")
    return torch.utils.data.default_collate(samples)
