"""Benchmark 9: train.py's training step fed from JPEG files: samples/s with the photometric augmentation on the
device and with the whole augmentation in the workers (the CPU path), the host syncs per step, and the model FLOP
utilisation.

    python -m benchmarks.training_step                                 # CPU: ResNet-18 at 64, synthetic JPEGs, -j 2
    python -m benchmarks.training_step --paper --device cuda -j 12     # ResNet-50 at 224, b = 64, AMP, channels-last

The same step (engine.train_one_epoch, λ = 0.5, repeated augmentation) runs fed three ways, side by side in
interleaved rounds: a batch already on the device (the step alone, what the device can do), and the JPEGs of
--data-path (default: synthetic 500x375 ones) through train.py's loader (benchmarks.data_pipeline.loader) with the
photometric augmentation on the device or in the workers. A round is one epoch of --steps steps from workers started
for it; its samples/s count the steps after the first --warmup-steps (the workers starting).

Then the host syncs per step of train.py's step (photometric augmentation on the device) between two progress lines,
counted by benchmarks.host_syncs (torch.cuda.set_sync_debug_mode on a GPU), and the model FLOP utilisation (MFU): the
FLOPs of one step (torch.utils.flop_counter.FlopCounterMode: forward and backward) times steps/s over the GPU's
peak dense 16-bit tensor FLOP/s (PEAK_TFLOPS, or --peak-tflops). Targets: the device augmentation at least as fast
as the CPU path; no sync between progress lines without a gradient scaler (float16's reads its check for infinities
once per step); MFU ≥ 20% with AMP, the level of the best published ResNet-50 recipes (MLPerf-class: ~7k
samples/s on an H100, ~17%).
"""

import contextlib
import copy
import io
import os
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import engine
import flags
import presets
from benchmarks import data_pipeline
from benchmarks.host_syncs import count_host_syncs
from benchmarks.timing import (
    add_training_step_flags,
    apply_settings,
    benchmark_parser,
    describe_machine,
    format_table,
    median_ratio,
    synchronize,
    time_side_by_side,
    verdict,
)
from multigrain.distance_weighted_miner import DistanceWeightedMiner
from multigrain.joint_loss import MultiGrainLoss
from multigrain.margin_loss import MarginLoss
from multigrain.model import build_model
from multigrain.training.optimizer import build_optimizer

CPU_SETTINGS = {"model": "resnet18", "input_size": 64, "batch_size": 24, "amp": False, "channels_last": False}
PAPER_SETTINGS = {"model": "resnet50", "input_size": 224, "batch_size": 64, "amp": True, "channels_last": True}
# Dense float16/bfloat16 tensor-core peaks (TFLOP/s, without sparsity) of NVIDIA's data sheets, by a part of the
# device name; the first match counts.
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("V100", 125.0),  # float16 only
)
TARGET_MFU = 0.20
FEEDS = ("batch on the device", "JPEGs, photometric on the device", "JPEGs, CPU path")


def table_peak_tflops(device_name):
    """The PEAK_TFLOPS entry of a CUDA device name, or None."""
    return next((tflops for part, tflops in PEAK_TFLOPS if part in device_name), None)


