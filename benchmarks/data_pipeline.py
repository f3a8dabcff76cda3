"""Benchmark 3: training samples per second out of the DataLoader with repeated augmentation, decoding
each JPEG once per copy (RASampler, as train.py by default) against once per image
(`--ra-decode-once`: DecodeOnceBatchSampler + RepeatedViews).

    python -m benchmarks.data_pipeline                                  # synthetic 500x375 JPEGs, -j 2
    python -m benchmarks.data_pipeline --data-path /datasets/imagenet/train --max-images 5000 -j 8

Both pipelines apply train.py's augmentation (the paper's "full" one by default) and run whole epochs
with `-j` workers, worker start-up included as in training. The table also gives the decode time D
and the augmentation time A of one image measured in this process: decoding once per image can at
most reach (D + A) / (D / reps + A). Target: ≥ 2×.
"""

import argparse
import os
import random
import statistics
import tempfile
import time

import torch
import torch.utils.data
import torchvision

import flags
import presets
from benchmarks.timing import format_table, median_ratio, time_side_by_side, verdict
from multigrain.images.datasets import RepeatedViews, WithIndex, collate_views
from multigrain.images.image_io import load_rgb
from sampler import DecodeOnceBatchSampler, RASampler
from tools.synthetic_data import make_imagefolder, parse_size


def image_folder(args, transform):
    dataset = torchvision.datasets.ImageFolder(args.image_folder, transform, loader=load_rgb)
    if args.max_images and len(dataset) > args.max_images:
        keep = sorted(random.Random(0).sample(range(len(dataset)), args.max_images))
        dataset.samples = [dataset.samples[i] for i in keep]
        dataset.targets = [dataset.targets[i] for i in keep]
    return dataset


def per_copy_loader(args, transform):
    dataset = WithIndex(image_folder(args, transform))
    sampler = RASampler(len(dataset), reps=args.reps, epoch_len_factor=args.epoch_len_factor)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        drop_last=True,
        pin_memory=args.device.type == "cuda",
    )
    return loader, sampler


def decode_once_loader(args, transform):
    dataset = RepeatedViews(image_folder(args, None), transform)
    sampler = RASampler(len(dataset), reps=args.reps, epoch_len_factor=args.epoch_len_factor)
    batch_sampler = DecodeOnceBatchSampler(sampler, args.batch_size, drop_last=True)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_views,
        num_workers=args.workers,
        pin_memory=args.device.type == "cuda",
    )
    return loader, sampler


def epoch_runner(loader, sampler, counts, device):
    """A function iterating one more epoch of `loader`, batches moved to `device` as in training, appending
    its number of samples to `counts`."""

    def run():
        sampler.set_epoch(sampler.epoch + 1)
        counts.append(sum(images.to(device, non_blocking=True).shape[0] for images, _, _ in loader))

    return run


def decode_and_augment_ms(args, transform, num_images=20):
    """Median milliseconds to read + decode one image, and to augment it once."""
    dataset = image_folder(args, None)
    paths = [path for path, _ in dataset.samples[:num_images]]
    decode, augment = [], []
    for path in paths:
        start = time.perf_counter()
        image = load_rgb(path)
        decode.append(time.perf_counter() - start)
        start = time.perf_counter()
        transform(image)
        augment.append(time.perf_counter() - start)
    return 1000 * statistics.median(decode), 1000 * statistics.median(augment)


