"""Images added to an extract.py collection: only those not yet described, in new shards that join the collection
together once all of them are complete.

While it runs, an addition lives in the manifest's "adding" entry: readers of the collection see its "shards" only,
so a killed addition leaves the collection as it was, and the same command resumes it. When its last shard is
written, its shards are appended to "shards" and the manifest's "additions" records what was added when, in one
atomic write of the manifest.
"""

import datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..images.image_lists import names_sha256
from .collection_images import MISSING, file_stats, file_stats_path, images_folder
from .descriptor_files import features_files

SHOWN = 5  # names quoted in a message


def plan_shards(count, shard_size, first_stem=0):
    """The shards of `count` images, `shard_size` a shard, numbered from descriptors-<first_stem>."""
    return [
        {
            "stem": f"descriptors-{first_stem + index:05d}",
            "first": first,
            "images": min(shard_size, count - first),
            "complete": False,
            "descriptors": 0,
            "bad_images": [],
        }
        for index, first in enumerate(range(0, count, shard_size))
    ]


def quoted(names):
    return ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


class Addition(NamedTuple):
    """The images of a command that the collection does not describe yet (their paths and names), and those it
    describes that are no longer there (`vanished`)."""

    paths: list
    names: list
    vanished: list


def plan_addition(folder, manifest, paths, names, root):
    """The Addition of the images (paths, names relative to `root`) to the collection in `folder`. Refuses another
    images folder, an unfinished extraction and images changed since they were described, naming them."""
    collection_root = images_folder(manifest)
    if Path(root) != collection_root:
        raise ValueError(
            f"--add: the images of the collection in {folder} are named relative to {collection_root}, this command's "
            f"relative to {root}: give the new images from that folder (a sub-folder, or a list file with --root)"
        )
    unfinished = [shard["stem"] for shard in manifest["shards"] if not shard["complete"]]
    if unfinished:
        raise ValueError(
            f"--add: the extraction in {folder} is not finished (first missing {unfinished[0]}): run its extract.py "
            "command again first"
        )
    described, recorded = [], []
    for shard in manifest["shards"]:
        described.extend(features_files(folder, shard["stem"])[1].read_text().splitlines())
        stats_path = file_stats_path(folder, shard["stem"])
        recorded.append(np.load(stats_path) if stats_path.is_file() else None)
    now = file_stats([collection_root / name for name in described])
    vanished = [name for name, (size, _) in zip(described, now.tolist()) if size == MISSING]
    if all(stats is not None for stats in recorded) and described:
        recorded = np.concatenate(recorded)
        differ = (recorded != now).any(axis=1) & (now[:, 0] != MISSING)
        changed = [described[row] for row in np.flatnonzero(differ)]
        if changed:
            raise ValueError(
                f"--add: {len(changed)} images of the collection in {folder} changed since they were described "
                f"({quoted(changed)}): their descriptors no longer match them. Restore them, or extract the folder "
                "again into a new --output-dir"
            )
    known = set(described) | {name for shard in manifest["shards"] for name in shard["bad_images"]}
    new = [index for index, name in enumerate(names) if name not in known]
    return Addition([paths[index] for index in new], [names[index] for index in new], vanished)


def now():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def begin_addition(manifest, addition, shard_size):
    """The shards of `addition` in the manifest's "adding" entry: those of an unfinished addition of the same
    images, or new ones. Returns (shards, the stems of an unfinished addition of other images, whose files the
    caller removes)."""
    pending = manifest.get("adding")
    digest = names_sha256(addition.names)
    if pending is not None and pending["names_sha256"] == digest:
        return pending["shards"], []
    replaced = [shard["stem"] for shard in pending["shards"]] if pending is not None else []
    manifest["adding"] = {
        "started": now(),
        "images": len(addition.names),
        "names_sha256": digest,
        "shards": plan_shards(len(addition.names), shard_size, first_stem=len(manifest["shards"])),
    }
    return manifest["adding"]["shards"], replaced


def added_stems(manifest):
    """The stems of the collection's shards that --add commands added."""
    return {stem for addition in manifest.get("additions", []) for stem in addition.get("shards", [])}


def shard_files(folder, stem):
    return [*features_files(folder, stem), file_stats_path(folder, stem)]


def finish_addition(manifest):
    """Appends the complete shards of the "adding" entry to the collection and records the addition."""
    adding = manifest.pop("adding")
    manifest["shards"].extend(adding["shards"])
    manifest.setdefault("additions", []).append(
        {
            "started": adding["started"],
            "finished": now(),
            "images": adding["images"],
            "descriptors": sum(shard["descriptors"] for shard in adding["shards"]),
            "shards": [shard["stem"] for shard in adding["shards"]],
        }
    )
