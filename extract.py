"""Descriptors of any images with a MultiGrain checkpoint, in shards that a killed run resumes.

    python extract.py --checkpoint whitened.pth --images photos/ --output-dir descriptors/ --input-size 500
    python extract.py --checkpoint whitened.pth --images list.txt --root photos/ --output-dir descriptors/

--images is a folder (every image file under it, links followed, each real folder once) or a list file of
paths relative to --root, one a line. The descriptors (float32) and the image names are written in the
format of `evaluate.py --save-features`, one pair of files per --shard-size images: descriptors-00000.npy
and descriptors-00000.txt, ..., and manifest.json says what was extracted, how, and which shards are
complete. Running the same command again continues where a killed run stopped; search.py reads the folder.
Under torchrun every process extracts its share of each shard.
"""

import datetime
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

import flags
import utils
from multigrain.images.datasets import IMG_EXTENSIONS, ImageList, SkipBadImages, list_image_files
from multigrain.inference.retrieval_descriptors import retrieval_descriptors
from multigrain.search.descriptor_files import (
    MANIFEST,
    check_names,
    features_files,
    read_manifest,
    save_features,
    write_json,
)
from multigrain.storage.atomic_write import write_atomic
from multigrain.storage.folder_lock import hold_folder
from multigrain.storage.input_files import check_regular_file, file_sha256, read_lines, shown
from multigrain.storage.model_files import model_settings, open_model
from multigrain.training import distributed

FORMAT = "multigrain extract.py descriptors, version 1"
BAD_IMAGES = "bad_images.txt"


def read_image_list(args):
    """(paths, names): the images of --images, named by their path relative to the folder or --root, each
    name one line of UTF-8 text (the names files hold them so). A listed path that is not a regular file is
    refused, or left to be skipped as a bad image with --skip-bad-images."""
    images = Path(args.images)
    if images.is_dir():
        if args.root:
            raise ValueError(f"--root is for a list file; --images {images} is a folder")
        others = []
        names = list_image_files(images, recursive=True, others=others)
        if not names:
            raise ValueError(f"--images {images} holds no image file")
        if others and utils.launch_rank() == 0:
            print(
                f"{len(others)} files under --images {images} are not images by their extension "
                f"({' '.join(IMG_EXTENSIONS)}) and are left out, e.g. {', '.join(map(shown, others[:3]))}"
            )
        check_names(names, f"--images {images}")
        return [images / name for name in names], names
    if not images.exists():
        raise ValueError(f"--images {images} does not exist")
    if not args.root:
        raise ValueError(f"--images {images} is a list file: pass the folder its paths are relative to with --root")
    if not os.path.isdir(args.root):
        raise ValueError(f"--root {args.root} is not a folder")
    lines = [(number, line.strip()) for number, line in enumerate(read_lines(images), 1) if line.strip()]
    if not lines:
        raise ValueError(f"--images {images} lists no image")
    seen = set()
    for number, name in lines:
        if name in seen:
            raise ValueError(f"--images {images}: {shown(name)} is listed twice (line {number})")
        seen.add(name)
    names = [name for _, name in lines]
    check_names(names, f"--images {images}")
    if not args.skip_bad_images:
        check_listed_files(images, args.root, lines)
    return [Path(args.root) / name for name in names], names


def check_listed_files(images, root, lines):
    """Refuses a listed path that is not a regular file (missing, a folder, a FIFO), naming its line."""
    for number, name in lines:
        try:
            check_regular_file(Path(root) / name)
        except (OSError, ValueError) as e:  # ValueError: a NUL character in the name
            raise ValueError(
                f"--images {images} line {number}: {shown(name)} cannot be read ({e}): correct the list, "
                "or pass --skip-bad-images to leave such images out"
            ) from None


def settings(args, names):
    """What the descriptors depend on: a resumed run must have the same, or its shards would not match."""
    return {
        "format": FORMAT,
        "input": {
            "images": os.path.abspath(args.images),
            "root": os.path.abspath(args.root) if args.root else None,
            "count": len(names),
            "names_sha256": hashlib.sha256("".join(f"{name}\n" for name in names).encode()).hexdigest(),
        },
        "model": {
            "checkpoint": os.path.abspath(args.checkpoint),
            "sha256": file_sha256(args.checkpoint),
            "pooling_exponent": args.pooling_exponent,
        },
        "extraction": {
            "input_size": args.input_size,
            "multiscale": args.multiscale,
            "interpolation": args.interpolation,
            "amp": args.amp_dtype if args.amp else None,
            "skip_bad_images": args.skip_bad_images,
        },
        "shard_size": args.shard_size,
    }


