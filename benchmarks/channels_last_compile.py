"""Benchmark 5: train.py's and evaluate.py's --channels-last and --compile against the plain model.

    python -m benchmarks.channels_last_compile                              # CPU: ResNet-18, 48 images of 64x64
    python -m benchmarks.channels_last_compile --paper --device cuda        # ResNet-50, 64 images of 224x224, AMP

Training: a MultiGrain step (`engine.train_one_epoch`, λ = 0.5) with the model made channels-last and/or
wrapped in torch.compile, as train.py does. Evaluation: a batch through the model without gradients,
with the model made channels-last and/or its trunk compiled, as evaluate.py does. The first calls,
compilation included, are not timed: the table gives how long they took. A ratio below 1 is a gain.
"""

import copy
import time

import torch

import flags
from benchmarks.step_overhead import CPU_SETTINGS, PAPER_SETTINGS, make_step, model_and_batches
from benchmarks.timing import (
    add_training_step_flags,
    apply_settings,
    benchmark_parser,
    describe_machine,
    format_table,
    median_ratio,
    synchronize,
    time_side_by_side,
)

VARIANTS = ("eager", "channels-last", "compile", "compile+channels-last")


def make_eval_step(model, images, args, channels_last, compiled):
    model = copy.deepcopy(model).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compiled:
        model.features.compile()

    @torch.no_grad()
    def run():
        for _ in range(args.steps):
            with torch.autocast(device_type=images.device.type, dtype=getattr(torch, args.amp_dtype), enabled=args.amp):
                model(images)

    return run


def first_call_seconds(fn, device):
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    apply_settings(args, CPU_SETTINGS, PAPER_SETTINGS)
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or "eager" not in args.variants:
        raise ValueError(f"--variants must include eager and only name {', '.join(VARIANTS)}, got {args.variants}")
    device = torch.device(args.device)
    model, batches = model_and_batches(args, device)

    results = {}
    for kind in ("train", "eval"):
        candidates, first_call = {}, {}
        for variant in args.variants:
            options = {"channels_last": "channels-last" in variant, "compiled": "compile" in variant}
            if kind == "train":
                fn = make_step(model, args, args.classif_weight, batches, device, **options)
            else:
                fn = make_eval_step(model, batches[0][0], args, **options)
            first_call[variant] = first_call_seconds(fn, device)
            candidates[variant] = fn
        times = time_side_by_side(candidates, args.rounds, device=device, warmup=1)
        results[kind] = {variant: median_ratio(values, times["eager"]) for variant, values in times.items()}
        rows = [
            [
                variant,
                f"{1000 * min(values) / args.steps:.1f}",
                f"{results[kind][variant]:.3f}",
                f"{first_call[variant]:.1f}",
            ]
            for variant, values in times.items()
        ]
        print(
            f"{kind}: {args.model}, {args.batch_size} images of {args.input_size}x{args.input_size}, "
            f"amp {'on' if args.amp else 'off'}, {args.rounds} rounds of {args.steps} steps, {describe_machine(device)}"
        )
        print(format_table(["variant", "ms/step (best round)", "time ratio to eager (median)", "first call s"], rows))
    return results


def get_args_parser(add_help=True):
    parser = benchmark_parser(
        "Step time with --channels-last and --compile against the plain model", add_help, CPU_SETTINGS, PAPER_SETTINGS
    )
    add_training_step_flags(parser)
    parser.add_argument(
        "--variants",
        default=list(VARIANTS),
        nargs="+",
        help=f"what to time, among {', '.join(VARIANTS)} (eager is the reference)",
    )
    parser.add_argument("--steps", default=2, type=flags.int_in(1), help="steps per timed round")
    parser.add_argument("--rounds", default=5, type=flags.int_in(1), help="timed rounds of each variant")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
