"""Descriptors of any images with a MultiGrain checkpoint, in shards that a killed run resumes.

    python extract.py --resume whitened.pth --images photos/ --output-dir descriptors/ --input-size 500
    python extract.py --resume whitened.pth --images list.txt --root photos/ --output-dir descriptors/

--images is a folder (every image file under it, links followed, each real folder once) or a list file of
paths relative to --root, one a line. The descriptors (float32) and the image names are written in the
format of `evaluate.py --save-features`, one pair of files per --shard-size images: descriptors-00000.npy
and descriptors-00000.txt, ..., and manifest.json says what was extracted, how, and which shards are
complete. Running the same command again continues where a killed run stopped; search.py reads the folder.
Under torchrun every process extracts its share of each shard.
"""

import argparse
import datetime
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import evaluate
import flags
import utils
from multigrain.images.datasets import ImageList, SkipBadImages, list_image_files
from multigrain.search.descriptor_files import MANIFEST, save_features, write_json
from multigrain.storage.checkpoint import architecture_name, load_checkpoint, model_from_checkpoint
from multigrain.training import distributed

FORMAT = "multigrain extract.py descriptors, version 1"
BAD_IMAGES = "bad_images.txt"


def read_image_list(args):
    """(paths, names): the images of --images, named by their path relative to the folder or --root."""
    images = Path(args.images)
    if images.is_dir():
        if args.root:
            raise ValueError(f"--root is for a list file; --images {images} is a folder")
        names = list_image_files(images, recursive=True)
        if not names:
            raise ValueError(f"--images {images} holds no image file")
        return [images / name for name in names], names
    if not images.is_file():
        raise ValueError(f"--images {images} does not exist")
    if not args.root:
        raise ValueError(f"--images {images} is a list file: pass the folder its paths are relative to with --root")
    if not os.path.isdir(args.root):
        raise ValueError(f"--root {args.root} is not a folder")
    names = [line.strip() for line in images.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"--images {images} lists no image")
    seen = set()
    for line, name in enumerate(names, 1):
        if name in seen:
            raise ValueError(f"--images {images}: {name} is listed twice (line {line})")
        seen.add(name)
    return [Path(args.root) / name for name in names], names


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
            "checkpoint": os.path.abspath(args.resume),
            "sha256": file_sha256(args.resume),
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


def read_manifest(args, expected):
    """The manifest of an earlier run of the same command in --output-dir, None if there is none; a run
    with other settings is refused, naming what differs."""
    path = Path(args.output_dir) / MANIFEST
    if not path.is_file():
        if any(Path(args.output_dir).glob("descriptors-*")):
            raise ValueError(f"--output-dir {args.output_dir} holds descriptors-* files but no {MANIFEST}")
        return None
    manifest = json.loads(path.read_text())
    for key, value in expected.items():
        for field, (old, new) in differences(key, manifest.get(key), value):
            raise ValueError(
                f"--output-dir {args.output_dir} holds an extraction with {field} = {old}, this command has {new}: "
                "resume it with its own command, or choose another --output-dir"
            )
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
    group starts; returns (paths, names, checkpoint, manifest or None)."""
    if args.multiscale and args.input_size < 2:
        raise ValueError(f"--multiscale needs --input-size >= 2 for its scale s/2, got {args.input_size}")
    if not os.path.isfile(args.resume):
        raise ValueError(f"--resume {args.resume} is not a file")
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise ValueError(f"--output-dir {args.output_dir} is not a folder")
    paths, names = read_image_list(args)
    checkpoint = load_checkpoint(args.resume)
    architecture_name(checkpoint, args.resume, args.model)
    manifest = read_manifest(args, settings(args, names))
    return paths, names, checkpoint, manifest


def new_manifest(args, names, dim):
    shards = [
        {"stem": f"descriptors-{index:05d}", "first": first, "images": min(args.shard_size, len(names) - first)}
        for index, first in enumerate(range(0, len(names), args.shard_size))
    ]
    for shard in shards:
        shard.update(complete=False, descriptors=0, bad_images=[])
    return {**settings(args, names), "dim": dim, "shards": shards}


def extract_shard(model, shard, paths, names, device, args):
    """(descriptors, names, bad image names) of one shard's images."""
    first, count = shard["first"], shard["images"]
    images = ImageList(paths[first : first + count], names[first : first + count])
    skipped = [] if args.skip_bad_images else None
    if args.skip_bad_images:
        images = SkipBadImages(images)
    descriptors = evaluate.retrieval_descriptors(model, images, device, args, skipped)
    bad = set(skipped or [])
    kept = [index for index in range(count) if index not in bad]
    descriptors = descriptors[kept]
    kept_names = [names[first + index] for index in kept]
    finite = np.isfinite(descriptors).all(axis=1)
    if not finite.all():
        raise FloatingPointError(f"the descriptor of {kept_names[int(np.argmin(finite))]} is not finite")
    return descriptors, kept_names, [names[first + index] for index in sorted(bad)]


