"""Stopping a training run cleanly: on a signal (Ctrl-C, SIGTERM, SLURM's SIGUSR1 warning) every process
finishes its step, the state is saved, and the run ends at the same step on every process.

    with StopSignals() as signals:
        for step ...:
            ...
            stop_signal, save = agree(signals.signum, schedule.due(step))
"""

import os
import signal
import subprocess
import time

import torch

from . import distributed

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
# SLURM's warning before a time limit or a preemption (sbatch --signal=USR1@<seconds>): the run requeues itself
# on it when asked to (train.py --requeue); SIGTERM and SIGINT, which scancel and Ctrl-C send, only stop it.
REQUEUE_SIGNAL = signal.SIGUSR1


class TrainingStopped(Exception):
    """A run stopped by `signum` after saving its state; the message says where and how to continue."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a process killed by the signal, so that a script sees the run did not
        finish; 0 under torchrun, which restarts a group whose worker exits with another code."""
        return 0 if "TORCHELASTIC_RESTART_COUNT" in os.environ else 128 + self.signum


class StopSignals:
    """While entered, SIGINT, SIGTERM and SIGUSR1 only record that a stop was asked (`signum`, the first
    signal received): the current step and a checkpoint being written finish undisturbed."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.signum = 0
        self._previous = {}

    def _record(self, signum, frame):
        self.signum = self.signum or signum

    def __enter__(self):
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def ignore_stop_signals(worker_id=None):
    """DataLoader worker_init_fn: a terminal's Ctrl-C and SLURM's SIGUSR1 reach the workers too; their process
    stops them. SIGTERM keeps its default: it is how a process that exits stops workers it did not shut down
    (ignoring it there makes that exit wait for them forever)."""
    for signum in (signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


class CheckpointSchedule:
    """A mid-epoch checkpoint is due every `every_iters` steps of an epoch and `every_minutes` after the last one."""

    def __init__(self, every_minutes=None, every_iters=None):
        self.every_seconds = every_minutes * 60 if every_minutes else None
        self.every_iters = every_iters
        self.saved()

    def due(self, steps_done) -> bool:
        by_iters = self.every_iters is not None and steps_done % self.every_iters == 0
        return by_iters or (self.every_seconds is not None and time.monotonic() - self.last >= self.every_seconds)

    def saved(self):
        self.last = time.monotonic()


def agree(signum, save):
    """(the signal that stops the run or 0, whether to save), the same on every process: one all-reduce
    of two integers (the largest over the processes), on the host (distributed.host_group): a training step
    makes it without waiting for its device."""
    if not distributed.is_initialized():
        return signum, bool(save)
    flags = torch.tensor([int(signum), int(save)])
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX, group=distributed.host_group())
    signum, save = flags.tolist()
    return signum, bool(save)


def signal_name(signum) -> str:
    return signal.Signals(signum).name


def requeue_slurm_job() -> str:
    """Requeues this SLURM job (`scontrol requeue $SLURM_JOB_ID`); returns what happened, in words."""
    job_id = os.environ["SLURM_JOB_ID"]
    try:
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        details = getattr(e, "stderr", None) or e
        return f"requeueing SLURM job {job_id} failed ({str(details).strip()}): submit it again to continue"
    return f"SLURM job {job_id} requeued: it continues from this checkpoint when it starts again"
