"""The project's scripts run as a user runs them: from the repository's root, with it on PYTHONPATH."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the env of a run with one thread per process


def script_command(script, *args, nproc=None, torchrun_flags=("--standalone",), env=None):
    """The command line and environment of `python SCRIPT ARGS`, or with nproc of
    `python -m torch.distributed.run --nproc-per-node=NPROC TORCHRUN_FLAGS SCRIPT ARGS`; `env` adds variables.
    SCRIPT may be "-m" or "-c", followed in ARGS by the module or the code."""
    launcher = [sys.executable]
    if nproc:
        launcher += ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}", *torchrun_flags]
    return [*launcher, str(script), *map(str, args)], dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))


def run_script(script, *args, nproc=None, torchrun_flags=("--standalone",), env=None, check=True):
    """Runs script_command(...) from ROOT to its end (10 minutes at most) and returns the completed process, its
    output as text; with check, asserts that it exited with 0, showing the end of its output if not."""
    command, env = script_command(script, *args, nproc=nproc, torchrun_flags=torchrun_flags, env=env)
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert run.returncode == 0, f"exit code {run.returncode}\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
    return run