def run(args):
    transform = presets.ClassificationPresetTrain(crop_size=args.crop_size, auto_augment_policy=args.auto_augment)
    pipelines = {
        "decode per copy": per_copy_loader(args, transform),
        "decode once": decode_once_loader(args, transform),
    }
    counts = {name: [] for name in pipelines}
    candidates = {
        name: epoch_runner(loader, sampler, counts[name], args.device) for name, (loader, sampler) in pipelines.items()
    }
    times = time_side_by_side(candidates, args.rounds, device=args.device, warmup=0)
    rates = {name: [n / t for n, t in zip(counts[name], times[name])] for name in pipelines}
    ratio = median_ratio(rates["decode once"], rates["decode per copy"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        decode_ms, augment_ms = decode_and_augment_ms(args, transform)
    finally:
        torch.set_num_threads(threads)
    bound = (decode_ms + augment_ms) / (decode_ms / args.reps + augment_ms)

    num_images = len(pipelines["decode once"][0].dataset)
    print(
        f"Data pipeline: {num_images} images from {args.image_folder}, reps={args.reps}, "
        f"epoch of {counts['decode once'][0]} samples in batches of {args.batch_size}, -j {args.workers}, "
        f"crop {args.crop_size}, augmentation {args.auto_augment or 'full'}, {args.rounds} epochs each, "
        f"{os.cpu_count()} CPUs"
    )
    rows = [
        ["decode per copy", f"{statistics.median(rates['decode per copy']):.1f}", "1.00", "", ""],
        [
            "decode once",
            f"{statistics.median(rates['decode once']):.1f}",
            f"{ratio:.2f}",
            "≥ 2",
            verdict(ratio, 2.0, False),
        ],
    ]
    print(format_table(["pipeline", "samples/s (median)", "ratio", "target", "status"], rows))
    print(
        f"one image: decode {decode_ms:.2f} ms, augmentation {augment_ms:.2f} ms per view; "
        f"bound (D + A) / (D / {args.reps} + A) = {bound:.2f}"
    )
    return {"ratio": ratio, "bound": bound, "rates": rates, "counts": counts}


def main(args):
    args.device = torch.device(args.device)
    if args.data_path:
        if not os.path.isdir(args.data_path):
            raise FileNotFoundError(f"--data-path {args.data_path} is not a folder")
        args.image_folder = args.data_path
        return run(args)
    with tempfile.TemporaryDirectory() as root:
        num_classes = 4
        make_imagefolder(
            root,
            num_classes=num_classes,
            train_per_class=-(-args.num_images // num_classes),
            val_per_class=1,
            image_size=parse_size(args.image_size),
        )
        args.image_folder = os.path.join(root, "train")
        return run(args)


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(
        description="DataLoader samples/s with repeated augmentation: decode per copy against decode once",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default="cpu", help="where the batches go (cuda: pinned memory, as in training)")
    parser.add_argument(
        "--data-path", default=None, help="ImageFolder root (class folders of JPEGs); default: synthetic images"
    )
    parser.add_argument(
        "--max-images",
        default=None,
        type=flags.int_in(1),
        help="use a fixed random subset of this many images of --data-path",
    )
    parser.add_argument(
        "--num-images", default=96, type=flags.int_in(1), help="synthetic images to write when there is no --data-path"
    )
    parser.add_argument(
        "--image-size", default="500x375", help="WIDTHxHEIGHT of the synthetic images (ImageNet's typical size)"
    )
    parser.add_argument("--reps", default=3, type=flags.int_in(1), help="copies of each image (--ra-reps)")
    parser.add_argument(
        "--epoch-len-factor",
        default=3.0,
        type=flags.float_in(0, low_open=True),
        help="samples per epoch / images (3.0 with reps 3: every copy of every image)",
    )
    parser.add_argument("-b", "--batch-size", default=48, type=flags.int_in(1), help="samples per batch")
    parser.add_argument("-j", "--workers", default=2, type=flags.int_in(0), help="DataLoader workers")
    parser.add_argument("--crop-size", default=224, type=flags.int_in(1), help="training crop size")
    parser.add_argument(
        "--auto-augment",
        default=None,
        choices=presets.AUTO_AUGMENT_POLICIES,
        help="augmentation policy instead of the full augmentation",
    )
    parser.add_argument("--rounds", default=3, type=flags.int_in(1), help="timed epochs of each pipeline")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
