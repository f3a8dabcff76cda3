"""Run under torchrun (gloo): engine.train_one_epoch on every rank, the loss of rank 1 only made NaN at iteration 2.

Usage: torchrun --nproc_per_node=2 -m tests.non_finite_loss_worker OUTPUT_DIR
Progress lines after steps 0 and 4. Each rank writes what stopped it to OUTPUT_DIR/rank<R>.txt: the message of the
FloatingPointError, or "finished".
"""

import contextlib
import io
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import engine
import utils
from multigrain.training import preemption
from multigrain.training.training_state import TrainingState
from tests.multigrain.ddp_equivalence_worker import GLOBAL_BATCH, build, global_batch

BAD_RANK, BAD_ITERATION, STEPS, PRINT_FREQ = 1, 2, 7, 4


def main(output_dir):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, criterion = build()
    forward = criterion.forward
    calls = iter(range(STEPS))

    def nan_on_one_rank(*args):
        losses = forward(*args)
        if next(calls) == BAD_ITERATION and rank == BAD_RANK:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    criterion.forward = nan_on_one_rank
    optimizer = torch.optim.SGD(list(model.parameters()) + list(criterion.parameters()), lr=0.1)
    state = TrainingState(
        "", {}, {}, model=model, criterion=criterion, optimizer=optimizer, generator=torch.Generator(), seed=0,
        lr_scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 30), epochs=1, schedule=preemption.CheckpointSchedule(),
    )  # fmt: skip
    metric_logger = utils.MetricLogger()
    state.begin_epoch(0, STEPS, metric_logger)
    images, labels, ids = global_batch()
    chunk = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    batches = [(images[chunk], labels[chunk], ids[chunk])] * STEPS
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            engine.train_one_epoch(
                nn.parallel.DistributedDataParallel(model), criterion, optimizer, batches, torch.device("cpu"), 0,
                print_freq=PRINT_FREQ, metric_logger=metric_logger, after_step=state.after_step,
            )  # fmt: skip
        outcome = "finished"
    except FloatingPointError as error:
        outcome = str(error)
    with open(os.path.join(output_dir, f"rank{rank}.txt"), "w") as f:
        f.write(outcome)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
