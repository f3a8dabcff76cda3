"""MultiGrain training: a CNN with GeM pooling, cross-entropy plus a margin loss on repeated augmentations.

    torchrun --nproc_per_node=8 train.py --data-path /datasets/imagenet --model resnet50

The defaults are the paper's recipe for 8 processes (global batch 512); see README.md.
"""

import argparse
import datetime
import functools
import os
import time
from collections import namedtuple

import numpy as np
import torch
import torch.utils.data
from torch import nn
from torchvision.transforms.functional import InterpolationMode

import engine
import flags
import presets
import utils
from multigrain.distance_weighted_miner import NEGATIVE_SAMPLING_MODES, DistanceWeightedMiner
from multigrain.images.datasets import (
    ImageFolder,
    RepeatedViews,
    SeededItems,
    SkipBadImages,
    WithIndex,
    collate_skipping_bad,
    collate_views,
)
from multigrain.images.image_io import load_rgb
from multigrain.joint_loss import MultiGrainLoss
from multigrain.margin_loss import MarginLoss
from multigrain.model import build_model, check_model_name
from multigrain.storage.checkpoint import (
    FILE_NAMES,
    LOG_NAMES,
    architecture_name,
    check_num_classes,
    check_output_dir,
    checkpoint_kind,
    describe,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    model_state_dict,
    save_checkpoint,
)
from multigrain.training import distributed, preemption, seeding
from sampler import DecodeOnceBatchSampler, RASampler, SeededBatches

# The flags that change what is trained. A run continues only under the values it was started with, plus
# the global batch size (-b times the number of processes).
RECIPE_FLAGS = (
    "model", "weights", "init_from", "pooling_exponent", "sync_bn",  # the network
    "classif_weight", "margin", "beta_init", "beta_lr", "sampling_cutoff", "nonzero_loss_cutoff",  # the loss
    "negative_sampling", "label_smoothing",
    "ra_sampler", "ra_reps", "epoch_len_factor", "seed",  # the samples
    "auto_augment", "ra_magnitude", "augmix_severity", "color_jitter", "lighting", "train_crop_size",  # augmentation
    "interpolation",
    "opt", "lr", "momentum", "weight_decay", "norm_weight_decay", "clip_grad_norm", "epochs",  # the optimisation
    "lr_scheduler", "lr_steps", "lr_step_size", "lr_gamma", "lr_min", "lr_warmup_epochs", "lr_warmup_method",
    "lr_warmup_decay",
)  # fmt: skip
GLOBAL_BATCH = "global_batch_size"

# The checkpoint a run starts from: a training state to continue (resumed, with the recipe changes that
# --allow-change allowed) or a model to take the weights of.
StartingPoint = namedtuple("StartingPoint", ["path", "checkpoint", "resumed", "recipe_changes"], defaults=[()])


def recipe(args, world_size):
    return {**{flag: getattr(args, flag) for flag in RECIPE_FLAGS}, GLOBAL_BATCH: args.batch_size * world_size}


def stored_recipe(checkpoint):
    """The recipe of a training state; rebuilt from its arguments for states written before `recipe` was."""
    if "recipe" in checkpoint:
        return checkpoint["recipe"]
    stored = checkpoint.get("args") or {}
    defaults = vars(get_args_parser().parse_args(["--data-path", "."]))
    values = {flag: stored.get(flag, defaults[flag]) for flag in RECIPE_FLAGS}
    return {**values, GLOBAL_BATCH: stored.get("batch_size", 0) * stored.get("world_size", 1)}


def flag_names():
    """Each recipe entry as the command line spells it: dest -> "--flag"."""
    names = {GLOBAL_BATCH: "global batch size (-b × processes)"}
    for action in get_args_parser()._actions:
        long_options = [option for option in action.option_strings if option.startswith("--")]
        if long_options and action.dest in RECIPE_FLAGS:
            names[action.dest] = long_options[0]
    return names


def allowed_changes(args):
    """The recipe entries named by --allow-change (flag names without their leading dashes)."""
    by_name = {name.lstrip("-"): dest for dest, name in flag_names().items() if name.startswith("--")}
    by_name["batch-size"] = GLOBAL_BATCH
    unknown = [name for name in args.allow_change if name.lstrip("-") not in by_name]
    if unknown:
        raise ValueError(
            f"--allow-change {' '.join(unknown)}: not a recipe flag; recipe flags: {', '.join(sorted(by_name))}"
        )
    return {by_name[name.lstrip("-")] for name in args.allow_change}


