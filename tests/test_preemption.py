"""Mid-epoch checkpoints, signals, requeue, multi-node and SLURM launches, submitit: a run stopped and resumed
equals the uninterrupted run bit for bit."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import train
from multigrain.images.image_io import BadImageError
from multigrain.storage.checkpoint import describe, load_checkpoint
from multigrain.training.preemption import TrainingStopped
from tests.scripts import ONE_THREAD, ROOT, script_command
from tests.test_fault_tolerance import children_of, read_log
from tools.synthetic_data import make_imagefolder

pytestmark = pytest.mark.slow  # training runs stopped, killed and resumed

SMALL = [
    "--model", "resnet18", "--device", "cpu", "--print-freq", "1000", "--train-crop-size", "32",
    "--val-resize-size", "36", "--val-crop-size", "32", "--lr", "0.02",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("preemption") / "data"
    make_imagefolder(root, num_classes=3, train_per_class=8, val_per_class=3, image_size=32, seed=3)
    return root


def parse(args):
    return train.get_args_parser().parse_args(args)


def assert_same_run(a, b, log_keys=("train_loss", "train_margin_loss", "train_acc1", "beta", "val_loss", "val_acc1")):
    """Same weights, β, optimizer state and schedule, and the same logged losses (`log_keys` of each epoch)."""
    state_a, state_b = (load_checkpoint(os.path.join(folder, "checkpoint.pth")) for folder in (a, b))
    for key in ("model", "criterion"):
        for name, value in state_a[key].items():
            assert torch.equal(value, state_b[key][name]), f"{key}.{name}"
    for index, values in state_a["optimizer"]["state"].items():
        assert torch.equal(values["momentum_buffer"], state_b["optimizer"]["state"][index]["momentum_buffer"])
    assert state_a["lr_scheduler"] == state_b["lr_scheduler"]
    assert state_a["in_epoch"] is None and state_b["in_epoch"] is None
    log_a, log_b = read_log(a), read_log(b)
    assert [r["epoch"] for r in log_a] == [r["epoch"] for r in log_b] == list(range(len(log_a)))
    for record_a, record_b in zip(log_a, log_b):
        for key in log_keys:
            assert record_a[key] == record_b[key], (record_a["epoch"], key)


def test_a_run_stopped_by_signals_and_a_failed_validation_resumes_bit_for_bit(data, tmp_path, monkeypatch):
    # 24 images x 2 / batch 6: 8 iterations per epoch, a mid-epoch checkpoint every 3.
    common = ["--data-path", str(data), *SMALL, "-b", "6", "--epochs", "2", "--checkpoint-every-iters", "3"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train.main(parse([*common, "-j", "0", "--output-dir", str(straight)]))

    # A validation image that cannot be read: the epoch's training is saved before the validation fails.
    bad = data / "val" / "class_001" / "broken.jpg"
    bad.write_bytes(b"not a picture")
    try:
        with pytest.raises(BadImageError, match="broken.jpg"):
            train.main(parse([*common, "-j", "0", "--output-dir", str(stopped)]))
    finally:
        bad.unlink()
    pending = load_checkpoint(stopped / "checkpoint.pth")
    assert "in epoch 0 after iteration 8 of 8, validation pending" in describe(pending, "c")

    # SIGTERM during iteration 2 of epoch 1, with a DataLoader worker: the step ends, then the state is saved.
    original_forward = train.MultiGrainLoss.forward
    calls = []

    def signal_during_third_step(self, *args):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original_forward(self, *args)

    monkeypatch.setattr(train.MultiGrainLoss, "forward", signal_during_third_step)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM in epoch 1 after iteration 3 of 8") as stop:
        train.main(parse([*common, "-j", "1", "--output-dir", str(stopped)]))
    assert stop.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    assert len(calls) == 3  # validation of epoch 0 redone, no training step of epoch 0
    assert [r["epoch"] for r in read_log(stopped)] == [0]
    monkeypatch.undo()
    assert "in epoch 1 after iteration 3 of 8" in describe(load_checkpoint(stopped / "checkpoint.pth"), "c")
    with monkeypatch.context() as launch:
        launch.setenv("RANK", "0")
        launch.setenv("WORLD_SIZE", "2")
        with pytest.raises(ValueError, match="only with the 1 processes it was started with; this launch has 2"):
            train.check_args(parse([*common, "-b", "3", "--output-dir", str(stopped)]))  # the same global batch
    with pytest.raises(ValueError, match="--requeue .* SLURM_JOB_ID is not set"):
        train.check_args(parse([*common, "--output-dir", str(stopped), "--requeue"]))

    train.main(parse([*common, "-j", "0", "--output-dir", str(stopped)]))  # resumed automatically
    assert_same_run(straight, stopped)


def torchrun(*flags, nproc, log, extra=()):
    command, env = script_command("train.py", *flags, nproc=nproc, torchrun_flags=extra, env=ONE_THREAD)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def checkpoint_position(output_dir):
    """(epoch, iteration) of the training state in output_dir; iteration None after a finished epoch."""
    path = output_dir / "checkpoint.pth"
    if not path.exists():
        return None
    checkpoint = load_checkpoint(path)
    in_epoch = checkpoint["in_epoch"]
    return (in_epoch["epoch"], in_epoch["step"]) if in_epoch else (checkpoint["epoch"], None)


def wait_for(condition, process, what, timeout=240):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"{what}: the run ended first"
        assert time.time() < deadline, f"{what}: timed out"
        time.sleep(0.005)


def finish(process, timeout=300):
    try:
        return process.wait(timeout=timeout)
    finally:
        kill_group(process)


def kill_group(process):
    """SIGKILLs a process started with start_new_session and its descendants, if still running."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_two_processes_killed_while_saving_then_stopped_by_sigterm_resume_bit_for_bit(data, tmp_path):
    # 24 images x 6 / (2 processes x 3): 24 iterations per epoch, a mid-epoch checkpoint every 4.
    common = ["--data-path", str(data), *SMALL, "-j", "0", "-b", "3", "--epochs", "2", "--epoch-len-factor", "6"]
    common += ["--checkpoint-every-iters", "4"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    with open(tmp_path / "straight.txt", "w") as log:
        assert finish(torchrun(*common, "--output-dir", str(straight), nproc=2, log=log, extra=["--standalone"])) == 0

    with open(tmp_path / "stopped.txt", "w") as log:
        run = torchrun(
            *common, "--output-dir", str(stopped), nproc=2, log=log, extra=["--standalone", "--max-restarts=2"]
        )
        try:
            # Both workers SIGKILLed while rank 0 writes the second mid-epoch checkpoint.
            wait_for(lambda: checkpoint_position(stopped) == (0, 4), run, "first checkpoint")
            writing = lambda: any(name.endswith(".pth") and name.startswith(".tmp-") for name in os.listdir(stopped))  # noqa: E731
            wait_for(writing, run, "second checkpoint")
            for worker in children_of(run.pid):
                os.kill(worker, signal.SIGKILL)
            # The restarted group resumes from the first checkpoint; SIGTERM reaches its workers in epoch 1.
            wait_for(lambda: (checkpoint_position(stopped) or (0,))[0] == 1, run, "a checkpoint in epoch 1")
            for worker in children_of(run.pid):
                os.kill(worker, signal.SIGTERM)
            assert finish(run) == 0  # the workers exited with 0: torchrun does not restart them
        finally:
            kill_group(run)
    output = (tmp_path / "stopped.txt").read_text()
    assert "Resuming from" in output and "in epoch 0 after iteration 4 of 24)" in output, output[-3000:]
    assert output.count("Resuming from") == 1
    assert "stopped by SIGTERM in epoch 1 after iteration" in output or "stopped by SIGTERM after" in output
    assert "Traceback" not in output

    with open(tmp_path / "resumed.txt", "w") as log:
        assert finish(torchrun(*common, "--output-dir", str(stopped), nproc=2, log=log, extra=["--standalone"])) == 0
    assert "Resuming from" in (tmp_path / "resumed.txt").read_text()
    assert_same_run(straight, stopped)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "{record}"
if [ "$1" = show ]; then echo 127.0.0.1; fi
"""
# srun on one machine: one process per task with SLURM's variables, srun's own options dropped.
FAKE_SRUN = """#!/bin/sh
while [ "${1#--}" != "$1" ]; do shift; done
pids=""
task=0
while [ $task -lt $SLURM_NTASKS ]; do
    SLURM_PROCID=$task SLURM_LOCALID=$task "$@" > "{logs}/task_$task.txt" 2>&1 &
    pids="$pids $!"
    task=$((task + 1))
done
status=0
for pid in $pids; do wait $pid || status=$?; done
exit $status
"""


def test_slurm_script_requeued_on_sigusr1_equals_two_torchrun_nodes(data, tmp_path):
    # 4 processes x 3 images: 8 iterations per epoch (24 images x 4 / 12).
    common = ["--data-path", str(data), *SMALL, "-j", "0", "-b", "3", "--epochs", "2", "--epoch-len-factor", "4"]
    common += ["--checkpoint-every-iters", "2"]
    bin_dir, logs = tmp_path / "bin", tmp_path / "logs"
    bin_dir.mkdir()
    logs.mkdir()
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL.format(record=tmp_path / "scontrol.txt"))
    (bin_dir / "srun").write_text(FAKE_SRUN.replace("{logs}", str(logs)))
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for tool in ("scontrol", "srun", "python"):
        (bin_dir / tool).chmod(0o755)
    slurm_run = tmp_path / "slurm"

    def sbatch():
        env = dict(
            os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PATH=f"{bin_dir}:{os.environ['PATH']}",
            SLURM_JOB_ID="4242", SLURM_NTASKS="4", SLURM_JOB_NODELIST="node[01-02]", MASTER_PORT=str(free_port()),
        )  # fmt: skip
        command = ["bash", "slurm/train.sbatch", *common, "--output-dir", str(slurm_run)]
        return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)

    job = sbatch()
    try:
        wait_for(lambda: (checkpoint_position(slurm_run) or (0,))[0] == 1, job, "a checkpoint in epoch 1")
        (srun,) = children_of(job.pid)
        for task in children_of(srun):
            os.kill(task, signal.SIGUSR1)  # what sbatch --signal=USR1@180 does
        assert finish(job) == 128 + signal.SIGUSR1
    finally:
        kill_group(job)
    first = (logs / "task_0.txt").read_text()
    assert "stopped by SIGUSR1" in first and "SLURM job 4242 requeued" in first and "Traceback" not in first, first
    calls = (tmp_path / "scontrol.txt").read_text().splitlines()
    assert "requeue 4242" in calls and "show hostnames node[01-02]" in calls

    job = sbatch()  # the requeued job
    assert finish(job) == 0, (logs / "task_0.txt").read_text()[-3000:]
    assert "Resuming from" in (logs / "task_0.txt").read_text()

    # Two torchrun "nodes" of 2 processes each, rendezvous c10d on localhost.
    endpoint = f"--rdzv-endpoint=127.0.0.1:{free_port()}"
    nodes = []
    for node in range(2):
        with open(tmp_path / f"node_{node}.txt", "w") as log:
            extra = ["--nnodes=2", "--rdzv-backend=c10d", endpoint, "--rdzv-id=multigrain"]
            nodes.append(torchrun(*common, "--output-dir", str(tmp_path / "nodes"), nproc=2, log=log, extra=extra))
    assert [finish(node) for node in nodes] == [0, 0], (tmp_path / "node_0.txt").read_text()[-3000:]
    # Epoch 0 ran uninterrupted in both: the same, bit for bit. With more than 2 processes the first step after a
    # resume sums the gradients in another order (DDP lays its buckets out anew after its first step), so the
    # final states agree up to the rounding of that step, as it spreads through the next ones.
    slurm_log, nodes_log = read_log(slurm_run), read_log(tmp_path / "nodes")
    assert [r["epoch"] for r in slurm_log] == [r["epoch"] for r in nodes_log] == [0, 1]
    for key in ("train_loss", "train_margin_loss", "beta", "val_loss", "val_acc1"):
        assert slurm_log[0][key] == nodes_log[0][key], key
    slurm_model = load_checkpoint(slurm_run / "checkpoint.pth")["model"]
    nodes_model = load_checkpoint(tmp_path / "nodes" / "checkpoint.pth")["model"]
    for name, value in slurm_model.items():
        assert torch.allclose(value.float(), nodes_model[name].float(), rtol=0.05, atol=0.01), name


def test_submitit_local_job_preempted_once_requeues_and_finishes(data, tmp_path, monkeypatch):
    import run_with_submitit

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the job's processes unpickle run_with_submitit.Trainer
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "run"
    args = run_with_submitit.get_args_parser().parse_args(
        ["--data-path", str(data), *SMALL, "-j", "0", "-b", "6", "--epochs", "2", "--checkpoint-every-iters", "2"]
        + ["--output-dir", str(out), "--cluster", "local", "--tasks-per-node", "1", "--timeout", "10"]
    )
    job = run_with_submitit.submit(args)
    controller = int(job.job_id)  # a local job's id is its controller's pid
    try:
        deadline = time.time() + 240
        while checkpoint_position(out) is None:
            assert not job.done() and time.time() < deadline, "no checkpoint written"
            time.sleep(0.005)
        (task,) = children_of(controller)
        os.kill(task, signal.SIGUSR2)  # what SLURM sends on preemption (submitit's --signal)
        metrics = job.result()
    finally:
        job.cancel()
    assert metrics["images"] == 9
    output = job.stdout()
    assert "stopped by SIGUSR2" in output and "Requeued job" in output + job.stderr(), output[-3000:]
    assert output.count("Resuming from") == 1
    assert [record["epoch"] for record in read_log(out)] == [0, 1]
