"""What a mid-epoch checkpoint costs the training: step times before, around and after a save, and the write.

    python -m benchmarks.checkpoint_cost                          # CPU: ResNet-50, 8 images of 112x112
    python -m benchmarks.checkpoint_cost --paper --device cuda    # ResNet-50, 64 images of 224x224, AMP

The steps are `engine.train_one_epoch` on in-memory batches; after step --save-after, the `after_step`
hook writes the training state as train.py does (multigrain.training.training_state.TrainingState:
model, β, optimizer, scheduler, random states, meters, through save_checkpoint: temporary file,
fsync, rename) into --output-dir. The stall is the interval of the step that saved minus the median step; target: no
more than the write itself (stall / write ≤ 1.1, the rest being timing noise).
"""

import contextlib
import io
import os
import statistics
import tempfile
import time

import torch

import engine
import flags
import utils
from benchmarks.timing import (
    add_training_step_flags,
    apply_settings,
    benchmark_parser,
    describe_machine,
    synchronize,
    verdict,
)
from multigrain.distance_weighted_miner import DistanceWeightedMiner
from multigrain.joint_loss import MultiGrainLoss
from multigrain.margin_loss import MarginLoss
from multigrain.model import build_model
from multigrain.training.optimizer import build_optimizer
from multigrain.training.training_state import TrainingState

CPU_SETTINGS = {"model": "resnet50", "input_size": 112, "batch_size": 8, "amp": False}
PAPER_SETTINGS = {"model": "resnet50", "input_size": 224, "batch_size": 64, "amp": True}


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    apply_settings(args, CPU_SETTINGS, PAPER_SETTINGS)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=args.num_classes).to(device)
    generator = torch.Generator(device=device)
    criterion = MultiGrainLoss(
        args.classif_weight, DistanceWeightedMiner(mode=args.negative_sampling, generator=generator), MarginLoss()
    ).to(device)
    optimizer = build_optimizer(model, criterion, opt="sgd", lr=0.001, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type) if args.amp and args.amp_dtype == "float16" else None
    images = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
    targets = torch.randint(args.num_classes, (args.batch_size,), device=device)
    ids = torch.arange(args.batch_size, device=device) // args.reps
    batches = [(images, targets, ids)] * (args.save_after + args.steps_after)
    lr_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30)
    state = TrainingState(
        args.output_dir or tempfile.mkdtemp(prefix="checkpoint_cost-"), vars(args), {}, model=model,
        criterion=criterion, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler, generator=generator, seed=0,
        epochs=1,
    )  # fmt: skip
    metric_logger = utils.MetricLogger()
    state.begin_epoch(0, len(batches), metric_logger)
    step_ends, write = [time.perf_counter()], {}

    def after_step(steps_done, metric_logger, check_loss):
        if steps_done == args.save_after:
            start = time.perf_counter()
            check_loss()
            state.save_in_epoch(steps_done, metric_logger)
            write["s"] = time.perf_counter() - start
        synchronize(device)  # the steps themselves wait for the device only on progress lines
        step_ends.append(time.perf_counter())

    amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None
    with contextlib.redirect_stdout(io.StringIO()):
        engine.train_one_epoch(
            model, criterion, optimizer, batches, device, 0, scaler=scaler, amp_dtype=amp_dtype,
            print_freq=10**6, metric_logger=metric_logger, after_step=after_step,
        )  # fmt: skip
    intervals = [b - a for a, b in zip(step_ends, step_ends[1:])]
    saving = args.save_after - 1
    before, after = intervals[1:saving], intervals[saving + 1 :]  # the first step warms up
    median_step = statistics.median(before + after)
    stall = intervals[saving] - median_step
    path = state.path
    size_mb = os.path.getsize(path) / 2**20
    print(f"{args.model}, {args.batch_size} images of {args.input_size}px, {describe_machine(device)}")
    print(f"checkpoint {path}: {size_mb:.0f} MiB")
    print(f"steps before the save (s): {' '.join(f'{t:.3f}' for t in before)}")
    print(f"step with the save (s):    {intervals[saving]:.3f}  (write {write['s']:.3f})")
    print(f"steps after the save (s):  {' '.join(f'{t:.3f}' for t in after)}")
    ratio = stall / write["s"]
    print(
        f"median step {median_step:.3f} s; stall {stall:.3f} s = {ratio:.2f} x the write "
        f"({size_mb / write['s']:.0f} MiB/s): target <= 1.1, {verdict(ratio, 1.1, at_most=True)}"
    )
    return {"median_step_s": median_step, "stall_s": stall, "write_s": write["s"], "size_mib": size_mb}


def get_args_parser(add_help=True):
    parser = benchmark_parser(__doc__.splitlines()[0], add_help, CPU_SETTINGS, PAPER_SETTINGS)
    add_training_step_flags(parser)
    parser.add_argument("--save-after", default=6, type=flags.int_in(3), help="the step after which the state is saved")
    parser.add_argument("--steps-after", default=5, type=flags.int_in(1), help="steps timed after the save")
    parser.add_argument(
        "--output-dir", default=None, help="where the checkpoint is written (default: a temporary folder)"
    )
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