def read_earlier_manifest(args, names):
    """The manifest of an earlier run of the same command in --output-dir, None if there is none; a run
    with other settings is refused, naming what differs, and a manifest that is not extract.py's too."""
    path = Path(args.output_dir) / MANIFEST
    if not path.exists():
        if any(Path(args.output_dir).glob("descriptors-*")):
            raise ValueError(f"--output-dir {args.output_dir} holds descriptors-* files but no {MANIFEST}")
        return None
    manifest = read_manifest(path)
    for key, value in settings(args, names).items():
        for field, (old, new) in differences(key, manifest.get(key), value):
            raise ValueError(
                f"--output-dir {args.output_dir} holds an extraction with {field} = {old}, this command has {new}: "
                "resume it with its own command, or choose another --output-dir"
            )
    layout = [(shard["stem"], shard["first"], shard["images"]) for shard in new_manifest(args, names, 0)["shards"]]
    shards = manifest["shards"]
    if [(shard.get("stem"), shard.get("first"), shard.get("images")) for shard in shards] != layout or not all(
        isinstance(shard.get("descriptors"), int) and isinstance(shard.get("bad_images"), list) for shard in shards
    ):
        raise ValueError(
            f"{path} does not describe the shards of this extraction (edited?): restore it, or extract the images "
            "again into a new --output-dir"
        )
    if not isinstance(manifest.get("dim"), int):
        raise ValueError(f"{path} has no descriptor dimension (edited?): restore it, or use a new --output-dir")
    return manifest


def differences(field, old, new):
    """(field.path, (old value, new value)) of every leaf where two nested dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            yield from differences(f"{field}.{key}", old.get(key), new.get(key))
    elif old != new:
        yield field, (old, new)


@utils.usage_check
def check_args(args):
    """Refuses bad flags, inputs, checkpoints and an --output-dir of another extraction before any process
    group starts; returns (paths, names, the ModelFile of --checkpoint, manifest or None)."""
    if args.multiscale and args.input_size < 2:
        raise ValueError(f"--multiscale needs --input-size >= 2 for its scale s/2, got {args.input_size}")
    if not os.path.isfile(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint} is not a file")
    utils.check_device(args.device)
    utils.check_writable_folder(args.output_dir, "--output-dir")
    paths, names = read_image_list(args)
    model_file = open_model(args.checkpoint, model_name=args.model)
    if utils.launch_rank() == 0:
        hold_folder(args.output_dir, "--output-dir", "extract.py")
    manifest = read_earlier_manifest(args, names)
    return paths, names, model_file, manifest


def new_manifest(args, names, dim):
    shards = [
        {"stem": f"descriptors-{index:05d}", "first": first, "images": min(args.shard_size, len(names) - first)}
        for index, first in enumerate(range(0, len(names), args.shard_size))
    ]
    for shard in shards:
        shard.update(complete=False, descriptors=0, bad_images=[])
    return {**settings(args, names), "dim": dim, "shards": shards}


def shard_files(folder, stem):
    """{file name: {"bytes", "sha256"}} of a shard's two files, as the manifest records them."""
    return {
        path.name: {"bytes": path.stat().st_size, "sha256": file_sha256(path)} for path in features_files(folder, stem)
    }


def changed_shards(folder, shards):
    """The stems of the shards marked complete whose files are missing, or differ from what the manifest records
    (bytes and sha256), each with the reason."""
    changed = {}
    for shard in shards:
        if not shard["complete"]:
            continue
        recorded = shard.get("files", {})
        for path in features_files(folder, shard["stem"]):
            if not path.is_file():
                changed[shard["stem"]] = f"{path} is missing"
            elif path.name not in recorded:
                changed[shard["stem"]] = f"{MANIFEST} records no size and sha256 of {path.name}"
            elif {"bytes": path.stat().st_size, "sha256": file_sha256(path)} != recorded[path.name]:
                changed[shard["stem"]] = f"{path} is not the file that was written (its size or sha256 differ)"
            else:
                continue
            break
    return changed


def extract_shard(model, shard, paths, names, device, args):
    """(descriptors, names, bad image names) of one shard's images."""
    first, count = shard["first"], shard["images"]
    images = ImageList(paths[first : first + count], names[first : first + count])
    skipped = [] if args.skip_bad_images else None
    if args.skip_bad_images:
        images = SkipBadImages(images)
    descriptors = retrieval_descriptors(model, images, device, skipped=skipped, **flags.retrieval_extraction(args))
    bad = set(skipped or [])
    kept = [index for index in range(count) if index not in bad]
    descriptors = descriptors[kept]
    kept_names = [names[first + index] for index in kept]
    finite = np.isfinite(descriptors).all(axis=1)
    if not finite.all():
        raise FloatingPointError(f"the descriptor of {kept_names[int(np.argmin(finite))]} is not finite")
    return descriptors, kept_names, [names[first + index] for index in sorted(bad)]


