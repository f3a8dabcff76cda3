"""Benchmark 3: the CPU cost of a training sample with repeated augmentation, and the DataLoader's samples per
second, for four pipelines side by side: the augmentation on PIL images in the workers (the CPU path) or only
its geometric half there and the photometric half on the batch on --device (`photometric_on_device`), each
decoding every JPEG once per copy (RASampler, as train.py by default) or once per image (`--ra-decode-once`:
DecodeOnceBatchSampler + RepeatedViews).

    python -m benchmarks.data_pipeline                                  # synthetic 500x375 JPEGs, -j 2
    python -m benchmarks.data_pipeline --data-path /datasets/imagenet/train --max-images 5000 -j 8

The loaders are train.py's (each sample seeded by SeededItems) and run whole epochs with `-j` workers,
worker start-up included as in training; the workers' CPU time is measured from the kernel when they exit
(start-up included: a short epoch adds ~0.3 ms per sample to it that training's long epochs do not).
The stage table gives the CPU milliseconds per sample of each step of the two presets on one thread of
this process (decode, random resized crop, flip, colour jitter, to tensor, lighting + clamp + normalise,
the photometric draw, the batch collate), and the CPU cores per GPU that they need to feed 2,500 samples/s
(an A100 training a ResNet-50 with AMP) and 4,500 (an H100). Targets: decode once ≥ 2× the samples/s of
decode per copy on the CPU path; ≤ 2.0 CPU ms per sample with the device augmentation and decode once.
"""

import argparse
import copy
import os
import random
import resource
import statistics
import tempfile
import time

import torch
import torch.utils.data
import torchvision

import flags
import presets
from benchmarks.timing import format_table, median_ratio, time_side_by_side, verdict
from multigrain.images.datasets import RepeatedViews, SeededItems, WithIndex, collate_views
from multigrain.images.image_io import load_rgb
from multigrain.images.photometric import CropWithParams
from sampler import DecodeOnceBatchSampler, RASampler, SeededBatches
from tools.synthetic_data import make_imagefolder, parse_size

SAMPLES_PER_S_PER_GPU = (2500, 4500)
TARGET_MS = 2.0
STAGES = {
    "RandomResizedCrop": "random resized crop",
    "RandomHorizontalFlip": "flip",
    "ColorJitter": "colour jitter",
    "PILToTensor": "to tensor",
    "PILToHWCTensor": "to tensor",
    "ConvertImageDtype": "to tensor",
    "Lighting": "lighting + clamp + normalise",
    "ClampToUnitRange": "lighting + clamp + normalise",
    "Normalize": "lighting + clamp + normalise",
}


def image_folder(args, transform):
    dataset = torchvision.datasets.ImageFolder(args.image_folder, transform, loader=load_rgb)
    if args.max_images and len(dataset) > args.max_images:
        keep = sorted(random.Random(0).sample(range(len(dataset)), args.max_images))
        dataset.samples = [dataset.samples[i] for i in keep]
        dataset.targets = [dataset.targets[i] for i in keep]
    return dataset


def loader(args, transform, decode_once):
    """train.py's training loader: (the DataLoader, its RASampler)."""
    if decode_once:
        dataset = RepeatedViews(image_folder(args, None), transform)
    else:
        dataset = WithIndex(image_folder(args, transform))
    sampler = RASampler(len(dataset), reps=args.reps, epoch_len_factor=args.epoch_len_factor)
    if decode_once:
        batch_sampler, collate = DecodeOnceBatchSampler(sampler, args.batch_size, drop_last=True), collate_views
    else:
        batch_sampler, collate = torch.utils.data.BatchSampler(sampler, args.batch_size, drop_last=True), None
    data_loader = torch.utils.data.DataLoader(
        SeededItems(dataset),
        batch_sampler=SeededBatches(batch_sampler, (0,)),
        collate_fn=collate,
        num_workers=args.workers,
        pin_memory=args.device.type == "cuda",
    )
    return data_loader, sampler


def workers_cpu_s():
    """CPU seconds of this process's children that have exited (DataLoader workers exit at the end of an epoch)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def epoch_runner(data_loader, sampler, counts, worker_ms, device):
    """A function iterating one more epoch of `data_loader`, batches moved to `device` as in training, appending
    its number of samples to `counts` and its workers' CPU milliseconds per sample to `worker_ms`."""

    def run():
        sampler.set_epoch(sampler.epoch + 1)
        cpu_start, samples = workers_cpu_s(), 0
        for images, _, _ in data_loader:
            if isinstance(images, CropWithParams):  # augmented by the training step, timed by device_ms
                images.params.to(device, non_blocking=True)
                images = images.pixels
            samples += images.to(device, non_blocking=True).shape[0]
        counts.append(samples)
        worker_ms.append(1000 * (workers_cpu_s() - cpu_start) / samples)

    return run


