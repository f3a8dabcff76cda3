"""The state of a training run as one object: what its checkpoint saves and restores, where the run stands within
an epoch, and its stop on a signal.

    state = TrainingState(output_dir, vars(args), recipe, model=..., criterion=..., optimizer=..., lr_scheduler=...,
                          scaler=..., generator=..., seed=..., epochs=..., stop_signals=signals)
    start_epoch = state.restore(checkpoint, path)  # a run continued; a new one starts at epoch 0
    for epoch in range(start_epoch, epochs):
        first_step, train_metrics = state.begin_epoch(epoch, steps, metric_logger)
        if train_metrics is None:
            train_metrics = train_one_epoch(..., first_step=first_step, after_step=state.after_step)
            state.end_of_training(train_metrics)
        ...  # the validation
        state.end_of_epoch(record)

The checkpoint (<output_dir>/checkpoint.pth, kind "train" of multigrain.storage.checkpoint) holds the model, β (the
criterion), the optimizer, scheduler and gradient scaler, `epoch` (the last finished one), `in_epoch` (the
half-finished epoch: None, or its iterations done with each process's random states and meters, or its
`train_metrics` when only its validation is left), the recipe and its allowed changes, and `log`: one record per
finished epoch, which <output_dir>/log.jsonl mirrors. A stop signal (StopSignals) is acted on after a step, after
the training of an epoch and after its validation, by every process at the same point: the state is saved, then
TrainingStopped is raised.
"""

import os
import time

import numpy as np
import torch

from ..storage.checkpoint import (
    FILE_NAMES,
    LOG_NAMES,
    checkpoint_kind,
    describe,
    make_checkpoint,
    model_state_dict,
    save_checkpoint,
)
from ..storage.json_lines import append_json_line, write_json_lines
from . import distributed, preemption, seeding


def check_resumable(checkpoint, path, processes):
    """Refuses to continue what is not a training state, and a half-finished epoch under another number of
    `processes` than it was started with."""
    if checkpoint_kind(checkpoint) != "train":
        raise ValueError(
            f"{describe(checkpoint, path)} is not a training state and cannot be resumed: "
            f"to start a training run from its weights, pass --init-from {path}"
        )
    started_with = len((checkpoint.get("in_epoch") or {}).get("ranks", ()))
    if started_with and started_with != processes:
        raise ValueError(
            f"{describe(checkpoint, path)} stopped in the middle of an epoch, which continues only with the "
            f"{started_with} processes it was started with; this launch has {processes}"
        )