def check_recipe(checkpoint, path, args):
    """Refuses to continue a training state under another recipe than its own, except for the changes
    that --allow-change names. Returns the allowed changes as (entry, stored, given) triples."""
    stored, given = stored_recipe(checkpoint), recipe(args, utils.launch_world_size())
    allowed = allowed_changes(args)
    changes = [(key, stored.get(key), value) for key, value in given.items() if stored.get(key) != value]
    refused = [change for change in changes if change[0] not in allowed]
    if refused:
        names = flag_names()
        lines = "".join(f"\n  {names[key]}: {old!r} → {new!r}" for key, old, new in refused)
        to_allow = " ".join(names[key].lstrip("-") if key != GLOBAL_BATCH else "batch-size" for key, _, _ in refused)
        raise ValueError(
            f"{describe(checkpoint, path)} was trained with another recipe than this command line's:{lines}\n"
            f"To continue it, run its own recipe again. To start a new run, give it a new --output-dir (or pass "
            f"--no-auto-resume to start over in {os.path.dirname(path) or '.'}, replacing its checkpoint). To "
            f"change the recipe of this run deliberately, pass --allow-change {to_allow}"
        )
    return changes


def checkpoint_to_resume(args):
    """--resume, else the checkpoint of --output-dir when there is one (unless --no-auto-resume)."""
    if args.resume or args.test_only:
        return args.resume
    path = os.path.join(args.output_dir, FILE_NAMES["train"]) if args.output_dir else ""
    return path if args.auto_resume and os.path.isfile(path) else ""


@utils.usage_check
def check_args(args):
    """Refuses inconsistent flags, data folders and checkpoints before any process group or worker starts.

    Returns the StartingPoint of the run (None to start from scratch), its checkpoint read once here.
    """
    if args.start_epoch >= args.epochs:
        raise ValueError(f"--start-epoch {args.start_epoch} must be below --epochs {args.epochs}: nothing to train")
    if args.lr_warmup_epochs >= args.epochs:
        raise ValueError(f"--lr-warmup-epochs {args.lr_warmup_epochs} must be below --epochs {args.epochs}")
    main_epochs = args.epochs - args.lr_warmup_epochs
    steps = args.lr_steps
    if args.lr_scheduler == "multisteplr" and (steps != sorted(set(steps)) or steps[-1] >= main_epochs):
        raise ValueError(
            f"--lr-steps of multisteplr must increase and stay below --epochs - --lr-warmup-epochs = {main_epochs} "
            f"(they count epochs from the end of the warm-up), got {' '.join(map(str, steps))}"
        )
    if args.lr_scheduler == "cosineannealinglr" and args.lr_min >= args.lr:
        raise ValueError(f"--lr-min {args.lr_min} of cosineannealinglr must be below --lr {args.lr}")
    if args.sampling_cutoff >= args.nonzero_loss_cutoff:
        raise ValueError(
            f"--sampling-cutoff {args.sampling_cutoff} must be below --nonzero-loss-cutoff {args.nonzero_loss_cutoff}"
        )
    if args.val_crop_size > args.val_resize_size:
        raise ValueError(
            f"--val-crop-size {args.val_crop_size} must be at most --val-resize-size {args.val_resize_size}: "
            "a larger center crop pads the image"
        )
    if args.classif_weight < 1.0 and not args.ra_sampler:
        raise ValueError(
            f"--classif-weight {args.classif_weight} < 1 needs repeated augmentation for the margin loss's "
            "positive pairs: drop --no-ra-sampler, or use --classif-weight 1 for classification only"
        )
    if args.ra_decode_once and not args.ra_sampler:
        raise ValueError("--ra-decode-once decodes each image once for its --ra-reps copies: it needs --ra-sampler")
    if args.classif_weight < 1.0 and args.ra_reps < 2:
        raise ValueError(f"--classif-weight < 1 needs --ra-reps >= 2 to have positive pairs, got {args.ra_reps}")
    if args.classif_weight < 1.0 and args.batch_size < args.ra_reps:
        raise ValueError(
            f"--batch-size {args.batch_size} cannot hold the {args.ra_reps} copies of an image (--ra-reps)"
        )
    if args.weights and args.init_from:
        raise ValueError("--weights and --init-from both give the initial weights: pass one of them")
    check_model_name(args.model)
    if args.requeue and "SLURM_JOB_ID" not in os.environ:
        raise ValueError("--requeue requeues the SLURM job on SIGUSR1, but SLURM_JOB_ID is not set: not a SLURM job")
    for flag in ("resume", "init_from"):
        path = getattr(args, flag)
        if path and not os.path.isfile(path):
            raise ValueError(f"--{flag.replace('_', '-')} {path} is not a file")

    if not args.test_only:
        train_classes = utils.check_image_folder(os.path.join(args.data_path, "train"), "--data-path")
    classes = utils.check_image_folder(os.path.join(args.data_path, "val"), "--data-path")
    if not args.test_only and train_classes != classes:
        raise ValueError(f"train/ and val/ of --data-path {args.data_path} have different class folders")
    if args.test_only:
        if not args.resume:
            return None
        checkpoint = load_checkpoint(args.resume)
        architecture_name(checkpoint, args.resume, args.model)
        check_num_classes(checkpoint, args.resume, classes, f"--data-path {args.data_path}")
        return StartingPoint(args.resume, checkpoint, resumed=False)

    if args.output_dir:
        check_output_dir(args.output_dir, "train")
        utils.check_writable_folder(args.output_dir, "--output-dir")
    resume = checkpoint_to_resume(args)
    if resume:
        checkpoint = load_checkpoint(resume)
        if checkpoint_kind(checkpoint) != "train":
            raise ValueError(
                f"{describe(checkpoint, resume)} is not a training state and cannot be resumed: "
                f"to start a training run from its weights, pass --init-from {resume}"
            )
        architecture_name(checkpoint, resume, args.model)
        if args.start_epoch:
            raise ValueError(f"--start-epoch {args.start_epoch}: a resumed run continues after the checkpoint's epoch")
        check_num_classes(checkpoint, resume, classes, f"--data-path {args.data_path}")
        changes = check_recipe(checkpoint, resume, args)
        in_epoch = checkpoint.get("in_epoch") or {}
        processes = len(in_epoch.get("ranks", ()))
        if processes and processes != utils.launch_world_size():
            raise ValueError(
                f"{describe(checkpoint, resume)} stopped in the middle of an epoch, which continues only with the "
                f"{processes} processes it was started with; this launch has {utils.launch_world_size()}"
            )
        return StartingPoint(resume, checkpoint, resumed=True, recipe_changes=changes)
    if args.init_from:
        checkpoint = load_checkpoint(args.init_from)
        architecture_name(checkpoint, args.init_from, args.model)
        check_num_classes(checkpoint, args.init_from, classes, f"--data-path {args.data_path}")
        return StartingPoint(args.init_from, checkpoint, resumed=False)
    return None