def main(args):
    paths, names, checkpoint, manifest = check_args(args)
    utils.init_distributed_mode(args)
    distributed.print_main(args)
    device = torch.device(args.device)
    model = model_from_checkpoint(checkpoint, args.resume, model_name=args.model, device=device)
    del checkpoint
    if args.pooling_exponent is not None:
        model.pool.set_p(args.pooling_exponent)
    whitened = getattr(model, "whitening", None) is not None
    distributed.print_main(
        f"{args.resume}: p={float(model.pool.p):.4g}, whitening {'yes' if whitened else 'no'}, input size "
        f"{args.input_size}, {'multiscale' if args.multiscale else 'single scale'}; {len(names)} images"
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
            shard.update(complete=True, descriptors=len(kept_names), bad_images=bad)
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
        lines = "".join(f"{name}\n" for name in bad)
        Path(args.output_dir, BAD_IMAGES).write_text(lines)
        print(f"{len(bad)} bad images skipped, listed in {Path(args.output_dir, BAD_IMAGES)}")
    total = sum(shard["descriptors"] for shard in shards)
    print(f"{total} descriptors of dimension {manifest['dim']} in {len(shards)} shards in {args.output_dir}")
    return manifest


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(
        description="MultiGrain descriptors of a folder or list of images, in resumable shards",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--resume", required=True, help="checkpoint (train.py, finetune_p.py, whiten.py or published)")
    parser.add_argument("--model", default=None, help="architecture, for checkpoints that do not name it")
    parser.add_argument(
        "--images",
        required=True,
        help="a folder (its image files, sub-folders included) or a list file of paths relative to --root",
    )
    parser.add_argument("--root", default=None, help="the folder the paths of a list file --images are relative to")
    parser.add_argument("--output-dir", required=True, help="where the shards and manifest.json are written")
    parser.add_argument(
        "--shard-size", default=10000, type=flags.int_in(1), help="images per shard (descriptors-NNNNN.npy/.txt)"
    )
    parser.add_argument(
        "--input-size", default=500, type=flags.int_in(1), help="s: images are resized to largest side s, no crop"
    )
    parser.add_argument(
        "--multiscale",
        action="store_true",
        help="descriptor: normalised mean of the descriptors at largest sides s, s/√2, s/2",
    )
    parser.add_argument(
        "--pooling-exponent",
        default=None,
        type=flags.float_in(0, low_open=True, allow_inf=True),
        help="GeM exponent p (default: the checkpoint's)",
    )
    parser.add_argument(
        "--interpolation", default="bilinear", choices=["nearest", "bilinear", "bicubic"], help="resize interpolation"
    )
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help=f"leave out the images that cannot be read, listed in OUTPUT_DIR/{BAD_IMAGES} (default: stop at one)",
    )
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument(
        "-b", "--batch-size", default=32, type=flags.int_in(1), help="images of identical size run as one batch"
    )
    parser.add_argument("-j", "--workers", default=8, type=flags.int_in(0), help="data loading workers per process")
    parser.add_argument(
        "--amp", action="store_true", help="automatic mixed precision (GeM and whitening stay in float32)"
    )
    parser.add_argument(
        "--amp-dtype", default="float16", choices=["float16", "bfloat16"], help="autocast dtype of --amp"
    )
    parser.add_argument(
        "--print-freq", default=100, type=flags.int_in(1), help="print progress every this many batches of -b images"
    )
    parser.add_argument("--dist-url", default="env://", help="url of the process group set-up")
    return parser


if __name__ == "__main__":
    utils.run_script(main, get_args_parser())
