"""Side-by-side timing and the tables the benchmarks print.

Absolute times drift on a shared machine, so the alternatives of a benchmark run in interleaved
rounds (A B, B A, A B, ...) and a ratio is the median over the rounds of the ratio within a round.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import flags
from multigrain.distance_weighted_miner import NEGATIVE_SAMPLING_MODES


def benchmark_parser(description, add_help=True, cpu_settings=None, paper_settings=None):
    """An ArgumentParser with the flags of every benchmark: --device, --threads, and --paper when the benchmark
    has the paper's settings (applied by apply_settings)."""
    parser = argparse.ArgumentParser(
        description=description, add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads", default=None, type=flags.int_in(1), help="torch threads of this process (default: torch's choice)"
    )
    if paper_settings is not None:
        parser.add_argument(
            "--paper", action="store_true", help=f"the paper's settings {paper_settings} instead of {cpu_settings}"
        )
    return parser


def add_training_step_flags(parser):
    """The flags of the benchmarks that time training steps; their None defaults come from apply_settings."""
    parser.add_argument("--model", default=None, help="torchvision model")
    parser.add_argument("--input-size", default=None, type=flags.int_in(1), help="side of the square input images")
    parser.add_argument("-b", "--batch-size", default=None, type=flags.int_in(1), help="images per step")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="automatic mixed precision")
    parser.add_argument(
        "--amp-dtype", default="float16", choices=["float16", "bfloat16"], help="autocast dtype of --amp"
    )
    parser.add_argument(
        "--reps", default=3, type=flags.int_in(1), help="copies of each image in the batch (repeated augmentation)"
    )
    parser.add_argument("--classif-weight", default=0.5, type=flags.float_in(0, 1), help="λ of the MultiGrain step")
    parser.add_argument(
        "--negative-sampling", default="reference", choices=NEGATIVE_SAMPLING_MODES, help="negative sampling mode"
    )
    parser.add_argument("--num-classes", default=1000, type=flags.int_in(1), help="classifier outputs")


def apply_settings(args, cpu_settings: dict, paper_settings: dict) -> None:
    """Fills the flags left at None with the paper's settings (--paper) or the small CPU ones."""
    for name, value in (paper_settings if args.paper else cpu_settings).items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def synchronize(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(
    candidates: dict[str, Callable[[], object]], rounds: int, device="cpu", warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds taken by each call of each candidate, `rounds` calls each, interleaved.

    Every candidate is first called `warmup` times untimed. The order alternates between rounds so
    that neither candidate always runs right after the other. The device is synchronised around each
    timed call.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    names = list(candidates)
    times = {name: [] for name in names}
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            synchronize(device)
            start = time.perf_counter()
            candidates[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator[i] / denominator[i]."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def format_table(header: list[str], rows: list[list]) -> str:
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def verdict(value: float, target: float, at_most: bool) -> str:
    met = value <= target if at_most else value >= target
    return "met" if met else "missed"


def describe_machine(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