def skipping_bad_images(dataset, args):
    return SkipBadImages(dataset) if args.skip_bad_images else dataset


def load_data(args):
    interpolation = InterpolationMode(args.interpolation)
    val_transform = presets.ClassificationPresetEval(
        crop_size=args.val_crop_size, resize_size=args.val_resize_size, interpolation=interpolation
    )
    dataset_val = ImageFolder(os.path.join(args.data_path, "val"), val_transform, loader=load_rgb)
    # Validation is sharded without padding, so every image is counted exactly once.
    shard = range(distributed.get_rank(), len(dataset_val), distributed.get_world_size())
    shard_val = skipping_bad_images(torch.utils.data.Subset(dataset_val, shard), args)
    if args.test_only:
        return None, None, shard_val, dataset_val.classes

    train_transform = presets.ClassificationPresetTrain(
        crop_size=args.train_crop_size,
        interpolation=interpolation,
        auto_augment_policy=args.auto_augment,
        ra_magnitude=args.ra_magnitude,
        augmix_severity=args.augmix_severity,
        color_jitter=args.color_jitter,
        lighting=args.lighting,
    )
    # Under --ra-decode-once the images are decoded without transform and RepeatedViews augments each copy.
    folder_transform = None if args.ra_decode_once else train_transform
    dataset = ImageFolder(os.path.join(args.data_path, "train"), folder_transform, loader=load_rgb)
    reps = args.ra_reps if args.ra_sampler else 1
    train_sampler = RASampler(len(dataset), reps=reps, seed=args.seed, epoch_len_factor=args.epoch_len_factor)
    dataset = RepeatedViews(dataset, train_transform) if args.ra_decode_once else WithIndex(dataset)
    return skipping_bad_images(SeededItems(dataset), args), train_sampler, shard_val, dataset_val.classes


