"""Benchmark 1: a MultiGrain training step (λ = 0.5, repeated augmentation) against a classification-only
step (λ = 1), same model, batch and input size.

    python -m benchmarks.step_overhead                          # CPU: ResNet-18, 48 images of 64x64
    python -m benchmarks.step_overhead --paper --device cuda    # ResNet-50, 64 images of 224x224, AMP

Both steps are `engine.train_one_epoch` on in-memory batches (no data loading), so everything a real
step does is timed: forward, losses, backward, optimizer, the loss check and the logged metrics. The
instance ids hold `--reps` copies of each image, as repeated augmentation gives them. Targets: ≤ 1.05×
on the CPU, ≤ 1.02× on a GPU.
"""

import contextlib
import copy
import io

import torch

import engine
import flags
from benchmarks.timing import (
    add_training_step_flags,
    apply_settings,
    benchmark_parser,
    describe_machine,
    format_table,
    median_ratio,
    time_side_by_side,
    verdict,
)
from multigrain.distance_weighted_miner import DistanceWeightedMiner
from multigrain.joint_loss import MultiGrainLoss
from multigrain.margin_loss import MarginLoss
from multigrain.model import build_model
from multigrain.training.optimizer import build_optimizer

CPU_SETTINGS = {"model": "resnet18", "input_size": 64, "batch_size": 48, "amp": False}
PAPER_SETTINGS = {"model": "resnet50", "input_size": 224, "batch_size": 64, "amp": True}


def make_step(model, args, classif_weight, batches, device, channels_last=False, compiled=False):
    """A function running train_one_epoch over `batches` with a fresh copy of `model`, made channels-last
    and compiled as train.py's --channels-last and --compile do."""
    model = copy.deepcopy(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    criterion = MultiGrainLoss(classif_weight, DistanceWeightedMiner(mode=args.negative_sampling), MarginLoss()).to(
        device
    )
    optimizer = build_optimizer(model, criterion, opt="sgd", lr=0.001, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type) if args.amp and args.amp_dtype == "float16" else None
    if compiled:
        model = torch.compile(model)
    amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None

    def run():
        with contextlib.redirect_stdout(io.StringIO()):
            engine.train_one_epoch(
                model, criterion, optimizer, batches, device, 0, scaler=scaler, amp_dtype=amp_dtype, print_freq=10**6
            )

    return run


def model_and_batches(args, device):
    """The --model (seed 0) on `device` and --steps times one random batch there: images, labels, and the instance
    ids of --reps copies each."""
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=args.num_classes).to(device)
    images = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
    targets = torch.randint(args.num_classes, (args.batch_size,), device=device)
    ids = torch.arange(args.batch_size, device=device) // args.reps
    return model, [(images, targets, ids)] * args.steps


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    apply_settings(args, CPU_SETTINGS, PAPER_SETTINGS)
    if args.batch_size < args.reps:
        raise ValueError(f"--batch-size {args.batch_size} cannot hold the {args.reps} copies of an image (--reps)")
    device = torch.device(args.device)
    model, batches = model_and_batches(args, device)

    candidates = {
        "classification only (λ=1)": make_step(model, args, 1.0, batches, device),
        f"MultiGrain (λ={args.classif_weight}, reps={args.reps})": make_step(
            model, args, args.classif_weight, batches, device
        ),
    }
    times = time_side_by_side(candidates, args.rounds, device=device)
    (base_name, base), (name, multigrain) = times.items()
    ratio = median_ratio(multigrain, base)
    target = 1.02 if device.type == "cuda" else 1.05
    rows = [
        [base_name, f"{1000 * min(base) / args.steps:.1f}", "1.000", "", ""],
        [
            name,
            f"{1000 * min(multigrain) / args.steps:.1f}",
            f"{ratio:.3f}",
            f"≤ {target}",
            verdict(ratio, target, True),
        ],
    ]
    print(
        f"Step overhead: {args.model}, {args.batch_size} images of {args.input_size}x{args.input_size}, "
        f"amp {'on' if args.amp else 'off'}, {args.rounds} rounds of {args.steps} steps, {describe_machine(device)}"
    )
    print(format_table(["step", "ms/step (best round)", "ratio (median)", "target", "status"], rows))
    return {"ratio": ratio, "target": target, "times": times}


def get_args_parser(add_help=True):
    parser = benchmark_parser(
        "Training step time, MultiGrain against classification only", add_help, CPU_SETTINGS, PAPER_SETTINGS
    )
    add_training_step_flags(parser)
    parser.add_argument("--steps", default=2, type=flags.int_in(1), help="training steps per timed round")
    parser.add_argument("--rounds", default=9, type=flags.int_in(1), help="timed rounds of each step")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
