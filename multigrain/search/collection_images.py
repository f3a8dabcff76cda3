"""The image files behind an extract.py collection: where they are, and whether they are still the files that were
described.

Next to each shard STEM.npy, extract.py records the size and modification time of every image it described, in
STEM.files.npy (int64 rows [bytes, mtime_ns], in the order of STEM.txt). The names are relative to the collection's
images folder: its --images when that is a folder, else its --root (manifest.json's "input").
"""

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..storage.atomic_write import write_atomic
from .descriptor_files import MANIFEST
from .descriptor_files import read_manifest as read_manifest_file

FILE_STATS_SUFFIX = ".files.npy"
MISSING = -1  # the size and time of a file that does not exist


def file_stats_path(folder, stem):
    return Path(folder) / f"{stem}{FILE_STATS_SUFFIX}"


def file_stats(paths):
    """int64 (len(paths), 2): the size in bytes and the modification time in ns of each file, MISSING for both
    where there is no such file."""
    stats = np.full((len(paths), 2), MISSING, dtype=np.int64)
    for row, path in enumerate(paths):
        try:
            status = os.stat(path)
        except OSError:
            continue
        stats[row] = status.st_size, status.st_mtime_ns
    return stats


def save_file_stats(folder, stem, paths):
    """Writes STEM.files.npy: the file_stats of the images of shard STEM, as they are when it is described."""
    stats = file_stats(paths)
    write_atomic(file_stats_path(folder, stem), lambda f: np.save(f, stats), "image file sizes and times")


def images_folder(manifest):
    """The folder the names of an extract.py collection are relative to."""
    return Path(manifest["input"]["root"] or manifest["input"]["images"])


def read_manifest(folder):
    """The manifest.json of an extract.py folder (checked: descriptor_files.read_manifest), None if there is none."""
    path = Path(folder) / MANIFEST
    return read_manifest_file(path) if path.exists() else None


class ImageFacts(NamedTuple):
    """What a report and the keep rules show of an image file: its state ("present", "missing", or "changed" since
    it was described), its size in bytes and modification time (None when missing), its width and height in
    pixels (None when not asked for, or unreadable)."""

    state: str
    bytes: int | None
    mtime_ns: int | None
    width: int | None = None
    height: int | None = None


class CollectionImages:
    """The image file of each of `names` (relative to the folder `root`), and the [bytes, mtime_ns] `recorded` of
    each when it was described (None if unknown).

    `root` is None when the images are not reachable (a NAME.npy of evaluate.py records no folder; the folder may be
    gone): `unreachable` then says why.
    """

    def __init__(self, names, root=None, *, unreachable=None, recorded=None):
        self.names, self.root, self.unreachable, self.recorded = names, root, unreachable, recorded

    @classmethod
    def of_collection(cls, collection, flag):
        """The images of a DescriptorCollection (named by its flag in the messages)."""
        folder = collection.arrays[0].parent
        manifest = read_manifest(folder)
        if manifest is None or "input" not in manifest:
            unreachable = f"{flag} {folder} records no images folder (the folders of extract.py do)"
            return cls(collection.names, unreachable=unreachable)
        root = images_folder(manifest)
        if not root.is_dir():
            return cls(collection.names, unreachable=f"the images folder of {flag} {folder}, {root}, is not there")
        stats = [file_stats_path(array.parent, array.stem) for array in collection.arrays]
        recorded = np.concatenate([np.load(path) for path in stats]) if all(p.is_file() for p in stats) else None
        return cls(collection.names, root, recorded=recorded)

    def path(self, row):
        return self.root / self.names[row]

    def facts(self, rows, pixels=False):
        """{row: ImageFacts} of the image files of `rows`; with `pixels`, their width and height too (read from
        the file's header). Needs the images folder (`root`)."""
        rows = list(rows)
        stats = file_stats([self.path(row) for row in rows])
        result = {}
        for row, (size, mtime_ns) in zip(rows, stats.tolist()):
            if size == MISSING:
                result[row] = ImageFacts("missing", None, None)
                continue
            changed = self.recorded is not None and self.recorded[row].tolist() != [size, mtime_ns]
            width = height = None
            if pixels:
                try:
                    with Image.open(self.path(row)) as image:
                        width, height = image.size
                except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                    pass
            result[row] = ImageFacts("changed" if changed else "present", size, mtime_ns, width, height)
        return result
