"""Submits train.py to SLURM with submitit: a checkpoint and a requeue when the job is preempted or times out.

    python run_with_submitit.py --nodes 2 --tasks-per-node 8 --partition gpu --timeout 4320 \\
        --data-path /datasets/imagenet --output-dir runs/mg_0.5_p3

Every flag of train.py is accepted. submitit (an optional extra: pip install submitit) sends SIGUSR2
--signal-delay seconds before the time limit and on preemption: every process finishes its step, rank 0
writes a mid-epoch checkpoint, and submitit requeues the job, which resumes from it.
"""

import argparse
import os
import signal

import flags
import train
import utils
from multigrain.storage.checkpoint import FILE_NAMES
from multigrain.training import preemption


class Trainer:
    """The job: train.main(args) in each task. submitit pickles it, calls it, and calls checkpoint() to requeue."""

    def __init__(self, args):
        self.args = args

    def __call__(self):
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        preemption_signal = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
        checkpoint_and_requeue = signal.getsignal(preemption_signal)  # installed by submitit in this process
        try:
            # SIGTERM stays with submitit, which ignores it: SLURM sends it to a preempted job after the warning.
            return train.main(self.args, stop_signals=(signal.SIGINT, preemption_signal))
        except preemption.TrainingStopped as e:
            print(e, flush=True)
            if e.signum != preemption_signal:
                raise
            checkpoint_and_requeue(e.signum, None)  # calls checkpoint(), requeues and exits (rank 0)

    def checkpoint(self):
        """What the requeued job runs: the same training, resumed from its checkpoint."""
        import submitit

        path = os.path.join(self.args.output_dir, FILE_NAMES["train"])
        if os.path.isfile(path):
            self.args.resume = path
        return submitit.helpers.DelayedSubmission(Trainer(self.args))


def get_args_parser():
    parser = argparse.ArgumentParser(
        description="Submit train.py with submitit",
        parents=[train.get_args_parser(add_help=False)],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--nodes", default=1, type=flags.int_in(1), help="nodes of the job")
    parser.add_argument(
        "--tasks-per-node", default=8, type=flags.int_in(1), help="processes per node: one per GPU (--device cuda)"
    )
    parser.add_argument("--cpus-per-task", default=10, type=flags.int_in(1), help="CPU cores per process")
    parser.add_argument("--partition", default=None, help="SLURM partition")
    parser.add_argument("--timeout", default=4320, type=flags.int_in(1), help="time limit of each job, in minutes")
    parser.add_argument(
        "--signal-delay",
        default=120,
        type=flags.int_in(1),
        help="seconds before the time limit at which the job is told to checkpoint and requeue",
    )
    parser.add_argument("--job-dir", default=None, help="submitit's logs (default: <output-dir>/submitit)")
    parser.add_argument(
        "--cluster", default=None, choices=["slurm", "local"], help="default: SLURM when available, else local"
    )
    parser.add_argument("--wait", action="store_true", help="wait for the job to end and print its result")
    return parser


@utils.usage_check
def check_submission(args):
    if args.requeue:
        raise ValueError("--requeue is train.py's own requeue; under submitit the job requeues itself")
    if args.cluster == "local" and args.nodes > 1:
        raise ValueError(f"--cluster local runs on this machine: --nodes must be 1, got {args.nodes}")
    if not args.output_dir:
        raise ValueError("--output-dir must be given: the requeued job resumes from its checkpoint")
    train.check_args(args)


def submit(args):
    """Submits Trainer(args); returns the submitit job."""
    import submitit

    check_submission(args)
    executor = submitit.AutoExecutor(
        folder=args.job_dir or os.path.join(args.output_dir, "submitit"), cluster=args.cluster
    )
    gpus = args.tasks_per_node if args.device.startswith("cuda") else 0
    executor.update_parameters(
        name="multigrain",
        nodes=args.nodes,
        tasks_per_node=args.tasks_per_node,
        gpus_per_node=gpus,
        cpus_per_task=args.cpus_per_task,
        timeout_min=args.timeout,
        slurm_signal_delay_s=args.signal_delay,
    )
    if args.partition:
        executor.update_parameters(slurm_partition=args.partition)
    return executor.submit(Trainer(args))


def main(args):
    job = submit(args)
    print(f"Submitted job {job.job_id}: logs in {job.paths.folder}", flush=True)
    if args.wait:
        print(f"Job {job.job_id} finished: {job.result()}", flush=True)


if __name__ == "__main__":
    utils.run_script(main, get_args_parser())