def device_ms(photometric, args):
    """Milliseconds of the photometric augmentation of a batch of uint8 crops on args.device (median of
    args.rounds after one untimed run)."""
    photometric = copy.deepcopy(photometric).to(args.device)  # the loader's copy stays on the CPU
    pixels = torch.randint(0, 256, (args.batch_size, args.crop_size, args.crop_size, 3), dtype=torch.uint8)
    crops = CropWithParams(pixels, torch.stack([photometric.draw() for _ in range(args.batch_size)]))
    times = time_side_by_side({"device": lambda: photometric.on_device(crops, args.device)}, args.rounds, args.device)
    return 1000 * statistics.median(times["device"])


def stage_ms(paths, transform, batch_size, passes):
    """CPU milliseconds per image of each stage of `transform` on this thread: the median over `passes` passes
    over `paths` of the mean over the images."""
    passes_ms = []
    for _ in range(passes):
        seconds = {}

        def timed(stage, fn, *inputs, seconds=seconds):
            start = time.thread_time()
            output = fn(*inputs)
            seconds[stage] = seconds.get(stage, 0.0) + time.thread_time() - start
            return output

        outputs = []
        for path in paths:
            image = timed("decode", load_rgb, path)
            for step in transform.transforms.transforms:
                image = timed(STAGES.get(type(step).__name__, type(step).__name__), step, image)
            if transform.photometric is not None:
                image = CropWithParams(image, timed("photometric draw", transform.photometric.draw))
            outputs.append(image)
        for first in range(0, len(outputs), batch_size):
            timed("collate", torch.utils.data.default_collate, outputs[first : first + batch_size])
        passes_ms.append({stage: 1000 * value / len(paths) for stage, value in seconds.items()})
    return {stage: statistics.median(one_pass[stage] for one_pass in passes_ms) for stage in passes_ms[0]}


def sample_ms(stages, reps):
    """CPU ms per sample, decoding once per copy and once per image of `reps` copies."""
    per_copy = sum(stages.values())
    return per_copy, per_copy - stages["decode"] + stages["decode"] / reps


