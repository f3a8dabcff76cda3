"""Descriptors of any images with a MultiGrain checkpoint, in shards that a killed run resumes.

    python extract.py --checkpoint whitened.pth --images photos/ --output-dir descriptors/ --input-size 500
    python extract.py --checkpoint whitened.pth --images list.txt --root photos/ --output-dir descriptors/

--images is a folder (every image file under it, links followed, each real folder once) or a list file of
paths relative to --root, one a line. The descriptors (float32) and the image names are written in the
format of `evaluate.py --save-features`, one pair of files per --shard-size images: descriptors-00000.npy
and descriptors-00000.txt, ..., and manifest.json says what was extracted, how, and which shards are
complete. Running the same command again continues where a killed run stopped; search.py reads the folder.
Under torchrun every process extracts its share of each shard. Without --input-size, the images are resized to
the s* the checkpoint stores (finetune_p.py's, whiten.py's), else to 500; the manifest records the size used.

    python extract.py --checkpoint whitened.pth --images photos/ --output-dir descriptors/ --input-size 500 --add

--add describes the images of --images that the collection does not describe yet, in new shards (see
multigrain/search/additions.py); next to each shard, descriptors-00000.files.npy records the size and time of its
image files, which tells an image changed since it was described.
"""

import datetime
import os
import time
from pathlib import Path

import numpy as np
import torch

import flags
import utils
from multigrain.images.datasets import IMG_EXTENSIONS, ImageList, SkipBadImages
from multigrain.images.image_lists import images_root, names_sha256, read_image_list
from multigrain.inference.retrieval_descriptors import retrieval_descriptors
from multigrain.search import additions
from multigrain.search.collection_images import save_file_stats
from multigrain.search.collection_settings import differences
from multigrain.search.descriptor_files import (
    MANIFEST,
    check_names,
    features_files,
    read_manifest,
    save_features,
    write_json,
)
from multigrain.storage.atomic_write import write_atomic
from multigrain.storage.folder_lock import hold_folder, release_folder
from multigrain.storage.input_files import file_sha256, shown
from multigrain.storage.model_files import model_settings, open_model
from multigrain.training import distributed

FORMAT = "multigrain extract.py descriptors, version 1"
BAD_IMAGES = "bad_images.txt"


def read_images(args):
    """(paths, names) of --images (read_image_list), each name one line of UTF-8 text as the names files hold them;
    the files of a folder that are not images by their extension are said to be left out."""
    others = []
    paths, names = read_image_list(
        args.images, args.root, check_files=not args.skip_bad_images,
        skip_hint=", or pass --skip-bad-images to leave such images out", others=others,
    )  # fmt: skip
    if others:
        utils.print_at_launch(
            f"{len(others)} files under --images {args.images} are not images by their extension "
            f"({' '.join(IMG_EXTENSIONS)}) and are left out, e.g. {', '.join(map(shown, others[:3]))}"
        )
    check_names(names, f"--images {args.images}")
    return paths, names