def build_optimizer(model, criterion, *, opt, lr, momentum, weight_decay, norm_weight_decay=None, beta_lr=1.0):
    """`opt` over the model's parameters (normalisation layers with their own weight decay) and β (learning
    rate lr × beta_lr, no weight decay)."""
    norm_classes = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
    norm_params, other_params = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (norm_params if isinstance(module, norm_classes) else other_params).append(p)
    norm_wd = weight_decay if norm_weight_decay is None else norm_weight_decay
    groups = [
        {"params": other_params, "weight_decay": weight_decay},
        {"params": norm_params, "weight_decay": norm_wd},
        {"params": list(criterion.parameters()), "weight_decay": 0.0, "lr": lr * beta_lr},
    ]
    if opt.startswith("sgd"):
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=opt == "sgd_nesterov")
    if opt == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum, alpha=0.9, eps=0.0316)
    return torch.optim.AdamW(groups, lr=lr)


def build_lr_scheduler(args, optimizer):
    """Stepped once per epoch. The main schedule counts from the end of the warm-up, as in torchvision."""
    main_epochs = args.epochs - args.lr_warmup_epochs
    if args.lr_scheduler == "steplr":
        main = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma)
    elif args.lr_scheduler == "multisteplr":
        main = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.lr_steps, gamma=args.lr_gamma)
    else:
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=main_epochs, eta_min=args.lr_min)
    if args.lr_warmup_epochs == 0:
        return main
    if args.lr_warmup_method == "linear":
        warmup = torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=args.lr_warmup_decay, total_iters=args.lr_warmup_epochs
        )
    else:
        warmup = torch.optim.lr_scheduler.ConstantLR(
            optimizer, factor=args.lr_warmup_decay, total_iters=args.lr_warmup_epochs
        )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[args.lr_warmup_epochs])


def main(args, stop_signals=preemption.STOP_SIGNALS):
    """Trains; on one of `stop_signals`, saves the state and raises preemption.TrainingStopped."""
    start = check_args(args)
    with preemption.StopSignals(stop_signals) as signals:
        return train(args, start, signals)


