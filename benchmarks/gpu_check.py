"""`make gpu-check`: everything of this project that needs a GPU, run on one CUDA GPU in under 8 minutes.

    python -m benchmarks.gpu_check                        # one CUDA GPU: the figures for README.md
    python -m benchmarks.gpu_check --device cpu --smoke   # the same command lines at toy sizes, on the CPU

Parts, each a subprocess with its own timeout inside a total --budget:

    cuda-tests       pytest -m cuda
    train            synthetic ImageFolder, then torchrun train.py: ResNet-50 at 224, 2 epochs of 150 steps of 64,
                     AMP float16 with the gradient scaler, channels-last, NCCL
    training-step    benchmarks.training_step --paper: samples/s from 500x375 JPEGs with the photometric
                     augmentation on the GPU vs in the workers (-j 12), host syncs per step, MFU
    step-overhead    benchmarks.step_overhead --paper
    sampling-margin  benchmarks.sampling_margin (B = 512, d = 2048)
    extraction       benchmarks.retrieval --paper --part extraction (ResNet-50 at s = 500)
    channels-last    benchmarks.channels_last_compile --paper --variants eager channels-last (no torch.compile: a
                     cold compile takes minutes)

--smoke keeps the command lines and changes only sizes: ResNet-18, tiny images, a few steps. On the CPU, train.py
then runs on gloo and without AMP. Each part's full output is written to LOG_DIR/PART.log and the summary table to
LOG_DIR/summary.txt. The exit status is 1 when a part failed, timed out or printed no figure.
"""

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks import training_step
from benchmarks.timing import describe_machine, format_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC_DATA = "tools/synthetic_data.py"  # the synthetic dataset writer, relative to ROOT
PART_NAMES = ("cuda-tests", "train", "training-step", "step-overhead", "sampling-margin", "extraction", "channels-last")


@dataclasses.dataclass(frozen=True)
class Sizes:
    model: str  # of train.py
    image_size: int  # side of the synthetic training images
    num_classes: int
    train_per_class: int
    val_per_class: int
    crop_size: int  # train.py's training crop and validation centre crop
    val_resize_size: int
    batch_size: int
    steps_per_epoch: int
    epochs: int
    workers: int  # DataLoader workers of train.py and of the extraction
    print_freq: int
    step_sizes: tuple  # flags in place of the --paper settings of training_step
    step_steps: int  # steps of a round of training_step, of which step_warmup are not timed
    step_warmup: int
    step_rounds: int
    benchmark_sizes: tuple  # flags in place of the --paper settings of step_overhead and channels_last_compile
    overhead_steps: int
    overhead_rounds: int
    sampling_sizes: tuple  # flags in place of the defaults of sampling_margin, which are the paper's
    sampling_rounds: int
    extraction_sizes: tuple  # flags in place of the --paper settings of the extraction benchmark
    extraction_groups: int  # UKBench groups of 4 images of 640x480
    extraction_batch_size: int
    extraction_rounds: int
    layout_steps: int
    layout_rounds: int


# ~300 steps of 64 from 320 images of 256 px: 30 samples of each image per epoch (10 per repeated-augmentation copy).
FULL = Sizes(
    model="resnet50",
    image_size=256,
    num_classes=10,
    train_per_class=32,
    val_per_class=5,
    crop_size=224,
    val_resize_size=256,
    batch_size=64,
    steps_per_epoch=150,
    epochs=2,
    workers=12,
    print_freq=25,
    step_sizes=(),
    step_steps=60,
    step_warmup=12,  # the workers' first batches
    step_rounds=3,
    benchmark_sizes=(),
    overhead_steps=10,
    overhead_rounds=9,
    sampling_sizes=(),
    sampling_rounds=15,
    extraction_sizes=(),
    extraction_groups=25,
    extraction_batch_size=16,
    extraction_rounds=3,
    layout_steps=5,
    layout_rounds=9,
)
SMOKE = Sizes(
    model="resnet18",
    image_size=40,
    num_classes=4,
    train_per_class=4,
    val_per_class=1,
    crop_size=32,
    val_resize_size=36,
    batch_size=6,
    steps_per_epoch=2,
    epochs=2,
    workers=1,
    print_freq=1,
    step_sizes=(
        "--model",
        "resnet18",
        "--input-size",
        "32",
        "-b",
        "6",
        "--num-classes",
        "5",
        "--num-images",
        "16",
        "--image-size",
        "48x40",
    ),  # fmt: skip
    step_steps=4,
    step_warmup=1,
    step_rounds=1,
    benchmark_sizes=("--model", "resnet18", "--input-size", "32", "-b", "6", "--num-classes", "5"),
    overhead_steps=1,
    overhead_rounds=1,
    sampling_sizes=("-b", "24", "--dim", "16"),
    sampling_rounds=1,
    extraction_sizes=("--model", "resnet18", "--input-size", "40"),
    extraction_groups=1,
    extraction_batch_size=2,
    extraction_rounds=1,
    layout_steps=1,
    layout_rounds=1,
)


