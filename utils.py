import datetime
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque

import numpy as np
import torch
import torch.distributed as dist

from multigrain.images.datasets import is_image_file
from multigrain.images.image_io import BadImageError
from multigrain.storage.atomic_write import WriteError
from multigrain.storage.json_lines import append_json_line as append_json_line  # the scripts' logs
from multigrain.training import distributed, preemption


class SmoothedValue:
    """Tracks a series of values; gives the window median/average and the global average.

    A value may be a 0-dim tensor: it stays on its device, and so does the sum, until `read_back` (which the
    properties call) turns them into Python floats; a training step then never waits for the device.
    """

    def __init__(self, window_size=20, fmt="{median:.4f} ({global_avg:.4f})"):
        self.deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt

    def update(self, value, n=1):
        if isinstance(value, torch.Tensor):
            value = value.detach().to(torch.float64, copy=True)  # a copy: the tensor may change in place later
        self.deque.append(value)
        self.count += n
        self.total = self.total + value * n

    def device_values(self) -> list:
        """The sum and the window's values that are tensors, in this order."""
        return [value for value in (self.total, *self.deque) if isinstance(value, torch.Tensor)]

    def replace_device_values(self, host_values):
        """Replaces device_values() by the next items of the iterator `host_values`, in their order."""

        def host(value):
            return next(host_values) if isinstance(value, torch.Tensor) else value

        self.total = host(self.total)
        self.deque = deque(map(host, self.deque), maxlen=self.deque.maxlen)

    @property
    def median(self):
        read_back([self])
        return float(np.median(self.deque))

    @property
    def avg(self):
        read_back([self])
        return float(np.mean(self.deque))

    @property
    def global_avg(self):
        read_back([self])
        return self.total / max(self.count, 1)

    @property
    def value(self):
        read_back([self])
        return self.deque[-1]

    def __str__(self):
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, value=self.value)


def read_back(meters):
    """Turns the device values of `meters` (SmoothedValue) into Python floats, with one device-to-host copy."""
    values = [value for meter in meters for value in meter.device_values()]
    if values:
        host_values = iter(torch.stack(values).tolist())
        for meter in meters:
            meter.replace_device_values(host_values)


class MetricLogger:
    """Prints progress lines with the smoothed meters, images/s and the epoch's ETA.

    Meters updated with device tensors are read back (one copy for all of them) only when a line is printed,
    the meters saved or synchronised: between progress lines, `update` never waits for the device.
    """

    def __init__(self, delimiter="  "):
        self.meters = defaultdict(SmoothedValue)
        self.delimiter = delimiter
        self.step_images = 0

    def update(self, n=1, **kwargs):
        for name, value in kwargs.items():
            self.meters[name].update(value, n=n)

    def read_back(self):
        read_back(self.meters.values())

    def state_dict(self):
        """The meters' sums and windows: a mid-epoch checkpoint carries them, so that the epoch's averages count
        the steps before the interruption."""
        self.read_back()
        return {
            name: {"count": meter.count, "total": meter.total, "window": list(meter.deque)}
            for name, meter in self.meters.items()
        }

    def load_state_dict(self, state):
        for name, values in state.items():
            meter = self.meters[name]
            meter.count, meter.total = values["count"], values["total"]
            meter.deque.extend(values["window"])

    def count_images(self, n):
        """Adds n to the images of the current step (all processes together): progress lines show images/s."""
        self.step_images += n

    def __str__(self):
        self.read_back()
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def log_every(self, iterable, print_freq, header="", first=0, before_print=None):
        """Yields from `iterable`, printing every `print_freq` steps (and images/s, see count_images); `first` is
        the number of the first step (after a resume). `before_print()` runs before each progress line."""
        start = end = time.time()
        iter_time = SmoothedValue(fmt="{avg:.4f}")
        data_time = SmoothedValue(fmt="{avg:.4f}")
        step_images = SmoothedValue()
        total = first + len(iterable)
        width = len(str(total))
        for i, obj in enumerate(iterable, start=first):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            step_images.update(self.step_images)
            self.step_images = 0
            if i % print_freq == 0 or i == total - 1:
                if before_print is not None:
                    before_print()
                eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - i - 1)))
                parts = [f"{header} [{i:>{width}}/{total}]", f"eta: {eta}", str(self)]
                if step_images.total:
                    parts.append(f"img/s: {step_images.avg / max(iter_time.avg, 1e-9):.1f}")
                parts.append(f"time: {iter_time} data: {data_time}")
                distributed.print_main(self.delimiter.join(parts))
            end = time.time()
        elapsed = datetime.timedelta(seconds=int(time.time() - start))
        per_step = (time.time() - start) / max(total - first, 1)
        distributed.print_main(f"{header} total time: {elapsed} ({per_step:.4f} s / it)")

    def synchronize_between_processes(self):
        """Makes every meter's global average the average over all ranks' samples."""
        self.read_back()
        meters = list(self.meters.values())
        sums = distributed.reduce_sum([number for meter in meters for number in (meter.count, meter.total)])
        for meter, count, total in zip(meters, sums[0::2], sums[1::2]):
            meter.count, meter.total = int(count), total


