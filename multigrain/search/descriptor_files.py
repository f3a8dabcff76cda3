"""Descriptor files: float32 arrays with the names of their images, as evaluate.py and extract.py write them.

A descriptor file is a pair STEM.npy (float32, one row per image) + STEM.txt (one image name a line, in the
same order, UTF-8, "\\n" ending each line). `evaluate.py --save-features` writes one pair per benchmark part;
`extract.py` writes a folder of shards descriptors-00000.*, descriptors-00001.*, ... with a manifest.json that
says which are complete. Every file is written atomically (a temporary file in the same folder, renamed), so a
killed run leaves whole files only.

A name that cannot be one line of UTF-8 text (a line break in it, or bytes of the file system that are not
UTF-8) is refused when written. Descriptors are read as float32 from float16, float32 or float64 arrays of shape
(images, dimension); any other type, and rows that are not finite (as float32), are refused naming the file and
the images.
"""

import json
import os
import re
from pathlib import Path

import numpy as np

from ..storage.atomic_write import write_atomic
from ..storage.input_files import LINE_BREAKS, check_regular_file, read_lines, read_text, shown

MANIFEST = "manifest.json"
SHARD_STEM = re.compile(r"descriptors-\d{5}")
DESCRIPTOR_DTYPES = (np.float16, np.float32, np.float64)
ROWS_CHECKED_AT_ONCE = 8192  # 64 MiB of 2048-d float32 rows