@dataclasses.dataclass
class Part:
    name: str
    commands: list  # run one after the other, into one log
    timeout: float  # seconds, for all its commands together
    figure: object  # (output, args, work) -> the key figure; raises ValueError when the output lacks it


def python(*arguments):
    return [sys.executable, *arguments]


def last_number(pattern, output):
    """The number of the last match of `pattern` (one group) in `output`."""
    matches = re.findall(pattern, output)
    if not matches:
        raise ValueError(f"no {pattern!r} in the output")
    return float(matches[-1])


def table_row(output, first_cell):
    """The cells of the first row whose first cell starts with `first_cell`, in the tables that
    benchmarks.timing.format_table prints (cells are at least two spaces apart)."""
    for line in output.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0].startswith(first_cell):
            return cells
    raise ValueError(f"no table row {first_cell!r} in the output")


def pytest_figure(output, args, work):
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    if not summary:
        raise ValueError("no pytest summary line in the output")
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (\w+)", summary[-1])}
    counts.pop("deselected", None)
    figure = ", ".join(f"{number} {word}" for word, number in counts.items())
    if args.device == "cuda" and (counts.get("skipped") or not counts.get("passed")):
        raise ValueError(f"{figure}: pytest saw no CUDA device")
    return figure


def train_figure(output, args, work):
    sizes = SMOKE if args.smoke else FULL
    iterations = int(last_number(r"\((\d+) iterations of", output))
    if iterations != sizes.steps_per_epoch:
        raise ValueError(f"{iterations} iterations per epoch instead of {sizes.steps_per_epoch}")
    with open(os.path.join(work, "train", "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    if len(records) != sizes.epochs:
        raise ValueError(f"log.jsonl has {len(records)} epochs instead of {sizes.epochs}")
    images_per_second = last_number(r"img/s: ([\d.]+)", output)
    losses = " → ".join(f"{record['train_loss']:.3f}" for record in records)
    return (
        f"{images_per_second:.0f} img/s, {sizes.epochs}x{iterations} steps, loss {losses}, "
        f"val acc@1 {records[-1]['val_acc1']:.1f}"
    )


def training_step_figure(output, args, work):
    alone, device_aug, cpu_path = (table_row(output, feed) for feed in training_step.FEEDS)
    syncs = int(last_number(r"host syncs per step between progress lines: (\d+)", output))
    return (
        f"{device_aug[1]} vs {cpu_path[1]} samples/s ({device_aug[4]}×) with the photometric augmentation on the "
        f"device vs the CPU path, {alone[1]} for the step alone; MFU {alone[3]}; {syncs} syncs/step"
    )


def step_overhead_figure(output, args, work):
    _, ms, ratio, target, status = table_row(output, "MultiGrain")
    return f"{ratio}× ({target}: {status}), {ms} ms/step"


def sampling_figure(output, args, work):
    _, ms, ratio, target, status = table_row(output, "vectorised")
    loop_ms = table_row(output, "per-anchor loop")[1]
    return f"{ratio}× ({target}: {status}), {ms} vs {loop_ms} ms"


def extraction_figure(output, args, work):
    single = table_row(output, "one at a time")[1]
    _, batched, ratio, target, status = table_row(output, "batched by size")
    difference = last_number(r"largest difference .*: ([\d.e+-]+)", output)
    return f"{batched} vs {single} img/s: {ratio}× ({target}: {status}), max difference {difference:.1e}"


def channels_last_figure(output, args, work):
    train_output, eval_output = re.split(r"^eval: ", output, maxsplit=1, flags=re.MULTILINE)
    ratios = [table_row(section, "channels-last")[2] for section in (train_output, eval_output)]
    return "time ratio to eager: train {}, eval {}".format(*ratios)


def build_parts(args, work):
    sizes = SMOKE if args.smoke else FULL
    on_cuda = args.device == "cuda"
    data, train_output = os.path.join(work, "data"), os.path.join(work, "train")
    num_images = sizes.num_classes * sizes.train_per_class
    amp = ["--amp", "--amp-dtype", "float16"] if on_cuda else []
    benchmark = ["--paper", "--device", args.device, *sizes.benchmark_sizes, *([] if on_cuda else ["--no-amp"])]
    make_data = python(
        SYNTHETIC_DATA,
        "imagefolder",
        "--output",
        data,
        "--num-classes",
        str(sizes.num_classes),
        "--train-per-class",
        str(sizes.train_per_class),
        "--val-per-class",
        str(sizes.val_per_class),
        "--image-size",
        str(sizes.image_size),
    )
    train = python(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        "train.py",
        "--data-path",
        data,
        "--output-dir",
        train_output,
        "--device",
        args.device,
        "--model",
        sizes.model,
        "-b",
        str(sizes.batch_size),
        "-j",
        str(sizes.workers),
        "--epochs",
        str(sizes.epochs),
        "--epoch-len-factor",
        str(sizes.steps_per_epoch * sizes.batch_size / num_images),
        "--lr",
        "0.025",  # the paper's 0.2 for a batch of 512, scaled to one process
        "--train-crop-size",
        str(sizes.crop_size),
        "--val-resize-size",
        str(sizes.val_resize_size),
        "--val-crop-size",
        str(sizes.crop_size),
        "--print-freq",
        str(sizes.print_freq),
        "--channels-last",
        *amp,
    )
    training_step_command = python(
        "-m",
        "benchmarks.training_step",
        "--paper",
        "--device",
        args.device,
        *sizes.step_sizes,
        *([] if on_cuda else ["--no-amp"]),
        "-j",
        str(sizes.workers),
        "--steps",
        str(sizes.step_steps),
        "--warmup-steps",
        str(sizes.step_warmup),
        "--rounds",
        str(sizes.step_rounds),
    )
    step_overhead = python(
        "-m",
        "benchmarks.step_overhead",
        *benchmark,
        "--steps",
        str(sizes.overhead_steps),
        "--rounds",
        str(sizes.overhead_rounds),
    )
    sampling = python(
        "-m",
        "benchmarks.sampling_margin",
        "--device",
        args.device,
        *sizes.sampling_sizes,
        "--rounds",
        str(sizes.sampling_rounds),
    )
    extraction = python(
        "-m",
        "benchmarks.retrieval",
        "--part",
        "extraction",
        "--paper",
        "--device",
        args.device,
        *sizes.extraction_sizes,
        "--num-groups",
        str(sizes.extraction_groups),
        "-b",
        str(sizes.extraction_batch_size),
        "-j",
        str(sizes.workers),
        "--rounds",
        str(sizes.extraction_rounds),
    )
    layout = python(
        "-m",
        "benchmarks.channels_last_compile",
        *benchmark,
        "--variants",
        "eager",
        "channels-last",
        "--steps",
        str(sizes.layout_steps),
        "--rounds",
        str(sizes.layout_rounds),
    )
    parts = [
        Part("cuda-tests", [python("-m", "pytest", "-m", "cuda", "-q", "tests")], 150, pytest_figure),
        Part("train", [make_data, train], 240, train_figure),
        Part("training-step", [training_step_command], 120, training_step_figure),
        Part("step-overhead", [step_overhead], 120, step_overhead_figure),
        Part("sampling-margin", [sampling], 90, sampling_figure),
        Part("extraction", [extraction], 150, extraction_figure),
        Part("channels-last", [layout], 150, channels_last_figure),
    ]
    return [part for part in parts if part.name in args.parts]


def run_command(command, log, timeout):
    """The command's exit status, or None when it ran past `timeout` seconds. Its whole process group (torchrun's
    workers, DataLoader workers) is killed if it is still running when this returns."""
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return process.wait(timeout=max(timeout, 0))
    except subprocess.TimeoutExpired:
        return None
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_part(part, args, work, deadline):
    """(status, figure, seconds) of one part, its output in LOG_DIR/PART.log. The figure is read from the output
    of a failed part too, where it is there (pytest's counts)."""
    start = time.monotonic()
    timeout = min(part.timeout, deadline - start)
    log_path = os.path.join(args.log_dir, f"{part.name}.log")
    with open(log_path, "w") as log:
        for command in part.commands:
            print(f"$ {shlex.join(command)}", flush=True)
            returncode = run_command(command, log, start + timeout - time.monotonic())
            if returncode != 0:
                break
    seconds = time.monotonic() - start
    with open(log_path) as f:
        output = f.read()
    try:
        figure = part.figure(output, args, work)
        status = "ok"
    except (ValueError, OSError, KeyError) as error:
        figure = f"no figure: {error}"
        status = "failed"
    if returncode is None:
        status = f"timeout ({timeout:.0f} s)"
    elif returncode != 0:
        status = f"failed (exit {returncode})"
    return status, figure, seconds


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(
        description="The CUDA tests, a short training run and the GPU benchmarks, with a summary of their figures",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu needs --smoke")
    parser.add_argument("--smoke", action="store_true", help="toy sizes (ResNet-18, a few steps): checks the commands")
    parser.add_argument("--parts", nargs="+", default=PART_NAMES, choices=PART_NAMES, help="the parts to run")
    parser.add_argument(
        "--budget", default=450.0, type=float, help="seconds for all the parts: a part stops at the end of it"
    )
    parser.add_argument(
        "--log-dir", default=os.path.join(ROOT, "output", "gpu-check"), help="where PART.log and summary.txt go"
    )
    return parser


def check_args(args):
    if args.device == "cpu" and not args.smoke:
        raise ValueError("--device cpu runs only the CPU smoke check: add --smoke")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"torch {torch.__version__} sees no CUDA device: run this on a machine with a GPU, "
            "or `--device cpu --smoke` to check the command lines on the CPU"
        )


def main(args):
    os.makedirs(args.log_dir, exist_ok=True)
    machine = f"{describe_machine(args.device)}, CUDA {torch.version.cuda}, {os.cpu_count()} CPU cores"
    print(machine, flush=True)
    train_log_copy = os.path.join(args.log_dir, "train-log.jsonl")
    if "train" in args.parts and os.path.isfile(train_log_copy):
        os.remove(train_log_copy)  # a run's copy, never an earlier run's
    deadline = time.monotonic() + args.budget
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        for part in build_parts(args, work):
            if time.monotonic() >= deadline:
                rows.append([part.name, "not run (--budget spent)", "", "0"])
                continue
            status, figure, seconds = run_part(part, args, work, deadline)
            print(f"{part.name}: {status}  {figure}  ({seconds:.0f} s)", flush=True)
            if status != "ok":
                with open(os.path.join(args.log_dir, f"{part.name}.log")) as f:
                    print("".join(f.readlines()[-20:]), flush=True)
            rows.append([part.name, status, figure, f"{seconds:.0f}"])
        train_log = os.path.join(work, "train", "log.jsonl")
        if os.path.isfile(train_log):
            shutil.copy(train_log, train_log_copy)
    table = format_table(["part", "status", "key figure", "seconds"], rows)
    summary = f"{machine}\nmode: {'smoke' if args.smoke else 'full'}\n{table}"
    print(summary)
    with open(os.path.join(args.log_dir, "summary.txt"), "w") as f:
        f.write(summary + "\n")
    print(f"logs: {args.log_dir}")
    return all(row[1] == "ok" for row in rows)


if __name__ == "__main__":
    parser = get_args_parser()
    args = parser.parse_args()
    try:
        check_args(args)
    except ValueError as error:
        parser.error(str(error))
    sys.exit(0 if main(args) else 1)