def check_image_folder(folder, flag):
    """The class names of an ImageFolder root whose every class folder holds an image file, or a ValueError."""
    if not os.path.isdir(folder):
        raise ValueError(f"{flag}: {folder} is not a folder")
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise ValueError(f"{flag}: {folder} has no class sub-folders")
    for name in classes:
        with os.scandir(os.path.join(folder, name)) as entries:
            if not any(entry.is_file() and is_image_file(entry.name) for entry in entries):
                raise ValueError(f"{flag}: class folder {os.path.join(folder, name)} holds no image file")
    return classes


def check_writable_folder(folder, flag):
    """Refuses an output folder that cannot be created or written, before the work rather than after it: a file
    is written and removed in the folder, or in the nearest existing folder above it when it does not exist yet
    (nothing is left behind). Permission bits say nothing when running as root; the probe does not rely on them."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {folder} is not a writable folder: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"{flag} {folder} is not a writable folder: {e}") from None


def check_device(device, flag="--device"):
    """Refuses a device torch does not know, or a CUDA device this machine does not have (cuda:N counts
    the devices), before any model is built on it."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {device} is not a device: pass cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{flag} {device}: torch sees no CUDA device on this machine: pass {flag} cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"{flag} {device}: this machine has {count} CUDA devices (cuda:0 to cuda:{count - 1})")
        local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0)))
        if local_rank >= count:
            raise ValueError(
                f"{flag} {device}: process {local_rank} of this machine would use cuda:{local_rank}, but the machine "
                f"has {count} CUDA devices: start at most {count} processes per machine"
            )
    elif parsed.type != "cpu":
        raise ValueError(f"{flag} {device}: the scripts run on cpu or cuda")