def name_problem(name):
    """Why `name` cannot be one line of a names file (None when it can)."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a str"
    if any(character in LINE_BREAKS for character in name):
        return "it holds a line break"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    return None


def check_names(names, where):
    """Refuses (ValueError) the names that cannot be one line of a names file, naming up to five and why."""
    bad = [(name, problem) for name in names if (problem := name_problem(name))]
    if bad:
        listed = ", ".join(f"{shown(name)} ({problem})" for name, problem in bad[:5])
        raise ValueError(
            f"{where}: {len(bad)} image names cannot be written one a line as UTF-8 text: {listed}"
            f"{', ...' if len(bad) > 5 else ''}: rename these files (or list the others in a list file)"
        )


def features_files(folder, stem):
    return Path(folder) / f"{stem}.npy", Path(folder) / f"{stem}.txt"


def save_features(folder, stem, descriptors, names):
    """Writes STEM.npy (float32) and STEM.txt (the names, one a line) in `folder`."""
    if len(descriptors) != len(names):
        raise ValueError(f"{len(names)} names for {len(descriptors)} descriptors")
    check_names(names, f"{stem}.txt")
    os.makedirs(folder, exist_ok=True)
    array_path, names_path = features_files(folder, stem)
    write_atomic(array_path, lambda f: np.save(f, np.asarray(descriptors, dtype=np.float32)), "descriptors")
    write_atomic(names_path, lambda f: f.write("".join(f"{name}\n" for name in names).encode()), "names")


def write_json(path, record):
    write_atomic(path, lambda f: f.write((json.dumps(record, indent=1, sort_keys=True) + "\n").encode()))


def open_descriptors(array_path):
    """The array of a descriptor file STEM.npy, memory-mapped (nothing read yet), checked to be an (images,
    dimension) array of float16, float32 or float64."""
    check_regular_file(array_path)
    try:
        array = np.load(array_path, mmap_mode="r")
    except (ValueError, EOFError) as e:
        raise ValueError(f"{array_path} is not a .npy array: {e}") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{array_path} is not a .npy array (an .npz archive?)")
    if array.dtype.type not in DESCRIPTOR_DTYPES:
        raise ValueError(f"{array_path} holds {array.dtype} values: descriptors are float32 (or float16, float64)")
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{array_path} holds an array of shape {array.shape}, expected (images, dimension)")
    return array


def read_names(array_path):
    """The names of the images of STEM.npy (from STEM.txt), checked against the array's rows; and the array's
    shape, read without loading it."""
    array_path = Path(array_path)
    names_path = array_path.with_suffix(".txt")
    for path in (array_path, names_path):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (descriptors come as NAME.npy with NAME.txt)")
    shape = open_descriptors(array_path).shape
    names = read_lines(names_path)
    if len(names) != shape[0]:
        raise ValueError(f"{names_path} lists {len(names)} names but {array_path} holds {shape[0]} descriptors")
    return names, shape


def non_finite_rows(array):
    """The indices of the rows of a 2-D array that are not finite once float32 (1e39 in float64 is not)."""
    bad = []
    for start in range(0, len(array), ROWS_CHECKED_AT_ONCE):
        with np.errstate(over="ignore"):
            rows = np.asarray(array[start : start + ROWS_CHECKED_AT_ONCE], dtype=np.float32)
        bad.extend(start + np.flatnonzero(~np.isfinite(rows).all(axis=1)))
    return bad


def check_finite_rows(array_path, array, names):
    """Refuses (ValueError) a descriptor file with NaN or infinite rows, naming up to five of their images."""
    bad = non_finite_rows(array)
    if bad:
        listed = ", ".join(f"{shown(names[row])} (row {row})" for row in bad[:5])
        raise ValueError(
            f"{array_path}: {len(bad)} of {len(names)} descriptors hold NaN or infinite values: {listed}"
            f"{', ...' if len(bad) > 5 else ''}. No score can be computed with them: extract them again"
        )


def read_features(array_path):
    """(float32 descriptors, names) of one descriptor file STEM.npy + STEM.txt, every row finite."""
    names, _ = read_names(array_path)
    descriptors = np.load(array_path).astype(np.float32, copy=False)
    check_finite_rows(array_path, descriptors, names)
    return descriptors, names


def read_manifest(path):
    """The manifest.json of an extract.py folder, checked as far as reading the folder needs: an object whose
    "shards" list the stems descriptors-NNNNN, once each, with a "complete" flag (and, when recorded, the
    "files" that extract.py wrote: name -> {"bytes", "sha256"})."""

    def refuse(what):
        return ValueError(
            f"{path} is not a manifest of extract.py ({what}): restore the file, or extract the images again into "
            "a new --output-dir"
        )

    try:
        manifest = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise refuse(f"not JSON: {e}") from None
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list):
        raise refuse('no "shards" list')
    stems = set()
    for index, shard in enumerate(shards):
        if not isinstance(shard, dict) or not isinstance(shard.get("complete"), bool):
            raise refuse(f'shard {index} is not an object with a true or false "complete"')
        stem = shard.get("stem")
        if not isinstance(stem, str) or not SHARD_STEM.fullmatch(stem) or stem in stems:
            raise refuse(f"shard {index} has the stem {stem!r}, not a new descriptors-NNNNN")
        stems.add(stem)
        files = shard.get("files", {})
        if not isinstance(files, dict) or not all(
            name in (f"{stem}.npy", f"{stem}.txt")
            and isinstance(record, dict)
            and isinstance(record.get("bytes"), int)
            and isinstance(record.get("sha256"), str)
            for name, record in files.items()
        ):
            raise refuse(f'shard {index} has "files" that are not {{"{stem}.npy": {{"bytes", "sha256"}}, ...}}')
    return manifest


def check_file_sizes(folder, shard):
    """Refuses a shard file whose size is not the one extract.py recorded in the manifest (a file replaced or
    cut after the extraction)."""
    for name, record in shard.get("files", {}).items():
        path = Path(folder) / name
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: run its extract.py command again, which extracts it again")
        size = os.path.getsize(path)
        if size != record["bytes"]:
            raise ValueError(
                f"{path} has {size} bytes, {MANIFEST} records {record['bytes']}: the file changed "
                "after the extraction; run its extract.py command again, which extracts the shard again"
            )


class DescriptorCollection:
    """The descriptor files of one collection, in order, read one file at a time.

    `path` is a descriptor file STEM.npy, a folder written by extract.py (its complete shards, in order; an
    unfinished extraction is refused), or a folder holding exactly one STEM.npy. `names` lists every image;
    `parts()` yields (offset of the first row, float32 array) file by file, so that at most one file's
    descriptors are in memory.
    """

    def __init__(self, path, flag):
        """Reads the names and checks every file (shapes, types, finite rows; against the manifest's record of
        each file's size): a ValueError or OSError names what is wrong."""
        path = Path(path)
        if path.is_dir():
            arrays = self._folder_arrays(path, flag)
        elif path.exists() or path.with_suffix(".npy").exists():
            arrays = [path.with_suffix(".npy")]
        else:
            raise FileNotFoundError(f"{flag} {path} does not exist")
        self.arrays, self.names, self.sizes = arrays, [], []
        self.dim = None
        for array_path in arrays:
            names, shape = read_names(array_path)
            if self.dim is not None and shape[1] != self.dim:
                raise ValueError(f"{flag}: {array_path} holds {shape[1]}-d descriptors, {arrays[0]} {self.dim}-d")
            check_finite_rows(array_path, open_descriptors(array_path), names)
            self.dim = shape[1]
            self.names.extend(names)
            self.sizes.append(shape[0])
        if not self.names:
            raise ValueError(f"{flag} {path} holds no descriptors")

    @staticmethod
    def _folder_arrays(folder, flag):
        manifest_path = folder / MANIFEST
        if manifest_path.exists():
            shards = read_manifest(manifest_path)["shards"]
            unfinished = [shard["stem"] for shard in shards if not shard["complete"]]
            if unfinished:
                raise ValueError(
                    f"{flag} {folder}: the extraction is not finished ({len(shards) - len(unfinished)} of "
                    f"{len(shards)} shards complete, first missing {unfinished[0]}): run its extract.py command again"
                )
            for shard in shards:
                check_file_sizes(folder, shard)
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
        for array_path, size in zip(self.arrays, self.sizes):
            if size:  # a shard whose images were all bad holds no row
                yield offset, np.load(array_path).astype(np.float32, copy=False)
            offset += size

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