class TrainingState:
    """The training state of a run writing into `output_dir` ("": nothing is written).

    `args` (a dict) and `recipe` are stored as they are. `model`, `criterion`, `optimizer`, `lr_scheduler` and `scaler`
    (None without one) are saved and restored; `generator` is the sampling generator, seeded per epoch from `seed` as
    the global random streams are. A signal that `stop_signals` records stops the run; after `epochs` epochs the run
    is over and ends without stopping. `schedule` says when a checkpoint is due within an epoch; `requeue` requeues
    the SLURM job on preemption.REQUEUE_SIGNAL. `entries` are more entries of the checkpoint, saved as they are.
    """

    def __init__(
        self, output_dir, args, recipe, *, model, criterion, optimizer, lr_scheduler, scaler=None, generator, seed,
        epochs, stop_signals=None, schedule=None, requeue=False, entries=None,
    ):  # fmt: skip
        self.path = os.path.join(output_dir, FILE_NAMES["train"]) if output_dir else None
        self.log_path = os.path.join(output_dir, LOG_NAMES["train"]) if output_dir else None
        self.args, self.recipe, self.recipe_changes, self.history = args, recipe, [], []
        self.model, self.criterion, self.optimizer, self.lr_scheduler = model, criterion, optimizer, lr_scheduler
        self.scaler, self.generator, self.seed, self.epochs = scaler, generator, seed, epochs
        self.stop_signals = stop_signals or preemption.StopSignals(())
        self.schedule = schedule or preemption.CheckpointSchedule()
        self.requeue = requeue
        self.entries = entries or {}
        self.in_epoch = None  # the half-finished epoch of a restored state, continued by the next begin_epoch
        self.epoch = self.steps = self.epoch_start = None  # the current epoch, set by begin_epoch

    def restore(self, checkpoint, path, recipe_changes=()):
        """Continues the run of the training state `checkpoint` (read from `path`): every part as saved, its
        half-finished epoch, its log (log.jsonl is rewritten from it), and the recipe changes that --allow-change
        allowed ((entry, stored, given) triples). Returns the epoch to start from."""
        distributed.print_main(f"Resuming from {describe(checkpoint, path)}")
        self.model.load_state_dict(model_state_dict(checkpoint, path))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        if "criterion" in checkpoint:
            self.criterion.load_state_dict(checkpoint["criterion"])
        start_epoch = checkpoint["epoch"] + 1
        self.in_epoch = checkpoint.get("in_epoch")
        self.history = checkpoint.get("log", [])
        self.recipe_changes = checkpoint.get("recipe_changes", [])
        for entry, stored, given in recipe_changes:
            distributed.print_main(f"Recipe change allowed by --allow-change: {entry} {stored!r} -> {given!r}")
            self.recipe_changes.append({"epoch": start_epoch, "entry": entry, "stored": stored, "given": given})
        if self.log_path and distributed.is_main_process():
            # Drops the lines of epochs after the checkpoint, restores any written after it was saved.
            write_json_lines(self.log_path, self.history)
        return start_epoch

    def begin_epoch(self, epoch, steps, metric_logger):
        """Starts epoch `epoch` of `steps` steps. Its randomness is seeded from (seed, epoch, rank), which makes a
        resumed run repeat what the uninterrupted one did; a half-finished epoch gets its random states back, and its
        meters into `metric_logger`. Returns (the first step, the epoch's training metrics when only its validation
        is left, else None)."""
        self.epoch, self.steps, self.epoch_start = epoch, steps, time.time()
        rank = distributed.get_rank()
        seeding.seed_everything(self.seed, epoch, rank)
        self.generator.manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
        in_epoch, self.in_epoch = self.in_epoch, None
        if not in_epoch:
            return 0, None
        self.epoch_start -= in_epoch["time_s"]
        if "train_metrics" in in_epoch:
            return in_epoch["step"], in_epoch["train_metrics"]
        seeding.set_random_states(in_epoch["ranks"][rank]["random"], self.generator)
        metric_logger.load_state_dict(in_epoch["ranks"][rank]["meters"])
        return in_epoch["step"], None

    def after_step(self, steps_done, metric_logger):
        """The hook of engine.train_one_epoch: saves the state within the epoch when the schedule says so or a signal
        asked for a stop, and then stops (TrainingStopped); every process agrees on both."""
        if steps_done == self.steps:
            return  # the end of the epoch has its own checkpoint
        signum, due = preemption.agree(self.stop_signals.signum, self.schedule.due(steps_done))
        if due or signum:
            self.save_in_epoch(steps_done, metric_logger)
        if signum:
            raise self._stopped(signum, f"in epoch {self.epoch} after iteration {steps_done} of {self.steps}")

    def save_in_epoch(self, steps_done, metric_logger):
        """Saves the state after `steps_done` steps of the epoch, with every process's random states and meters
        (`metric_logger`: state_dict() and load_state_dict())."""
        own = {"random": seeding.random_states(self.generator), "meters": metric_logger.state_dict()}
        self._save(self._in_epoch(steps_done, ranks=distributed.all_gather_object(own)))

    def end_of_training(self, train_metrics):
        """Saves the epoch's training before its validation, so that a failing validation loses none of it; then
        stops if a signal asked for it."""
        self._save(self._in_epoch(self.steps, train_metrics=train_metrics))
        self._stop_if_asked(f"after the training of epoch {self.epoch}, before its validation")

    def end_of_epoch(self, record):
        """Adds the epoch's time to its log `record`, saves the state, appends the record to the log; then stops if a
        signal asked for it and epochs are left."""
        record["epoch_time_s"] = time.time() - self.epoch_start
        self.history.append(record)
        self._save()
        if self.log_path and distributed.is_main_process():
            append_json_line(self.log_path, record)
        if self.epoch + 1 < self.epochs:
            self._stop_if_asked(f"after epoch {self.epoch}")

    def last_checkpoint(self) -> str:
        """Where the last good state is, in words, for an error that ends the run."""
        if self.path and os.path.isfile(self.path):
            return f"the last good checkpoint is {self.path}"
        return "no checkpoint was saved"

    def _in_epoch(self, steps_done, **entries):
        """The `in_epoch` entry of a state saved after `steps_done` steps of the current epoch."""
        elapsed = time.time() - self.epoch_start
        return {"epoch": self.epoch, "step": steps_done, "steps": self.steps, "time_s": elapsed, **entries}

    def _save(self, in_epoch=None):
        """Rank 0 writes the state: after the current epoch, or within it (`in_epoch`) after the previous one."""
        if self.path and distributed.is_main_process():
            checkpoint = make_checkpoint(
                "train",
                self.model.state_dict(),
                self.args,
                criterion=self.criterion.state_dict(),
                optimizer=self.optimizer.state_dict(),
                lr_scheduler=self.lr_scheduler.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler is not None else None,
                epoch=self.epoch - 1 if in_epoch else self.epoch,
                in_epoch=in_epoch,
                recipe=self.recipe,
                recipe_changes=self.recipe_changes,
                log=self.history,
                **self.entries,
            )
            save_checkpoint(checkpoint, self.path)
        self.schedule.saved()

    def _stop_if_asked(self, where):
        signum, _ = preemption.agree(self.stop_signals.signum, False)
        if signum:
            raise self._stopped(signum, where)

    def _stopped(self, signum, where):
        """The exception that ends a run stopped by `signum` after its state was saved."""
        if distributed.is_initialized():
            torch.distributed.barrier()  # no process exits (which srun --kill-on-bad-exit answers) before the save
        saved = f"{self.path} holds the state" if self.path else "nothing was saved (no --output-dir)"
        message = f"stopped by {preemption.signal_name(signum)} {where}; {saved}."
        if self.requeue and signum == preemption.REQUEUE_SIGNAL:
            if distributed.is_main_process():
                message += " " + preemption.requeue_slurm_job()
        else:
            message += " Run the same command again to continue."
        return preemption.TrainingStopped(message, signum)