def init_distributed_mode(args):
    """Sets args.distributed, args.rank, args.world_size, args.gpu from torchrun, SLURM or nothing.

    NCCL on GPUs, gloo on the CPU. A plain `python train.py` runs as a single process.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        args.rank = int(os.environ["RANK"])
        args.world_size = int(os.environ["WORLD_SIZE"])
        args.gpu = int(os.environ.get("LOCAL_RANK", 0))
    elif "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        args.rank = int(os.environ["SLURM_PROCID"])
        args.world_size = int(os.environ["SLURM_NTASKS"])
        args.gpu = int(os.environ.get("SLURM_LOCALID", 0))
        if args.dist_url == "env://":
            os.environ.setdefault("MASTER_ADDR", _slurm_master_addr())
            os.environ.setdefault("MASTER_PORT", "29500")
            os.environ["RANK"], os.environ["WORLD_SIZE"] = str(args.rank), str(args.world_size)
    else:
        args.distributed, args.rank, args.world_size, args.gpu = False, 0, 1, 0
        return
    args.distributed = True
    use_cuda = torch.device(args.device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(args.gpu)
        args.device = f"cuda:{args.gpu}"
    args.dist_backend = "nccl" if use_cuda else "gloo"
    store, _, _ = next(dist.rendezvous(args.dist_url, rank=args.rank, world_size=args.world_size))
    # The store outlives a `torchrun --max-restarts` restart: without a prefix per attempt, the new
    # group would read the dead group's addresses and fail to connect.
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"attempt_{attempt}/", store)
    dist.init_process_group(backend=args.dist_backend, store=store, world_size=args.world_size, rank=args.rank)
    dist.barrier()


def _slurm_master_addr():
    nodes = os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1")
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
        return hosts.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return nodes


class UsageError(ValueError):
    """A command line that cannot run: reported as a usage error (exit code 2), without a traceback."""


def usage_check(check):
    """Decorates a script's check_args: whatever it refuses (ValueError, OSError, an unreadable
    checkpoint's RuntimeError) is a UsageError."""

    @functools.wraps(check)
    def checked(args):
        try:
            return check(args)
        except UsageError:
            raise
        except (ValueError, OSError, RuntimeError) as e:
            raise UsageError(str(e)) from e

    return checked


class Failure(RuntimeError):
    """A run that failed for a reason its message gives in full (exit code 1, no traceback)."""


# Failures that name their cause (a file, an iteration, a batch too large, a full disk) well enough that a
# traceback adds nothing.
REPORTED_FAILURES = (BadImageError, WriteError, FloatingPointError, MemoryError, Failure)
# How long a process other than the launcher's rank 0 waits before reporting a refusal or failure: rank 0, which
# meets the same refusal at the same time, reports it and exits, and the launcher then stops the others, so that
# the message is printed once. A problem of one process only is still reported, after this wait.
REPORT_WAIT_S = 20


def report_and_exit(parser, message, exit_code, usage=False):
    """Prints "PROG: error: MESSAGE" (after the usage with `usage`) and exits; under torchrun or SLURM only the
    launcher's rank 0 prints at once, the others after REPORT_WAIT_S, naming their rank."""
    rank = launch_rank()
    if rank:
        time.sleep(REPORT_WAIT_S)
        message = f"(process {rank}) {message}"
    if usage:
        parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(exit_code)


def run_script(main, parser):
    """Parses the command line and runs main(args): a flag that does not parse exits with code 2 and the usage,
    another UsageError with code 2 and its message, a reported failure with code 1 and its message; once for all
    the processes of a torchrun or SLURM launch (report_and_exit)."""
    parser.error = functools.partial(report_and_exit, parser, exit_code=2, usage=True)
    args = parser.parse_args()
    try:
        main(args)
        distributed.end_process_group()
    except UsageError as e:
        report_and_exit(parser, str(e), 2)
    except REPORTED_FAILURES as e:
        report_and_exit(parser, str(e), 1)
    except preemption.TrainingStopped as e:
        distributed.print_main(f"{parser.prog}: {e}")
        distributed.end_process_group()
        sys.exit(e.exit_code)


def launch_rank() -> int:
    """The rank the launcher gave this process (torchrun's RANK, SLURM's SLURM_PROCID), 0 without a launcher."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"])
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
        return int(os.environ["SLURM_PROCID"])
    return 0


def print_at_launch(message):
    """Prints `message` (nothing for None) once per launch, before any process group exists: from the process of
    the launcher's rank 0."""
    if message is not None and launch_rank() == 0:
        print(message, flush=True)


def launch_world_size() -> int:
    """The number of processes the launcher started (torchrun's WORLD_SIZE, SLURM's SLURM_NTASKS), before
    any process group exists."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_PROCID" in os.environ:
        return int(os.environ.get("SLURM_NTASKS", 1))
    return 1
