"""A faiss index of a descriptor collection saved in one file, reused while the collection has not changed.

The file (NAME.npz, written atomically) holds the serialised index and a record of what it was built from: the
index-factory string and, for each descriptor file of the collection, its rows, bytes and modification time. It is
read only while the collection's files are the same; otherwise the reason is named (images added since, a shard
written again, ...). A "Flat" index searches exactly.
"""

import json
import os

import numpy as np

from ..storage.atomic_write import atomic_path
from .nn_search import approximate_index, faiss_module, set_nprobe

FORMAT = "multigrain saved faiss index, version 1"


def collection_state(collection):
    """What the index depends on: the dimension and each descriptor file's name, rows, bytes and time."""
    files = []
    for array, rows in zip(collection.arrays, collection.sizes):
        status = os.stat(array)
        files.append({"file": array.name, "rows": rows, "bytes": status.st_size, "mtime_ns": status.st_mtime_ns})
    return {"dim": collection.dim, "files": files}


def changes(saved, current):
    """Why a collection in state `current` is not the one an index of state `saved` was built from (empty: it is)."""
    if saved["dim"] != current["dim"]:
        return [f"its descriptors are {current['dim']}-d, the index's {saved['dim']}-d"]
    old = {entry["file"]: entry for entry in saved["files"]}
    new = {entry["file"]: entry for entry in current["files"]}
    reasons = []
    added = [entry for name, entry in new.items() if name not in old]
    if added:
        images = sum(entry["rows"] for entry in added)
        reasons.append(f"{images} images were added to it since ({', '.join(entry['file'] for entry in added)})")
    reasons += [f"{name} is no longer part of it" for name in old if name not in new]
    reasons += [f"{name} was written again since" for name in old if name in new and old[name] != new[name]]
    return reasons


def build_index(collection, factory, train_size, nprobe=None):
    """A faiss index of `collection` from the index-factory string, trained on `train_size` of its descriptors."""
    return approximate_index(factory, collection.sample(train_size), collection.parts(), nprobe)


def save_index(path, index, factory, collection):
    faiss = faiss_module()
    record = {"format": FORMAT, "factory": factory, "collection": collection_state(collection)}
    data = {"record": np.array(json.dumps(record)), "index": faiss.serialize_index(index)}
    with atomic_path(path, "saved index") as tmp_path, open(tmp_path, "wb") as f:
        np.savez(f, **data)


def read_record(path):
    """The record of a saved index file, refused with its reason when the file is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            record = json.loads(str(data["record"]))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--index {path} is not a saved index of search.py ({e})") from None
    if record.get("format") != FORMAT:
        raise ValueError(f"--index {path} is a {record.get('format')!r} file, not a {FORMAT!r}")
    return record


def check_index(path, collection, flag, factory=None):
    """Refuses the saved index `path` for `collection` (named by `flag`) when it was built from another state of
    it, or with another index-factory string than `factory` (when given); returns its record."""
    record = read_record(path)
    if factory is not None and factory != record["factory"]:
        raise ValueError(
            f"--index {path} is a {record['factory']!r} index, not --faiss-index {factory!r}: pass another --index file"
        )
    reasons = changes(record["collection"], collection_state(collection))
    if reasons:
        raise ValueError(
            f"--index {path} was built from {flag} {collection.arrays[0].parent} as it was before: "
            f"{'; '.join(reasons)}. Build a new index: pass another --index file"
        )
    return record


def load_index(path, nprobe=None):
    """The faiss index of a saved index file (checked first with check_index)."""
    faiss = faiss_module()
    with np.load(path, allow_pickle=False) as data:
        index = faiss.deserialize_index(data["index"])
    set_nprobe(index, nprobe, f"the index in {path}")
    return index