def settings(args, names):
    """What the descriptors depend on: a resumed run must have the same, or its shards would not match."""
    return {
        "format": FORMAT,
        "input": {
            "images": os.path.abspath(args.images),
            "root": os.path.abspath(args.root) if args.root else None,
            "count": len(names),
            "names_sha256": names_sha256(names),
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


# What an --add command may have of its own: its images, and the size of its shards.
ADDITION_SETTINGS = ("input", "shard_size")


def read_earlier_manifest(args, names):
    """The manifest of an earlier run of the same command in --output-dir, None if there is none; a run
    with other settings is refused, naming what differs (with --add, only the model and extraction settings),
    and a manifest that is not extract.py's too."""
    path = Path(args.output_dir) / MANIFEST
    if not path.exists():
        if any(Path(args.output_dir).glob("descriptors-*")):
            raise ValueError(f"--output-dir {args.output_dir} holds descriptors-* files but no {MANIFEST}")
        return None
    manifest = read_manifest(path)
    for key, value in settings(args, names).items():
        if args.add and key in ADDITION_SETTINGS:
            continue
        for field, (old, new) in differences(key, manifest.get(key), value):
            what_to_do = "" if args.add else " (or add the new images of a grown folder with --add)"
            raise ValueError(
                f"--output-dir {args.output_dir} holds an extraction with {field} = {old}, this command has {new}: "
                f"resume it with its own command{what_to_do}, or choose another --output-dir"
            )
    shards = manifest["shards"]
    added = additions.added_stems(manifest)
    extracted = [
        (shard.get("stem"), shard.get("first"), shard.get("images"))
        for shard in shards
        if shard.get("stem") not in added
    ]
    layout = [
        (shard["stem"], shard["first"], shard["images"]) for shard in additions.plan_shards(len(names), args.shard_size)
    ]
    if (not args.add and extracted != layout) or not all(
        isinstance(shard.get("descriptors"), int) and isinstance(shard.get("bad_images"), list) for shard in shards
    ):
        raise ValueError(
            f"{path} does not describe the shards of this extraction (edited?): restore it, or extract the images "
            "again into a new --output-dir"
        )
    if not isinstance(manifest.get("dim"), int):
        raise ValueError(f"{path} has no descriptor dimension (edited?): restore it, or use a new --output-dir")
    return manifest


@utils.usage_check
def check_args(args):
    """Refuses bad flags, inputs, checkpoints and an --output-dir of another extraction before any process
    group starts; returns (paths, names, the ModelFile of --checkpoint, manifest or None, the Addition of --add
    or None). Without --input-size, the checkpoint's s* is used (flags.checkpoint_input_size), and said."""
    if not os.path.isfile(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint} is not a file")
    utils.check_device(args.device)
    utils.check_writable_folder(args.output_dir, "--output-dir")
    paths, names = read_images(args)
    model_file = open_model(args.checkpoint, model_name=args.model)
    utils.print_at_launch(flags.checkpoint_input_size(args, model_file))
    if args.multiscale and args.input_size < 2:
        raise ValueError(f"--multiscale needs --input-size >= 2 for its scale s/2, got {args.input_size}")
    if utils.launch_rank() == 0:
        hold_folder(args.output_dir, "--output-dir", "extract.py")
    manifest = read_earlier_manifest(args, names)
    addition = None
    if args.add:
        if manifest is None:
            raise ValueError(f"--add: --output-dir {args.output_dir} holds no collection: run without --add first")
        root = images_root(args.images, args.root)
        addition = additions.plan_addition(Path(args.output_dir), manifest, paths, names, root)
    return paths, names, model_file, manifest, addition


def new_manifest(args, names, dim):
    return {**settings(args, names), "dim": dim, "shards": additions.plan_shards(len(names), args.shard_size)}


def recorded_files(folder, stem):
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
    """(descriptors, names, paths, bad image names) of one shard's images."""
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
    kept_paths = [paths[first + index] for index in kept]
    finite = np.isfinite(descriptors).all(axis=1)
    if not finite.all():
        raise FloatingPointError(f"the descriptor of {kept_names[int(np.argmin(finite))]} is not finite")
    return descriptors, kept_names, kept_paths, [names[first + index] for index in sorted(bad)]


def begin_addition(args, manifest, addition):
    """The shards of the new images of --add (those of its unfinished run if any), or None if there is none."""
    folder = Path(args.output_dir)
    if addition.vanished:
        distributed.print_main(
            f"{len(addition.vanished)} images of the collection are gone ({additions.quoted(addition.vanished)}): "
            "their descriptors stay, and searches may name them; extract the folder into a new --output-dir to "
            "leave them out"
        )
    if not addition.names:
        distributed.print_main(f"no new image in --images {args.images}: the collection in {folder} describes all")
        return None
    shards, replaced = additions.begin_addition(manifest, addition, args.shard_size)
    if distributed.is_main_process():
        for stem in replaced:
            for path in additions.shard_files(folder, stem):
                path.unlink(missing_ok=True)
        if replaced:
            print(f"an unfinished addition of other images was replaced ({len(replaced)} shards)")
        write_json(folder / MANIFEST, manifest)
    distributed.print_main(f"adding {len(addition.names)} new images to the collection in {folder}")
    return shards


def main(args):
    """Extracts the descriptors of --images into --output-dir, which it holds locked from check_args to its end."""
    paths, names, model_file, manifest, addition = check_args(args)
    try:
        return run_extraction(args, paths, names, model_file, manifest, addition)
    finally:
        release_folder(args.output_dir)


def run_extraction(args, paths, names, model_file, manifest, addition):
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
    lost = [stem for stem in changed if args.add or stem in additions.added_stems(manifest)]
    if lost:  # its images are not those of this command
        raise utils.Failure(
            f"--output-dir {args.output_dir}: {lost[0]} was complete, but {changed[lost[0]]}: restore it, or extract "
            "the folder again into a new --output-dir"
        )
    for shard in shards:
        if shard["stem"] in changed:
            shard.update(complete=False, descriptors=0, bad_images=[])
            distributed.print_main(f"{shard['stem']} was complete, but {changed[shard['stem']]}: extracting it again")
    if changed and distributed.is_main_process():
        write_json(Path(args.output_dir) / MANIFEST, manifest)
    if addition is not None:
        paths, names, shards = addition.paths, addition.names, begin_addition(args, manifest, addition)
        if shards is None:
            return manifest
    todo = [shard for shard in shards if not shard["complete"]]
    remaining = sum(shard["images"] for shard in todo)
    distributed.print_main(
        f"{len(shards) - len(todo)} of {len(shards)} shards already complete; {remaining} images to extract"
    )
    start, extracted = time.time(), 0
    for shard in todo:
        descriptors, kept_names, kept_paths, bad = extract_shard(model, shard, paths, names, device, args)
        if distributed.is_main_process():
            save_features(args.output_dir, shard["stem"], descriptors, kept_names)
            save_file_stats(args.output_dir, shard["stem"], kept_paths)
            files = recorded_files(args.output_dir, shard["stem"])
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
    if addition is not None:
        additions.finish_addition(manifest)
        write_json(Path(args.output_dir) / MANIFEST, manifest)
        print(f"added {sum(shard['descriptors'] for shard in shards)} descriptors in {len(shards)} new shards")
    shards = manifest["shards"]
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
    flags.add_image_list(parser, "the images")
    flags.add_output_dir(parser, "where the shards and manifest.json are written", required=True)
    parser.add_argument(
        "--add",
        action="store_true",
        help="add the images of --images that the collection in --output-dir does not describe yet",
    )
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
