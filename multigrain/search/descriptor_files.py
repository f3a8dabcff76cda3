"""Descriptor files: float32 arrays with the names of their images, as evaluate.py and extract.py write them.

A descriptor file is a pair STEM.npy (float32, one row per image) + STEM.txt (one image name a line, in the
same order). `evaluate.py --save-features` writes one pair per benchmark part; `extract.py` writes a folder of
shards descriptors-00000.*, descriptors-00001.*, ... with a manifest.json that says which are complete.
Every file is written atomically (a temporary file in the same folder, renamed), so a killed run leaves
whole files only.
"""

import json
import os
from pathlib import Path

import numpy as np

from ..storage.atomic_write import write_atomic

MANIFEST = "manifest.json"


def features_files(folder, stem):
    return Path(folder) / f"{stem}.npy", Path(folder) / f"{stem}.txt"


def save_features(folder, stem, descriptors, names):
    """Writes STEM.npy (float32) and STEM.txt (the names, one a line) in `folder`."""
    if len(descriptors) != len(names):
        raise ValueError(f"{len(names)} names for {len(descriptors)} descriptors")
    os.makedirs(folder, exist_ok=True)
    array_path, names_path = features_files(folder, stem)
    write_atomic(array_path, lambda f: np.save(f, np.asarray(descriptors, dtype=np.float32)), "descriptors")
    write_atomic(names_path, lambda f: f.write("".join(f"{name}\n" for name in names).encode()), "names")


def write_json(path, record):
    write_atomic(path, lambda f: f.write((json.dumps(record, indent=1, sort_keys=True) + "\n").encode()))


def read_names(array_path):
    """The names of the images of STEM.npy (from STEM.txt), checked against the array's rows; and the array's
    shape, read without loading it."""
    array_path = Path(array_path)
    names_path = array_path.with_suffix(".txt")
    for path in (array_path, names_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (descriptors come as NAME.npy with NAME.txt)")
    try:
        shape = np.load(array_path, mmap_mode="r").shape
    except ValueError as e:
        raise ValueError(f"{array_path} is not a .npy array: {e}") from e
    if len(shape) != 2:
        raise ValueError(f"{array_path} holds an array of shape {shape}, expected (images, dimension)")
    names = names_path.read_text().splitlines()
    if len(names) != shape[0]:
        raise ValueError(f"{names_path} lists {len(names)} names but {array_path} holds {shape[0]} descriptors")
    return names, shape


def read_features(array_path):
    """(float32 descriptors, names) of one descriptor file STEM.npy + STEM.txt."""
    names, _ = read_names(array_path)
    return np.load(array_path).astype(np.float32, copy=False), names


class DescriptorCollection:
    """The descriptor files of one collection, in order, read one file at a time.

    `path` is a descriptor file STEM.npy, a folder written by extract.py (its complete shards, in order; an
    unfinished extraction is refused), or a folder holding exactly one STEM.npy. `names` lists every image;
    `parts()` yields (offset of the first row, float32 array) file by file, so that at most one file's
    descriptors are in memory.
    """

    def __init__(self, path, flag):
        path = Path(path)
        if path.is_dir():
            arrays = self._folder_arrays(path, flag)
        elif path.is_file() or path.with_suffix(".npy").is_file():
            arrays = [path.with_suffix(".npy")]
        else:
            raise FileNotFoundError(f"{flag} {path} does not exist")
        self.arrays, self.names, self.sizes = arrays, [], []
        self.dim = None
        for array_path in arrays:
            names, shape = read_names(array_path)
            if self.dim is not None and shape[1] != self.dim:
                raise ValueError(f"{flag}: {array_path} holds {shape[1]}-d descriptors, {arrays[0]} {self.dim}-d")
            self.dim = shape[1]
            self.names.extend(names)
            self.sizes.append(shape[0])
        if not self.names:
            raise ValueError(f"{flag} {path} holds no descriptors")

    @staticmethod
    def _folder_arrays(folder, flag):
        manifest_path = folder / MANIFEST
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            shards = manifest["shards"]
            unfinished = [shard["stem"] for shard in shards if not shard["complete"]]
            if unfinished:
                raise ValueError(
                    f"{flag} {folder}: the extraction is not finished ({len(shards) - len(unfinished)} of "
                    f"{len(shards)} shards complete, first missing {unfinished[0]}): run its extract.py command again"
                )
            return [folder / f"{shard['stem']}.npy" for shard in shards]
        arrays = sorted(folder.glob("*.npy"))
        if len(arrays) != 1:
            found = ", ".join(array.name for array in arrays) if arrays else "none"
            raise ValueError(
                f"{flag} {folder}: expected an extract.py folder ({MANIFEST}) or a single NAME.npy with NAME.txt, "
                f"found {found}: pass the .npy file"
            )
        return arrays

    def __len__(self):
        return len(self.names)

    def parts(self):
        offset = 0
        for array_path in self.arrays:
            descriptors = np.load(array_path).astype(np.float32, copy=False)
            yield offset, descriptors
            offset += len(descriptors)

    def sample(self, num_rows, seed=0):
        """float32 rows drawn uniformly without replacement (all rows when there are fewer), in row order."""
        rows = np.arange(len(self))
        if num_rows < len(self):
            rows = np.sort(np.random.default_rng(seed).choice(len(self), num_rows, replace=False))
        chosen = []
        for offset, descriptors in self.parts():
            inside = rows[(rows >= offset) & (rows < offset + len(descriptors))]
            chosen.append(descriptors[inside - offset])
        return np.concatenate(chosen)