def train(args, start, stop_signals):
    """The run of main(args) from its StartingPoint; stops with TrainingStopped after a signal that
    stop_signals recorded."""
    utils.init_distributed_mode(args)
    distributed.print_main(args)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
    device = torch.device(args.device)
    amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None

    dataset, train_sampler, dataset_val, classes = load_data(args)
    collate_fn = collate_skipping_bad if args.skip_bad_images else None
    val_loader = torch.utils.data.DataLoader(
        dataset_val,
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_fn,
    )
    evaluate = functools.partial(engine.evaluate, device=device, amp_dtype=amp_dtype, print_freq=args.print_freq)

    if args.test_only:
        if start:
            distributed.print_main(f"Evaluating {describe(start.checkpoint, start.path)}")
            model = model_from_checkpoint(start.checkpoint, start.path, model_name=args.model)
        else:
            model = build_model(
                args.model, weights=args.weights, num_classes=len(classes), pooling_exponent=args.pooling_exponent
            )
        return evaluate(model.to(device), val_loader)

    utils.seed_everything(args.seed)
    if start and not start.resumed:
        distributed.print_main(f"Starting from the weights of {describe(start.checkpoint, start.path)}")
        model = model_from_checkpoint(start.checkpoint, start.path, model_name=args.model, unwhitened=True)
        if float(model.pool.p) != args.pooling_exponent:
            distributed.print_main(f"GeM exponent {float(model.pool.p):.4g} replaced by --pooling-exponent")
        model.pool.set_p(args.pooling_exponent)
    else:
        model = build_model(
            args.model, weights=args.weights, num_classes=len(classes), pooling_exponent=args.pooling_exponent
        )
    if args.sync_bn and args.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)  # convolutions then also give channels-last outputs
    sampling_generator = torch.Generator(device=device)
    criterion = MultiGrainLoss(
        args.classif_weight,
        DistanceWeightedMiner(
            args.sampling_cutoff, args.nonzero_loss_cutoff, mode=args.negative_sampling, generator=sampling_generator
        ),
        MarginLoss(beta_init=args.beta_init, margin=args.margin),
        label_smoothing=args.label_smoothing,
    ).to(device)

    model_without_ddp = model
    if args.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[args.gpu] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)

    optimizer = build_optimizer(
        model_without_ddp,
        criterion,
        opt=args.opt,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        norm_weight_decay=args.norm_weight_decay,
        beta_lr=args.beta_lr,
    )
    lr_scheduler = build_lr_scheduler(args, optimizer)
    scaler = torch.amp.GradScaler(device.type) if args.amp and args.amp_dtype == "float16" else None

    start_epoch = args.start_epoch
    in_epoch = None  # the progress within start_epoch that a mid-epoch checkpoint holds
    history = []  # one record per finished epoch: the checkpoint carries it, the log mirrors it
    recipe_changes = []
    log_path = os.path.join(args.output_dir, LOG_NAMES["train"]) if args.output_dir else None
    if start and start.resumed:
        checkpoint = start.checkpoint
        distributed.print_main(f"Resuming from {describe(checkpoint, start.path)}")
        model_without_ddp.load_state_dict(model_state_dict(checkpoint, start.path))
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = checkpoint["epoch"] + 1
        in_epoch = checkpoint.get("in_epoch")
        history = checkpoint.get("log", [])
        recipe_changes = checkpoint.get("recipe_changes", [])
        for key, old, new in start.recipe_changes:
            distributed.print_main(f"Recipe change allowed by --allow-change: {key} {old!r} -> {new!r}")
            recipe_changes.append({"epoch": start_epoch, "entry": key, "stored": old, "given": new})
        if log_path and distributed.is_main_process():
            # Drops the lines of epochs after the checkpoint, restores any written after it was saved.
            utils.write_json_lines(log_path, history)
    if start and "criterion" in start.checkpoint:
        criterion.load_state_dict(start.checkpoint["criterion"])  # β of the run continued or started from
    del start

    drop_last = len(train_sampler) >= args.batch_size  # equal batch shapes on every rank for the all-gather
    distributed.print_main(
        f"{len(dataset)} training images, {len(train_sampler) * distributed.get_world_size()} samples per epoch "
        f"({len(train_sampler) // args.batch_size if drop_last else 1} iterations of {args.batch_size} per process)"
    )
    distributed.print_main(criterion)
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    if args.ra_decode_once:
        batch_sampler, collate = DecodeOnceBatchSampler(train_sampler, args.batch_size, drop_last), collate_views
    else:
        batch_sampler = torch.utils.data.BatchSampler(train_sampler, args.batch_size, drop_last)
        collate = collate_fn
    steps = len(batch_sampler)
    checkpoint_path = os.path.join(args.output_dir, FILE_NAMES["train"]) if args.output_dir else None
    schedule = preemption.CheckpointSchedule(args.checkpoint_every_minutes, args.checkpoint_every_iters)

    def save_state(epochs_done, progress=None):
        """Rank 0 writes the training state after `epochs_done` + 1 epochs, with the progress within the next."""
        if checkpoint_path and distributed.is_main_process():
            checkpoint = make_checkpoint(
                "train",
                model_without_ddp.state_dict(),
                vars(args),
                criterion=criterion.state_dict(),
                optimizer=optimizer.state_dict(),
                lr_scheduler=lr_scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler is not None else None,
                epoch=epochs_done,
                in_epoch=progress,
                recipe=recipe(args, world_size),
                recipe_changes=recipe_changes,
                log=history,
            )
            save_checkpoint(checkpoint, checkpoint_path)
        schedule.saved()

    def stopped(signum, where):
        """The exception that ends a run stopped by `signum` after its state was saved."""
        if args.distributed:
            torch.distributed.barrier()  # no process exits (which srun --kill-on-bad-exit answers) before the save
        saved = f"{checkpoint_path} holds the state" if checkpoint_path else "nothing was saved (no --output-dir)"
        message = f"stopped by {preemption.signal_name(signum)} {where}; {saved}."
        if args.requeue and signum == preemption.REQUEUE_SIGNAL:
            if distributed.is_main_process():
                message += " " + preemption.requeue_slurm_job()
        else:
            message += " Run the same command again to continue."
        return preemption.TrainingStopped(message, signum)

    def after_step(steps_done, metric_logger):
        """Saves mid-epoch when due or asked to by a signal (then stops): every process agrees on both."""
        if steps_done == steps:
            return False  # the end of the epoch has its own checkpoint
        signum, save = preemption.agree(stop_signals.signum, schedule.due(steps_done))
        if save or signum:
            own = {"random": seeding.random_states(sampling_generator), "meters": metric_logger.state_dict()}
            progress = {"epoch": epoch, "step": steps_done, "steps": steps, "time_s": time.time() - epoch_start}
            save_state(epoch - 1, {**progress, "ranks": distributed.all_gather_object(own)})
        if signum:
            raise stopped(signum, f"in epoch {epoch} after iteration {steps_done} of {steps}")
        return False

    start_time = time.time()
    val_metrics = {}
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.time()
        # Seeding per (seed, epoch, rank) makes a resumed run repeat what the uninterrupted one did.
        utils.seed_everything(args.seed, epoch, rank)
        sampling_generator.manual_seed(int(np.random.SeedSequence([args.seed, epoch]).generate_state(1)[0]))
        train_sampler.set_epoch(epoch)
        resumed, in_epoch = in_epoch, None
        if resumed:
            epoch_start -= resumed["time_s"]
        if resumed and "train_metrics" in resumed:
            train_metrics = resumed["train_metrics"]  # trained, then stopped before its validation
        else:
            first_step = resumed["step"] if resumed else 0
            metric_logger = utils.MetricLogger()
            if resumed:
                seeding.set_random_states(resumed["ranks"][rank]["random"], sampling_generator)
                metric_logger.load_state_dict(resumed["ranks"][rank]["meters"])
            train_loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=SeededBatches(batch_sampler, (args.seed, epoch, rank), first_step),
                collate_fn=collate,
                num_workers=args.workers,
                pin_memory=device.type == "cuda",
                worker_init_fn=preemption.ignore_stop_signals,
                generator=torch.Generator().manual_seed(args.seed),  # leaves the global stream alone
            )
            try:
                train_metrics = engine.train_one_epoch(
                    model,
                    criterion,
                    optimizer,
                    train_loader,
                    device,
                    epoch,
                    scaler=scaler,
                    amp_dtype=amp_dtype,
                    clip_grad_norm=args.clip_grad_norm,
                    print_freq=args.print_freq,
                    first_step=first_step,
                    metric_logger=metric_logger,
                    after_step=after_step,
                )
            except FloatingPointError as e:
                saved = checkpoint_path and os.path.isfile(checkpoint_path)
                kept = f"the last good checkpoint is {checkpoint_path}" if saved else "no checkpoint was saved"
                raise FloatingPointError(f"{e}; {kept}") from None
            lr_scheduler.step()
            if args.distributed:
                # Each rank's last forward updated its own BatchNorm statistics: evaluate rank 0's (the saved) model.
                for buffer in model_without_ddp.buffers():
                    torch.distributed.broadcast(buffer, src=0)
            # Saved before the validation, so that a failing validation does not lose the epoch's training.
            progress = {"epoch": epoch, "step": steps, "steps": steps, "time_s": time.time() - epoch_start}
            save_state(epoch - 1, {**progress, "train_metrics": train_metrics})
            signum, _ = preemption.agree(stop_signals.signum, False)
            if signum:
                raise stopped(signum, f"after the training of epoch {epoch}, before its validation")
        val_metrics = evaluate(model_without_ddp, val_loader)
        record = {"epoch": epoch, **train_metrics, **{f"val_{k}": v for k, v in val_metrics.items()}}
        record["beta"] = criterion.margin_loss.beta.item()
        record["epoch_time_s"] = time.time() - epoch_start
        history.append(record)
        save_state(epoch)
        if log_path and distributed.is_main_process():
            utils.append_json_line(log_path, record)
        signum, _ = preemption.agree(stop_signals.signum, False)
        if signum and epoch + 1 < args.epochs:
            raise stopped(signum, f"after epoch {epoch}")
    total_time = datetime.timedelta(seconds=int(time.time() - start_time))
    distributed.print_main(f"Training time {total_time}")
    if val_metrics:
        distributed.print_main(
            f"Final (epoch {args.epochs - 1}): val Acc@1 {val_metrics['acc1']:.2f}  Acc@5 {val_metrics['acc5']:.2f}  "
            f"beta {criterion.margin_loss.beta.item():.4f}"
        )
    return val_metrics


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(
        description="MultiGrain training (classification + instance margin loss)",
        add_help=add_help,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-path", default="/datasets01/imagenet_full_size/061417/", help="folder with train/ and val/ ImageFolders"
    )
    parser.add_argument(
        "--model",
        default="resnet50",
        help="torchvision model name (ResNet, ResNeXt, Wide-ResNet, RegNet, EfficientNet), timm:NAME for a timm CNN "
        "with a global pooling + Linear head, or senet154 / pnasnet5large / nasnetamobile (appendix E)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="weights of the trunk: torchvision weights name (e.g. ResNet50_Weights.IMAGENET1K_V1), or for timm "
        "models a weights file (safetensors or state_dict) or a timm pretrained tag found in its cache",
    )
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument(
        "-b",
        "--batch-size",
        default=64,
        type=flags.int_in(1),
        help="images per process; the global batch is this times the number of processes",
    )
    parser.add_argument("--epochs", default=120, type=flags.int_in(1), help="number of epochs")
    parser.add_argument("-j", "--workers", default=8, type=flags.int_in(0), help="data loading workers per process")
    parser.add_argument("--opt", default="sgd", choices=["sgd", "sgd_nesterov", "rmsprop", "adamw"], help="optimizer")
    parser.add_argument(
        "--lr",
        default=0.2,
        type=flags.float_in(0, low_open=True),
        help="learning rate (the paper: 0.2 for a global batch of 512)",
    )
    parser.add_argument("--momentum", default=0.9, type=flags.float_in(0, 1, high_open=True), help="momentum")
    parser.add_argument(
        "--wd", "--weight-decay", default=1e-4, type=flags.float_in(0), dest="weight_decay", help="weight decay"
    )
    parser.add_argument(
        "--norm-weight-decay",
        default=None,
        type=flags.float_in(0),
        help="weight decay of normalization layers (default: --wd)",
    )
    parser.add_argument(
        "--label-smoothing",
        default=0.0,
        type=flags.float_in(0, 1, high_open=True),
        help="label smoothing of the cross-entropy",
    )
    parser.add_argument(
        "--lr-scheduler",
        default="steplr",
        choices=["steplr", "multisteplr", "cosineannealinglr"],
        help="learning rate schedule, stepped every epoch",
    )
    parser.add_argument(
        "--lr-steps", default=[30, 60, 90], nargs="+", type=flags.int_in(1), help="epochs of the multisteplr decays"
    )
    parser.add_argument(
        "--lr-step-size", default=30, type=flags.int_in(1), help="period of the steplr decays, in epochs"
    )
    parser.add_argument(
        "--lr-gamma", default=0.1, type=flags.float_in(0, low_open=True), help="decay factor of steplr / multisteplr"
    )
    parser.add_argument(
        "--lr-min", default=0.0, type=flags.float_in(0), help="final learning rate of cosineannealinglr"
    )
    parser.add_argument("--lr-warmup-epochs", default=0, type=flags.int_in(0), help="warm-up epochs (the paper: none)")
    parser.add_argument("--lr-warmup-method", default="linear", choices=["linear", "constant"], help="warm-up shape")
    parser.add_argument(
        "--lr-warmup-decay",
        default=0.01,
        type=flags.float_in(0, 1, low_open=True),
        help="learning rate factor at the start of the warm-up",
    )
    parser.add_argument("--print-freq", default=10, type=flags.int_in(1), help="print every this many iterations")
    parser.add_argument("--output-dir", default=".", help="where checkpoint.pth and log.jsonl are written")
    parser.add_argument(
        "--resume",
        default="",
        help="training state (checkpoint.pth of train.py) to continue; with --test-only: any model",
    )
    parser.add_argument(
        "--init-from",
        default="",
        help="start a new run (epoch 0, new optimizer) from the weights and beta of any model checkpoint: train.py, "
        "finetune_p.py, whiten.py (its whitening removed) or published",
    )
    parser.add_argument(
        "--allow-change",
        nargs="+",
        default=[],
        metavar="FLAG",
        help="continue a run although these recipe flags (names without --, e.g. epochs) differ from the stored ones",
    )
    parser.add_argument(
        "--auto-resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="resume from <output-dir>/checkpoint.pth when it exists",
    )
    parser.add_argument(
        "--checkpoint-every-minutes",
        default=30.0,
        type=flags.float_in(0, low_open=True),
        help="also write checkpoint.pth within an epoch when this many minutes passed since the last one "
        "(it is always written at the end of an epoch)",
    )
    parser.add_argument(
        "--checkpoint-every-iters",
        default=None,
        type=flags.int_in(1),
        help="also write checkpoint.pth within an epoch every this many iterations",
    )
    parser.add_argument(
        "--requeue",
        action="store_true",
        help="under SLURM, requeue the job (scontrol requeue) after the checkpoint written on SIGUSR1",
    )
    parser.add_argument(
        "--skip-bad-images", action="store_true", help="log and skip images that cannot be decoded instead of stopping"
    )
    parser.add_argument(
        "--start-epoch", default=0, type=flags.int_in(0), help="first epoch of a run that resumes no checkpoint"
    )
    parser.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm across processes")
    parser.add_argument("--test-only", action="store_true", help="only evaluate (the model of --resume if given)")
    parser.add_argument(
        "--auto-augment",
        default=None,
        choices=presets.AUTO_AUGMENT_POLICIES,
        help="augmentation policy replacing colour jitter and lighting (the paper's variant: autoaugment)",
    )
    parser.add_argument("--ra-magnitude", default=9, type=flags.int_in(0, 30), help="magnitude of --auto-augment ra")
    parser.add_argument(
        "--augmix-severity", default=3, type=flags.int_in(1, 10), help="severity of --auto-augment augmix"
    )
    parser.add_argument(
        "--color-jitter",
        default=0.3,
        type=flags.float_in(0),
        help="brightness, contrast and saturation jitter of the full augmentation",
    )
    parser.add_argument(
        "--lighting", default=0.1, type=flags.float_in(0), help="std of the PCA lighting noise of the full augmentation"
    )
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision")
    parser.add_argument(
        "--amp-dtype",
        default="float16",
        choices=["float16", "bfloat16"],
        help="autocast dtype of --amp (float16 uses a gradient scaler)",
    )
    parser.add_argument(
        "--clip-grad-norm",
        default=None,
        type=flags.float_in(0, low_open=True),
        help="maximum gradient norm of the model's parameters",
    )
    parser.add_argument(
        "--ra-sampler",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="repeated augmentation: every image --ra-reps times per batch",
    )
    parser.add_argument("--ra-reps", default=3, type=flags.int_in(1), help="copies of each image under --ra-sampler")
    parser.add_argument(
        "--ra-decode-once",
        action="store_true",
        help="decode each image once and augment its --ra-reps copies from it "
        "(the copies of an image then sit on one process)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last memory format (faster convolutions with --amp on tensor-core GPUs)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    parser.add_argument(
        "--epoch-len-factor",
        default=2.0,
        type=flags.float_in(0, low_open=True),
        help="samples per epoch / training images, copies included: an epoch has ceil(factor * N / processes) "
        "samples per process, i.e. about factor * N / reps distinct images (the paper: 2.0, 5005 iterations "
        "of 512 on ImageNet)",
    )
    parser.add_argument(
        "--val-resize-size", default=256, type=flags.int_in(1), help="validation resize of the shorter side"
    )
    parser.add_argument("--val-crop-size", default=224, type=flags.int_in(1), help="validation center crop")
    parser.add_argument(
        "--train-crop-size", default=224, type=flags.int_in(1), help="training random-resized-crop size"
    )
    parser.add_argument(
        "--interpolation", default="bilinear", choices=["nearest", "bilinear", "bicubic"], help="resize interpolation"
    )
    parser.add_argument("--seed", default=0, type=flags.seed, help="random seed")
    parser.add_argument(
        "--classif-weight",
        "--classify-weight",
        default=0.5,
        type=flags.float_in(0, 1),
        dest="classif_weight",
        help="λ: loss = λ·CE + (1−λ)·margin loss; 1 is plain classification",
    )
    parser.add_argument(
        "--pooling-exponent",
        default=3.0,
        type=flags.float_in(0, low_open=True, allow_inf=True),
        help="GeM exponent p (1: average pooling, inf: max pooling)",
    )
    parser.add_argument(
        "--beta-init", default=1.2, type=flags.float_in(0, low_open=True), help="initial margin-loss boundary beta"
    )
    parser.add_argument(
        "--beta-lr", default=1.0, type=flags.float_in(0), help="beta's learning rate as a multiple of --lr"
    )
    parser.add_argument("--margin", default=0.2, type=flags.float_in(0), help="margin alpha of the margin loss")
    parser.add_argument(
        "--sampling-cutoff",
        default=0.5,
        type=flags.float_in(0, 2, low_open=True),
        help="distances are clamped below at this value for the sampling weights",
    )
    parser.add_argument(
        "--nonzero-loss-cutoff",
        default=1.4,
        type=flags.float_in(0, 2, low_open=True),
        help="negatives are drawn among the ones closer than this",
    )
    parser.add_argument(
        "--negative-sampling",
        default="reference",
        choices=NEGATIVE_SAMPLING_MODES,
        help="reference: the published code's computation (global max, float32 underflow, uniform fallback); "
        "exact: the paper's distribution",
    )
    parser.add_argument("--dist-url", default="env://", help="url of the process group set-up")
    return parser


if __name__ == "__main__":
    utils.run_script(main, get_args_parser())