def peak_flops(args):
    """The peak FLOP/s against which the MFU is computed, or None (no AMP, or a device not in PEAK_TFLOPS)."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if not args.amp or args.device.type != "cuda":
        return None
    tflops = table_peak_tflops(torch.cuda.get_device_name(args.device))
    return tflops * 1e12 if tflops else None


class Step:
    """train.py's training step on `args.device`: the model, MultiGrain loss, SGD, autocast and gradient scaler, and
    the photometric augmentation of the device path."""

    def __init__(self, args, photometric):
        self.args = args
        torch.manual_seed(0)
        self.model = build_model(args.model, num_classes=args.num_classes).to(args.device)
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        if args.channels_last:
            self.model.to(memory_format=self.memory_format)
        generator = torch.Generator(device=args.device)
        miner = DistanceWeightedMiner(mode=args.negative_sampling, generator=generator)
        self.criterion = MultiGrainLoss(args.classif_weight, miner, MarginLoss()).to(args.device)
        self.optimizer = build_optimizer(
            self.model, self.criterion, opt="sgd", lr=0.001, momentum=0.9, weight_decay=1e-4
        )
        float16 = args.amp and args.amp_dtype == "float16"
        self.scaler = torch.amp.GradScaler(args.device.type) if float16 else None
        self.amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None
        self.photometric = copy.deepcopy(photometric).to(args.device)  # the loader's stays on the CPU

    def run(self, batches, after_step=None, print_freq=10**6):
        with contextlib.redirect_stdout(io.StringIO()):
            engine.train_one_epoch(
                self.model, self.criterion, self.optimizer, batches, self.args.device, 0, scaler=self.scaler,
                amp_dtype=self.amp_dtype, print_freq=print_freq, after_step=after_step, photometric=self.photometric,
                memory_format=self.memory_format,
            )  # fmt: skip


def feed_runner(step, batches, args, rates, new_epoch=None):
    """A function running one round of `step` over `batches`, appending its samples/s after the warm-up steps to
    `rates`; `new_epoch()` starts the next epoch of a loader first."""

    def run():
        if new_epoch is not None:
            new_epoch()
        start = {}

        def after_step(steps_done, metric_logger, check_loss):
            if steps_done == args.warmup_steps:
                synchronize(args.device)
                start["time"] = time.perf_counter()

        step.run(batches, after_step)
        synchronize(args.device)
        rates.append((args.steps - args.warmup_steps) * args.batch_size / (time.perf_counter() - start["time"]))

    return run


def syncs_per_step(step, batches):
    """(the most host syncs of a step between two progress lines, the syncs of the first progress line) over an epoch
    of `batches` printing only after its first and last steps."""
    marks = []
    with count_host_syncs(step.args.device) as syncs:
        step.run(batches, after_step=lambda steps_done, metric_logger, check_loss: marks.append(syncs.count))
    # marks[k] - marks[k - 1]: the syncs of step k, and for k = 1 the progress line of step 0 too.
    per_step = [b - a for a, b in zip(marks, marks[1:])]
    return max(per_step[1:], default=0), per_step[0]


def step_flops(step, batch):
    """The FLOPs of one training step on `batch` (forward and backward: convolutions and matrix products)."""
    with FlopCounterMode(display=False) as counter:
        step.run([batch])
    return counter.get_total_flops()


def run(args):
    device = args.device
    transforms = {
        "device": presets.ClassificationPresetTrain(crop_size=args.input_size, photometric_on_device=True),
        "cpu": presets.ClassificationPresetTrain(crop_size=args.input_size),
    }
    num_images = len(data_pipeline.image_folder(args, None))
    args.epoch_len_factor = args.steps * args.batch_size / num_images  # an epoch of --steps steps
    loaders = {name: data_pipeline.loader(args, transform, decode_once=False) for name, transform in transforms.items()}
    for data_loader, _ in loaders.values():
        if len(data_loader) != args.steps:
            raise ValueError(f"an epoch of {len(data_loader)} steps instead of --steps {args.steps}")
    step = Step(args, transforms["device"].photometric)

    crops, targets, ids = next(iter(loaders["device"][0]))
    images = step.photometric.on_device(crops, device, step.memory_format)
    on_device = (images, targets.to(device), ids.to(device))
    rates = {name: [] for name in FEEDS}
    candidates = {FEEDS[0]: feed_runner(step, [on_device] * args.steps, args, rates[FEEDS[0]])}
    for name, (data_loader, sampler) in zip(FEEDS[1:], loaders.values()):

        def new_epoch(sampler=sampler):
            sampler.set_epoch(sampler.epoch + 1)

        candidates[name] = feed_runner(step, data_loader, args, rates[name], new_epoch)
    time_side_by_side(candidates, args.rounds, device=device)
    samples_per_s = {name: statistics.median(values[-args.rounds :]) for name, values in rates.items()}
    ratio = median_ratio(rates[FEEDS[1]][-args.rounds :], rates[FEEDS[2]][-args.rounds :])

    loaders["device"][1].set_epoch(0)
    most_syncs, progress_syncs = syncs_per_step(step, loaders["device"][0])
    flops = step_flops(step, on_device)
    peak = peak_flops(args)

    print(
        f"Training step: {args.model}, {args.batch_size} images of {args.input_size}x{args.input_size}, "
        f"amp {args.amp_dtype if args.amp else 'off'}, channels-last {'on' if args.channels_last else 'off'}, "
        f"λ = {args.classif_weight}, reps {args.reps}; {num_images} JPEGs from {args.image_folder}, -j {args.workers}; "
        f"{args.rounds} round(s) of {args.steps} steps ({args.warmup_steps} not timed); {describe_machine(device)}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    rows = []
    for name in FEEDS:
        rate = samples_per_s[name]
        mfu = flops * rate / args.batch_size / peak if peak else None
        row = [name, f"{rate:.1f}", f"{flops * rate / args.batch_size / 1e12:.3g}", f"{mfu:.1%}" if mfu else "-"]
        if name == FEEDS[1]:
            row += [f"{ratio:.2f}", "≥ 1 (vs CPU path)", verdict(ratio, 1.0, False)]
        else:
            row += ["", "", ""]
        rows.append(row)
    header = ["feed", "samples/s (median)", "TFLOP/s", "MFU", "ratio", "target", "status"]
    print(format_table(header, rows))
    print(f"FLOPs of a step: {flops / 1e9:.1f} GFLOP ({flops / args.batch_size / 1e9:.2f} per sample)")
    mfu = flops * samples_per_s[FEEDS[0]] / args.batch_size / peak if peak else None
    if peak:
        print(
            f"MFU of the step alone: {mfu:.1%} of {peak / 1e12:.4g} TFLOP/s: target ≥ {TARGET_MFU:.0%}, "
            f"{verdict(mfu, TARGET_MFU, False)}"
        )
    else:
        print("MFU: no peak for this device and precision (AMP on a GPU of PEAK_TFLOPS, or --peak-tflops)")
    allowed = 1 if step.scaler is not None else 0
    print(
        f"host syncs per step between progress lines: {most_syncs} (the most over {args.steps - 2} steps; "
        f"target {allowed}{': the gradient scaler' if allowed else ''}, {verdict(most_syncs, allowed, True)}); "
        f"the first progress line with the step after it: {progress_syncs}"
    )
    return {
        "samples_per_s": samples_per_s,
        "ratio": ratio,
        "flops": flops,
        "mfu": mfu,
        "syncs_per_step": most_syncs,
        "progress_syncs": progress_syncs,
    }


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    apply_settings(args, CPU_SETTINGS, PAPER_SETTINGS)
    args.device = torch.device(args.device)
    if args.batch_size < args.reps:
        raise ValueError(f"--batch-size {args.batch_size} cannot hold the {args.reps} copies of an image (--reps)")
    if args.steps < args.warmup_steps + 3:
        raise ValueError(f"--steps {args.steps} must exceed --warmup-steps {args.warmup_steps} by 3 or more")
    return data_pipeline.on_image_folder(run, args)


def get_args_parser(add_help=True):
    parser = benchmark_parser(
        "train.py's training step from JPEGs: photometric augmentation on the device vs the CPU path, host syncs, MFU",
        add_help,
        CPU_SETTINGS,
        PAPER_SETTINGS,
    )
    add_training_step_flags(parser)
    parser.add_argument(
        "--channels-last", action="store_true", default=None, help="channels-last model and input (on with --paper)"
    )
    data_pipeline.add_image_folder_flags(parser, num_images=128)
    parser.add_argument("-j", "--workers", default=2, type=flags.int_in(1), help="DataLoader workers")
    parser.add_argument("--steps", default=12, type=flags.int_in(4), help="steps of a round (an epoch)")
    parser.add_argument("--warmup-steps", default=2, type=flags.int_in(1), help="first steps of a round not timed")
    parser.add_argument("--rounds", default=3, type=flags.int_in(1), help="timed rounds of each feed")
    parser.add_argument(
        "--peak-tflops", default=None, type=flags.float_in(0, low_open=True), help="the device's peak, for the MFU"
    )
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