def run(args):
    cpu = presets.ClassificationPresetTrain(crop_size=args.crop_size, auto_augment_policy=args.auto_augment)
    transforms = {"CPU path": cpu}
    if args.auto_augment is None:
        transforms["device aug"] = presets.ClassificationPresetTrain(
            crop_size=args.crop_size, photometric_on_device=True
        )
    pipelines = {}
    for path_name, transform in transforms.items():
        prefix = "" if path_name == "CPU path" else f"{path_name}, "
        for decode_once in (False, True):
            name = prefix + ("decode once" if decode_once else "decode per copy")
            pipelines[name] = (*loader(args, transform, decode_once), path_name, decode_once)
    counts = {name: [] for name in pipelines}
    worker_ms = {name: [] for name in pipelines}
    candidates = {
        name: epoch_runner(data_loader, sampler, counts[name], worker_ms[name], args.device)
        for name, (data_loader, sampler, _, _) in pipelines.items()
    }
    times = time_side_by_side(candidates, args.rounds, device=args.device, warmup=0)
    rates = {name: [n / t for n, t in zip(counts[name], times[name])] for name in pipelines}
    ratio = median_ratio(rates["decode once"], rates["decode per copy"])

    paths = [path for path, _ in image_folder(args, None).samples[: args.stage_images]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        stages = {
            name: stage_ms(paths, transform, args.batch_size, args.rounds) for name, transform in transforms.items()
        }
    finally:
        torch.set_num_threads(threads)
    decode_ms = stages["CPU path"]["decode"]
    augment_ms = sum(stages["CPU path"].values()) - decode_ms - stages["CPU path"]["collate"]
    bound = (decode_ms + augment_ms) / (decode_ms / args.reps + augment_ms)
    cost = {
        name: sample_ms(stages[path_name], args.reps)[decode_once]
        for name, (_, _, path_name, decode_once) in pipelines.items()
    }

    num_images = len(pipelines["decode once"][0].dataset)
    print(
        f"Data pipeline: {num_images} images from {args.image_folder}, reps={args.reps}, "
        f"epoch of {counts['decode once'][0]} samples in batches of {args.batch_size}, -j {args.workers}, "
        f"crop {args.crop_size}, augmentation {args.auto_augment or 'full'}, {args.rounds} epochs each, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    rows = []
    for name in pipelines:
        measured = f"{statistics.median(worker_ms[name]):.2f}" if args.workers else "-"
        row = [name, f"{statistics.median(rates[name]):.1f}", measured]
        if name == "decode once":
            row += [f"{ratio:.2f}", "≥ 2", verdict(ratio, 2.0, False)]
        else:
            row += [f"{median_ratio(rates[name], rates['decode per copy']):.2f}", "", ""]
        rows.append(row)
    header = ["pipeline", "samples/s (median)", "workers' CPU ms/sample", "ratio", "target", "status"]
    print(format_table(header, rows))
    print(
        f"one image: decode {decode_ms:.2f} ms, augmentation {augment_ms:.2f} ms per view on the CPU path; "
        f"bound (D + A) / (D / {args.reps} + A) = {bound:.2f}"
    )

    if "device aug" in transforms:
        batch_ms = device_ms(transforms["device aug"].photometric, args)
        print(
            f"photometric augmentation on {args.device} (not in the samples/s above): {batch_ms:.2f} ms per batch "
            f"of {args.batch_size}, {batch_ms / args.batch_size:.3f} ms per sample"
        )

    print(f"\nCPU ms per sample on one thread ({len(paths)} images, median of {args.rounds} passes):")
    names = [
        stage for stage in dict.fromkeys(stage for costs in stages.values() for stage in costs) if stage != "collate"
    ]
    names.append("collate")
    rows = [
        [stage, *(f"{costs[stage]:.2f}" if stage in costs else "-" for costs in stages.values())] for stage in names
    ]
    for decode_once in (False, True):
        label = f"decode once (reps {args.reps})" if decode_once else "decode per copy"
        rows.append(
            [f"total, {label}", *(f"{sample_ms(costs, args.reps)[decode_once]:.2f}" for costs in stages.values())]
        )
    print(format_table(["stage", *stages], rows))

    print("\nCPU cores per GPU (the stages' CPU ms per sample × samples/s):")
    rows = []
    for name, ms in cost.items():
        row = [name, f"{ms:.2f}", *(f"{ms * rate / 1000:.1f}" for rate in SAMPLES_PER_S_PER_GPU)]
        target = name == "device aug, decode once"
        row += [f"≤ {TARGET_MS} ms", verdict(ms, TARGET_MS, True)] if target else ["", ""]
        rows.append(row)
    header = [
        "pipeline",
        "CPU ms/sample",
        *(f"cores at {rate:,}/s" for rate in SAMPLES_PER_S_PER_GPU),
        "target",
        "status",
    ]
    print(format_table(header, rows))
    return {
        "ratio": ratio,
        "bound": bound,
        "rates": rates,
        "counts": counts,
        "worker_ms": worker_ms,
        "stages": stages,
        "cost_ms": cost,
    }


def on_image_folder(run, args):
    """run(args) with args.image_folder set to --data-path, or to synthetic JPEGs (--num-images of --image-size) in
    a temporary folder."""
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


def main(args):
    args.device = torch.device(args.device)
    return on_image_folder(run, args)


def add_image_folder_flags(parser, num_images):
    """The flags of on_image_folder and image_folder: the JPEGs a benchmark reads."""
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
        "--num-images",
        default=num_images,
        type=flags.int_in(1),
        help="synthetic images to write when there is no --data-path",
    )
    parser.add_argument(
        "--image-size", default="500x375", help="WIDTHxHEIGHT of the synthetic images (ImageNet's typical size)"
    )


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(
        description="CPU cost of a training sample and DataLoader samples/s: CPU or device augmentation, "
        "decode per copy or once",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default="cpu", help="where the batches go (cuda: pinned memory, as in training)")
    add_image_folder_flags(parser, num_images=96)
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
        help="augmentation policy instead of the full augmentation (on PIL: then no device augmentation)",
    )
    parser.add_argument(
        "--rounds", default=3, type=flags.int_in(1), help="timed epochs of each pipeline, passes of the stage timing"
    )
    parser.add_argument(
        "--stage-images", default=100, type=flags.int_in(1), help="images of the stage timing (the first ones)"
    )
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
