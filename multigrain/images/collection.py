"""A collection of unlabelled images, the training data of instance-only training (`train.py --data-kind
collection`): the images of a folder or list file, the part held out for validation, and the check that a resumed
run still has the same images.

The held-out part is fixed by the names alone, not by the seed: the `round(fraction × N)` images whose names have
the smallest SHA-256 (or the images of a list file). Runs with other seeds validate on the same images, and images
added to the collection later leave most of the held-out part where it was.
"""

import dataclasses
import hashlib
import os
from pathlib import Path

import torch.utils.data

from ..storage.atomic_write import write_atomic
from .datasets import ImageList
from .image_lists import names_sha256, read_image_list

NO_CLASS = -1  # the label of an image without class; λ = 0 never reads it
# The names of each part, written into the run's --output-dir: the difference a resumed run is refused with.
LIST_FILES = {"training": "training_images.txt", "held_out": "held_out_images.txt"}


@dataclasses.dataclass
class Collection:
    """The images of a collection, named by their path relative to `root`, split into `training` and `held_out`
    names (each in the order of the folder listing or the list file)."""

    root: str
    training: list
    held_out: list

    def images(self, part) -> ImageList:
        """The images of a part ("training" or "held_out") without transform."""
        names = getattr(self, part)
        return ImageList([os.path.join(self.root, name) for name in names], names)

    def fingerprint(self) -> dict:
        """What a resumed run must find again: the number of images of each part and the SHA-256 of their names."""
        parts = {part: getattr(self, part) for part in LIST_FILES}
        return {part: {"images": len(names), "sha256": names_sha256(names)} for part, names in parts.items()}

    def write_lists(self, folder):
        """Writes the names of each part into `folder` (LIST_FILES), one a line."""
        for part, file_name in LIST_FILES.items():
            lines = "".join(f"{name}\n" for name in getattr(self, part))
            write_atomic(os.path.join(folder, file_name), lambda f, lines=lines: f.write(lines.encode()), "image list")

    def check_unchanged(self, stored, checkpoint_path):
        """Refuses to continue the run of `checkpoint_path`, whose collection had the fingerprint `stored`, on other
        images; the message names the images added to and removed from each part when the run's lists (LIST_FILES,
        next to its checkpoint) are there, else the counts."""
        if stored is None or stored == self.fingerprint():
            return
        folder = os.path.dirname(checkpoint_path)
        changes = []
        for part, file_name in LIST_FILES.items():
            if stored[part] == self.fingerprint()[part]:
                continue
            names = getattr(self, part)
            path = os.path.join(folder, file_name)
            if not os.path.isfile(path):
                changes.append(f"{part.replace('_', '-')} part: {stored[part]['images']} → {len(names)} images")
                continue
            before = [line for line in Path(path).read_text().splitlines() if line]
            before_set, names_set = set(before), set(names)
            added = [name for name in names if name not in before_set]
            removed = [name for name in before if name not in names_set]
            changes.append(f"{part.replace('_', '-')} part: {_changed(added, 'added')}, {_changed(removed, 'removed')}")
        raise ValueError(
            f"{checkpoint_path} was trained on another collection than --data-path's images now: "
            + "; ".join(changes)
            + ". Continue it on its own images, or start a new run with another --output-dir"
        )


def _changed(names, what):
    if not names:
        return f"none {what}"
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} {what} ({shown})"


def read_held_out_list(path, names):
    """The names of a held-out list file, one a line: images of the collection (`names`), each once."""
    if not os.path.isfile(path):
        raise ValueError(f"--val-list {path} is not a file")
    known, listed = set(names), {}
    for line, text in enumerate(Path(path).read_text().splitlines(), 1):
        name = text.strip()
        if not name:
            continue
        if name not in known:
            raise ValueError(f"--val-list {path} line {line}: {name} is not an image of the collection")
        if name in listed:
            raise ValueError(f"--val-list {path} line {line}: {name} was already listed on line {listed[name]}")
        listed[name] = line
    return listed


def read_collection(images, root=None, *, val_fraction=0.0, val_list=None, min_held_out=1, min_training=1):
    """The collection of `images` (a folder, or a list file of paths relative to `root`: read_image_list, with
    train.py's flags --data-path and --data-root), split into training and held-out parts: the images of `val_list`,
    or the round(val_fraction × N) ones whose names have the smallest SHA-256. Refuses a held-out part of fewer than
    `min_held_out` images (none is allowed), and fewer than `min_training` training images (a global batch)."""
    paths, names = read_image_list(images, root, images_flag="--data-path", root_flag="--data-root")
    if val_list:
        held_out = read_held_out_list(val_list, names)
    else:
        count = round(val_fraction * len(names))
        held_out = set(
            sorted(names, key=lambda name: hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest())[:count]
        )
    if 0 < len(held_out) < min_held_out:
        raise ValueError(
            f"{len(held_out)} of the {len(names)} images of --data-path {images} are held out for validation: scoring "
            f"copy detection needs at least {min_held_out} (--val-fraction, --val-list)"
        )
    training = [name for name in names if name not in held_out]
    if len(training) < min_training:
        raise ValueError(
            f"--data-path {images} has {len(training)} training images ({len(held_out)} more held out), fewer than a "
            f"global batch of {min_training}: lower -b, or add images"
        )
    folder = os.fspath(root if root else images)
    return Collection(folder, training, [name for name in names if name in held_out])


class Unlabelled(torch.utils.data.Dataset):
    """The images of `images` (e.g. an ImageList) as (image, NO_CLASS): a dataset of one instance per image,
    without classes."""

    classes = []

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], NO_CLASS