def main(args):
    paths, names, model_file, manifest = check_args(args)
    utils.init_distributed_mode(args)
    distributed.print_main(args)
    device = torch.device(args.device)
    model = model_file.model(device, pooling_exponent=args.pooling_exponent)
    del model_file
    distributed.print_main(
        f"{args.checkpoint}: {model_settings(model)}, input size {args.input_size}, "
        f"{'multiscale' if args.multiscale else 'single scale'}; {len(names)} images"
    )
    if manifest is None:
        manifest = new_manifest(args, names, model.classifier.in_features)
        if distributed.is_main_process():
            os.makedirs(args.output_dir, exist_ok=True)
            write_json(Path(args.output_dir) / MANIFEST, manifest)
    elif distributed.is_main_process():
        for unfinished in Path(args.output_dir).glob(".tmp-*"):  # a file a killed run was writing
            unfinished.unlink()
    shards = manifest["shards"]
    # Every process extracts the shards that the main process found changed.
    changed = distributed.all_gather_object(
        changed_shards(args.output_dir, shards) if distributed.is_main_process() else None
    )[0]
    for shard in shards:
        if shard["stem"] in changed:
            shard.update(complete=False, descriptors=0, bad_images=[])
            distributed.print_main(f"{shard['stem']} was complete, but {changed[shard['stem']]}: extracting it again")
    if changed and distributed.is_main_process():
        write_json(Path(args.output_dir) / MANIFEST, manifest)
    todo = [shard for shard in shards if not shard["complete"]]
    remaining = sum(shard["images"] for shard in todo)
    distributed.print_main(
        f"{len(shards) - len(todo)} of {len(shards)} shards already complete; {remaining} images to extract"
    )
    start, extracted = time.time(), 0
    for shard in todo:
        descriptors, kept_names, bad = extract_shard(model, shard, paths, names, device, args)
        if distributed.is_main_process():
            save_features(args.output_dir, shard["stem"], descriptors, kept_names)
            files = shard_files(args.output_dir, shard["stem"])
            shard.update(complete=True, descriptors=len(kept_names), bad_images=bad, files=files)
            write_json(Path(args.output_dir) / MANIFEST, manifest)
        extracted += shard["images"]
        rate = extracted / max(time.time() - start, 1e-9)
        eta = datetime.timedelta(seconds=int((remaining - extracted) / rate))
        distributed.print_main(
            f"{shard['stem']}: {shards.index(shard) + 1}/{len(shards)} shards, {extracted}/{remaining} images, "
            f"{rate:.1f} images/s, ETA {eta}"
        )
    if not distributed.is_main_process():
        return None
    bad = [name for shard in shards for name in shard["bad_images"]]
    if args.skip_bad_images:
        lines = "".join(f"{name}\n" for name in bad).encode()
        write_atomic(Path(args.output_dir, BAD_IMAGES), lambda f: f.write(lines), "list of bad images")
        print(f"{len(bad)} bad images skipped, listed in {Path(args.output_dir, BAD_IMAGES)}")
    total = sum(shard["descriptors"] for shard in shards)
    print(f"{total} descriptors of dimension {manifest['dim']} in {len(shards)} shards in {args.output_dir}")
    return manifest


def get_args_parser(add_help=True):
    parser = flags.script_parser("MultiGrain descriptors of a folder or list of images, in resumable shards", add_help)
    flags.add_checkpoint(parser, "the model to extract descriptors with")
    parser.add_argument(
        "--images",
        required=True,
        help="a folder (its image files, sub-folders included) or a list file of paths relative to --root",
    )
    parser.add_argument("--root", default=None, help="the folder the paths of a list file --images are relative to")
    flags.add_output_dir(parser, "where the shards and manifest.json are written", required=True)
    parser.add_argument(
        "--shard-size", default=10000, type=flags.int_in(1), help="images per shard (descriptors-NNNNN.npy/.txt)"
    )
    flags.add_input_size(parser)
    flags.add_multiscale(parser)
    flags.add_pooling_exponent(parser)
    flags.add_interpolation(parser)
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help=f"leave out the images that cannot be read, listed in OUTPUT_DIR/{BAD_IMAGES} (default: stop at one)",
    )
    flags.add_device(parser)
    flags.add_batch_size(parser)
    flags.add_workers(parser)
    flags.add_amp(parser)
    flags.add_print_freq(parser)
    flags.add_dist_url(parser)
    return parser


if __name__ == "__main__":
    utils.run_script(main, get_args_parser())
