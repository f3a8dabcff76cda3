"""MultiGrain training: a CNN with GeM pooling, cross-entropy plus a margin loss on repeated augmentations.

    torchrun --nproc_per_node=8 train.py --data-path /datasets/imagenet --model resnet50

The defaults are the paper's recipe for 8 processes (global batch 512); see README.md. `--help` lists the flags in
groups, the recipe's first, in its order: a run continues only under the values of its recipe.
"""

import argparse
import copy
import datetime
import os
import time
from collections import namedtuple

import torch
import torch.utils.data
from torch import nn

import engine
import flags
import presets
import training_data
import utils
from multigrain.distance_weighted_miner import NEGATIVE_SAMPLING_MODES, DistanceWeightedMiner
from multigrain.images.datasets import (
    collate_skipping_bad,
    collate_views,
)
from multigrain.joint_loss import MultiGrainLoss
from multigrain.margin_loss import MarginLoss
from multigrain.model import build_model, check_model_name
from multigrain.storage.checkpoint import FILE_NAMES, check_output_dir
from multigrain.storage.model_files import open_model
from multigrain.training import distributed, preemption, seeding
from multigrain.training.optimizer import build_optimizer
from multigrain.training.recipe import Recipe
from multigrain.training.training_state import TrainingState, check_resumable
from sampler import DecodeOnceBatchSampler, SeededBatches

# The checkpoint a run starts from (a ModelFile): a training state to continue (resumed, with the recipe changes
# that --allow-change allowed) or a model to take the weights of.
StartingPoint = namedtuple("StartingPoint", ["model_file", "resumed", "recipe_changes"])


def recipe():
    """The flags of the recipe groups of get_args_parser, in their order; -b enters the recipe as the global batch."""
    parser = get_args_parser()
    entries = {
        action.dest: next(option for option in action.option_strings if option.startswith("--"))
        for group in parser.flag_groups
        if group.recipe
        for action in group.actions
        if action.dest != "batch_size"
    }
    return Recipe(entries, vars(parser.parse_args([])))


def checkpoint_to_resume(args):
    """--resume, else the checkpoint of --output-dir when there is one (unless --no-auto-resume)."""
    if args.resume:
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
    recipe().check_trainable(args)
    if args.val_crop_size > args.val_resize_size:
        raise ValueError(
            f"--val-crop-size {args.val_crop_size} must be at most --val-resize-size {args.val_resize_size}: "
            "a larger center crop pads the image"
        )
    if args.ra_decode_once and not args.ra_sampler:
        raise ValueError("--ra-decode-once decodes each image once for its --ra-reps copies: it needs --ra-sampler")
    if args.classif_weight < 1.0 and args.batch_size < args.ra_reps:
        raise ValueError(
            f"--batch-size {args.batch_size} cannot hold the {args.ra_reps} copies of an image (--ra-reps)"
        )
    if args.freeze_bn_stats and not (args.weights or args.init_from):
        raise ValueError(
            "--freeze-bn-stats keeps the BatchNorm statistics of trained weights: start from --init-from or --weights"
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

    collection = training_data.check_collection(args) if args.data_kind == "collection" else None
    if collection is None:
        for flag in ("data_root", "val_list", "val_fraction", "val_input_size"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} is a flag of --data-kind collection")
        if not args.test_only and os.path.isdir(args.data_path) and not os.path.isdir(f"{args.data_path}/train"):
            raise ValueError(
                f"--data-path {args.data_path} has no train/ folder of classes: to train on images without classes, "
                "pass --data-kind collection --classif-weight 0"
            )
        if not args.test_only:
            train_classes = utils.check_image_folder(os.path.join(args.data_path, "train"), "--data-path")
        classes = utils.check_image_folder(os.path.join(args.data_path, "val"), "--data-path")
        if not args.test_only and train_classes != classes:
            raise ValueError(f"train/ and val/ of --data-path {args.data_path} have different class folders")
    if args.test_only:
        path, resumed = args.resume, False
    else:
        if args.output_dir:
            check_output_dir(args.output_dir, "train")
            utils.check_writable_folder(args.output_dir, "--output-dir")
        resume = checkpoint_to_resume(args)
        path, resumed = resume or args.init_from, bool(resume)
    if not path:
        return None
    model_file = open_model(path, model_name=args.model)
    if resumed:
        check_resumable(model_file.checkpoint, path, utils.launch_world_size())
    if resumed and args.start_epoch:
        raise ValueError(f"--start-epoch {args.start_epoch}: a resumed run continues after the checkpoint's epoch")
    if collection is None:
        model_file.check_num_classes(len(classes), f"--data-path {args.data_path}")
    elif resumed:
        collection.check_unchanged(model_file.checkpoint.get("collection"), path)
    changes = recipe().check(model_file.checkpoint, path, args, utils.launch_world_size()) if resumed else ()
    return StartingPoint(model_file, resumed, changes)


def new_model(args, classes):
    """A model of --model on --weights (or random weights) classifying `classes`; for a collection (classes None) with
    the classifier of --weights, or none (0 classes) without them."""
    num_classes = len(classes) if classes is not None else (None if args.weights else 0)
    return build_model(
        args.model, weights=args.weights, num_classes=num_classes, pooling_exponent=args.pooling_exponent
    )


def checkpoint_entries(args, model, classes, collection):
    """The classifier's origin (unless λ > 0, kept as it started: from --init-from, --weights, or none), its class
    names (those of --data-path, else of the starting point) and a collection's fingerprint, in the training state."""
    trained = args.classif_weight > 0
    kept_from = None if trained else args.init_from or args.weights or None
    classifier = {"classes": model.classifier.out_features, "trained": trained, "kept_from": kept_from}
    class_names = list(classes) if classes is not None else model.class_names
    entries = {"classifier": classifier, **({"class_names": class_names} if class_names else {})}
    return {**entries, **({"collection": collection.fingerprint()} if collection else {})}


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
    """The run of main(args) from its StartingPoint; stops with TrainingStopped after a signal of stop_signals."""
    utils.init_distributed_mode(args)
    distributed.print_main(args)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
    device = torch.device(args.device)
    amp_dtype = flags.amp_dtype(args)

    if args.data_kind == "collection":
        dataset, train_sampler, photometric, dataset_val, collection = training_data.load_collection(args)
        classes = None
    else:
        dataset, train_sampler, photometric, dataset_val, classes = training_data.load_data(args)
        collection = None
    validate = training_data.validation(args, dataset_val, device, amp_dtype)

    if args.test_only:
        if start:
            distributed.print_main(f"Evaluating {start.model_file.description}")
            model = start.model_file.model()
        else:
            model = new_model(args, classes)
        return validate(model.to(device))

    seeding.seed_everything(args.seed)
    init_from = start.model_file if start and not start.resumed else None
    if init_from:
        distributed.print_main(f"Starting from the weights of {init_from.description}")
        if init_from.p != args.pooling_exponent:
            distributed.print_main(f"GeM exponent {init_from.p:.4g} replaced by --pooling-exponent")
    if start:  # a continued run's model has the shape of its state (a collection's classifier: that of its start)
        model = start.model_file.model(unwhitened=True, pooling_exponent=args.pooling_exponent)
    else:
        model = new_model(args, classes)
    if args.classif_weight == 0:
        model.classifier.requires_grad_(False)  # no cross-entropy: the classifier stays as the run starts it
    if args.sync_bn and args.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if args.freeze_bn_stats:  # the running statistics stay those the run starts with
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0
    model.to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.channels_last:
        model.to(memory_format=memory_format)  # convolutions then also give channels-last outputs
    if photometric is not None:
        photometric = copy.deepcopy(photometric).to(device)  # the training step's; the workers draw on the CPU
    sampling_generator = torch.Generator(device=device)
    criterion = MultiGrainLoss(
        args.classif_weight,
        DistanceWeightedMiner(
            args.sampling_cutoff, args.nonzero_loss_cutoff, mode=args.negative_sampling, generator=sampling_generator
        ),
        MarginLoss(beta_init=args.beta_init, margin=args.margin),
        label_smoothing=args.label_smoothing,
    ).to(device)
    if init_from and "criterion" in init_from.checkpoint:
        criterion.load_state_dict(init_from.checkpoint["criterion"])  # the β of the run started from

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

    state = TrainingState(
        args.output_dir, vars(args), recipe().of(args, distributed.get_world_size()), model=model_without_ddp,
        criterion=criterion, optimizer=optimizer, lr_scheduler=lr_scheduler, scaler=scaler, requeue=args.requeue,
        generator=sampling_generator, seed=args.seed, epochs=args.epochs, stop_signals=stop_signals,
        schedule=preemption.CheckpointSchedule(args.checkpoint_every_minutes, args.checkpoint_every_iters),
        extra=checkpoint_entries(args, model_without_ddp, classes, collection),
    )  # fmt: skip
    if collection and args.output_dir and distributed.is_main_process():
        collection.write_lists(args.output_dir)
    start_epoch = args.start_epoch
    if start and start.resumed:
        start_epoch = state.restore(start.model_file.checkpoint, start.model_file.path, start.recipe_changes)

    drop_last = len(train_sampler) >= args.batch_size  # equal batch shapes on every rank for the all-gather
    distributed.print_main(
        f"{len(dataset)} training images, {len(train_sampler) * distributed.get_world_size()} samples per epoch "
        f"({len(train_sampler) // args.batch_size if drop_last else 1} iterations of {args.batch_size} per process)"
    )
    distributed.print_main(criterion)
    if args.ra_decode_once:
        batch_sampler, collate = DecodeOnceBatchSampler(train_sampler, args.batch_size, drop_last), collate_views
    else:
        batch_sampler = torch.utils.data.BatchSampler(train_sampler, args.batch_size, drop_last)
        collate = collate_skipping_bad if args.skip_bad_images else None

    start_time = time.time()
    val_metrics = {}
    for epoch in range(start_epoch, args.epochs):
        train_sampler.set_epoch(epoch)
        metric_logger = utils.MetricLogger()
        first_step, train_metrics = state.begin_epoch(epoch, len(batch_sampler), metric_logger)
        if train_metrics is None:  # else the epoch was trained before a stop, and only its validation is left
            train_loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=SeededBatches(batch_sampler, (args.seed, epoch, distributed.get_rank()), first_step),
                collate_fn=collate,
                num_workers=args.workers,
                pin_memory=device.type == "cuda",
                worker_init_fn=preemption.ignore_stop_signals,
                generator=torch.Generator().manual_seed(args.seed),  # leaves the global stream alone
            )
            try:
                train_metrics = engine.train_one_epoch(
                    model, criterion, optimizer, train_loader, device, epoch, scaler=scaler, amp_dtype=amp_dtype,
                    clip_grad_norm=args.clip_grad_norm, print_freq=args.print_freq, first_step=first_step,
                    metric_logger=metric_logger, after_step=state.after_step, photometric=photometric,
                    memory_format=memory_format,
                )  # fmt: skip
            except FloatingPointError as e:
                raise FloatingPointError(f"{e}; {state.last_checkpoint()}") from None
            lr_scheduler.step()
            if args.distributed:
                # Each rank's last forward updated its own BatchNorm statistics: evaluate rank 0's (the saved) model.
                for buffer in model_without_ddp.buffers():
                    torch.distributed.broadcast(buffer, src=0)
            state.end_of_training(train_metrics)
        val_metrics = validate(model_without_ddp)
        record = {"epoch": epoch, **train_metrics, **{f"val_{k}": v for k, v in val_metrics.items()}}
        best = "val_muAP" if collection else "val_acc1"  # the best epoch so far is marked
        record["val_best"] = best in record and all(record[best] > earlier[best] for earlier in state.history)
        state.end_of_epoch({**record, "beta": criterion.margin_loss.beta.item()})
    total_time = datetime.timedelta(seconds=int(time.time() - start_time))
    distributed.print_main(f"Training time {total_time}")
    if val_metrics:
        scores = ("Acc@1", "acc1"), ("Acc@5", "acc5")
        if collection:
            scores = ("μAP", "muAP"), ("recall@P90", "recall@P90")
        distributed.print_main(
            f"Final (epoch {args.epochs - 1}): val {scores[0][0]} {val_metrics[scores[0][1]]:.2f}  "
            f"{scores[1][0]} {val_metrics[scores[1][1]]:.2f}  beta {criterion.margin_loss.beta.item():.4f}"
        )
    return val_metrics


def get_args_parser(add_help=True):
    parser = flags.script_parser(
        "MultiGrain training (classification + instance margin loss). The flags of the recipe groups are what is "
        "trained: a run continues only under the values it was started with (see --allow-change).",
        add_help,
    )
    group = flags.FlagGroup(
        parser, "recipe: the network", "a CNN trunk, GeM pooling (p = 1: average, inf: max)", recipe=True
    )
    flags.add_model(
        group,
        default="resnet50",
        help="torchvision model name (ResNet, ResNeXt, Wide-ResNet, RegNet, EfficientNet), timm:NAME for a timm CNN "
        "with a global pooling + Linear head, or senet154 / pnasnet5large / nasnetamobile (appendix E)",
    )
    group.add_argument(
        "--weights", default=None, help="trunk weights: a torchvision weights name; for timm, a file or a cached tag"
    )
    group.add_argument(
        "--init-from", default="", help="start a new run (epoch 0) from the weights and β of any model checkpoint"
    )
    flags.add_pooling_exponent(group, default=3.0, help="GeM exponent p (1: average pooling, inf: max pooling)")
    group.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm across processes")
    group.add_argument(
        "--freeze-bn-stats",
        action="store_true",
        help="keep the BatchNorm running statistics of --init-from / --weights (fine-tuning under strong augmentation)",
    )

    group = flags.FlagGroup(
        parser, "recipe: the loss", "λ·CE + (1 − λ)·margin loss (boundary β, margin α)", recipe=True
    )
    group.add_argument(
        "--classif-weight",
        "--classify-weight",
        default=0.5,
        type=flags.float_in(0, 1),
        dest="classif_weight",
        help="λ: loss = λ·CE + (1−λ)·margin loss; 1 is plain classification",
    )
    group.add_argument("--margin", default=0.2, type=flags.float_in(0), help="margin α of the margin loss")
    group.add_argument("--beta-init", default=1.2, type=flags.float_in(0, low_open=True), help="initial β")
    group.add_argument("--beta-lr", default=1.0, type=flags.float_in(0), help="β's learning rate as a multiple of --lr")
    group.add_argument(
        "--sampling-cutoff",
        default=0.5,
        type=flags.float_in(0, 2, low_open=True),
        help="distances are clamped below at this value for the sampling weights",
    )
    group.add_argument(
        "--nonzero-loss-cutoff",
        default=1.4,
        type=flags.float_in(0, 2, low_open=True),
        help="negatives are drawn among the ones closer than this",
    )
    group.add_argument(
        "--negative-sampling",
        default="reference",
        choices=NEGATIVE_SAMPLING_MODES,
        help="reference: the published code's computation; exact: the paper's distribution",
    )
    group.add_argument(
        "--label-smoothing", default=0.0, type=flags.float_in(0, 1, high_open=True), help="label smoothing of the CE"
    )

    group = flags.FlagGroup(parser, "recipe: the samples", "-b enters the recipe as the global batch", recipe=True)
    flags.add_batch_size(
        group, default=64, help="images per process; the global batch is this times the number of processes"
    )
    group.add_argument(
        "--ra-sampler", action=argparse.BooleanOptionalAction, default=True, help="each image --ra-reps times per batch"
    )
    group.add_argument("--ra-reps", default=3, type=flags.int_in(1), help="copies of each image under --ra-sampler")
    group.add_argument(
        "--epoch-len-factor",
        default=2.0,
        type=flags.float_in(0, low_open=True),
        help="samples per epoch / training images, copies included (the paper: 2.0, 5005 iterations of 512)",
    )
    flags.add_seed(group, "random seed")
    group.add_argument(
        "--data-kind",
        default="imagefolder",
        choices=["imagefolder", "collection"],
        help="imagefolder: --data-path holds train/ and val/ class folders; collection: images without classes, "
        "--data-path a folder (searched recursively) or a list file (see --data-root), for --classif-weight 0",
    )

    group = flags.FlagGroup(
        parser, "recipe: the augmentation", "paper variant: --auto-augment autoaugment", recipe=True
    )
    group.add_argument(
        "--augmentation",
        default="full",
        choices=["full", "copy-detection"],
        help="full: the paper's (crop, flip, colour jitter, lighting); copy-detection: DISC21-like edits (strong "
        "crops, flips, rotations, blur, JPEG, colour, text, emoji-like shapes, pastes with other training images)",
    )
    group.add_argument(
        "--auto-augment",
        default=None,
        choices=presets.AUTO_AUGMENT_POLICIES,
        help="a policy replacing colour jitter and lighting (the paper's variant: autoaugment); policies need PIL "
        "images, so the whole augmentation then runs in the loader's workers",
    )
    group.add_argument("--ra-magnitude", default=9, type=flags.int_in(0, 30), help="magnitude of --auto-augment ra")
    group.add_argument(
        "--augmix-severity", default=3, type=flags.int_in(1, 10), help="severity of --auto-augment augmix"
    )
    group.add_argument(
        "--color-jitter",
        default=0.3,
        type=flags.float_in(0),
        help="brightness, contrast and saturation jitter of the full augmentation, whose photometric half (jitter, "
        "lighting, normalisation) runs on the batch on --device while the workers decode, crop and flip",
    )
    group.add_argument(
        "--lighting",
        default=0.1,
        type=flags.float_in(0),
        help="std of the PCA lighting noise of the full augmentation (on --device, see --color-jitter)",
    )
    group.add_argument("--train-crop-size", default=224, type=flags.int_in(1), help="training random-resized-crop size")
    flags.add_interpolation(group)

    group = flags.FlagGroup(parser, "recipe: the optimisation", recipe=True)
    group.add_argument("--opt", default="sgd", choices=["sgd", "sgd_nesterov", "rmsprop", "adamw"], help="optimizer")
    flags.add_lr(group, default=0.2, help="learning rate (the paper: 0.2 for a global batch of 512)")
    flags.add_momentum(group)
    group.add_argument(
        "--wd", "--weight-decay", default=1e-4, type=flags.float_in(0), dest="weight_decay", help="weight decay"
    )
    group.add_argument(
        "--norm-weight-decay", default=None, type=flags.float_in(0), help="weight decay of norm layers (None: --wd)"
    )
    group.add_argument(
        "--clip-grad-norm", default=None, type=flags.float_in(0, low_open=True), help="maximum gradient norm"
    )
    group.add_argument("--epochs", default=120, type=flags.int_in(1), help="number of epochs")
    group.add_argument(
        "--lr-scheduler",
        default="steplr",
        choices=["steplr", "multisteplr", "cosineannealinglr"],
        help="stepped per epoch; steplr drops at 30/60/90, the published code at 31/61/91 (see --lr-steps)",
    )
    group.add_argument(
        "--lr-steps", default=[30, 60, 90], nargs="+", type=flags.int_in(1), help="drops (published code: 31 61 91)"
    )
    group.add_argument("--lr-step-size", default=30, type=flags.int_in(1), help="period of the steplr drops")
    group.add_argument(
        "--lr-gamma", default=0.1, type=flags.float_in(0, low_open=True), help="factor of each steplr/multisteplr drop"
    )
    group.add_argument("--lr-min", default=0.0, type=flags.float_in(0), help="final learning rate of cosineannealinglr")
    group.add_argument("--lr-warmup-epochs", default=0, type=flags.int_in(0), help="warm-up epochs (the paper: 0)")
    group.add_argument("--lr-warmup-method", default="linear", choices=["linear", "constant"], help="warm-up shape")
    group.add_argument(
        "--lr-warmup-decay", default=0.01, type=flags.float_in(0, 1, low_open=True), help="lr factor at warm-up start"
    )

    group = flags.FlagGroup(parser, "validation")
    group.add_argument(
        "--val-resize-size", default=256, type=flags.int_in(1), help="validation resize of the shorter side"
    )
    group.add_argument("--val-crop-size", default=224, type=flags.int_in(1), help="validation center crop")
    group.add_argument("--test-only", action="store_true", help="only evaluate (the model of --resume if given)")
    group.add_argument(
        "--val-fraction",
        default=None,
        type=flags.float_in(0, 1, high_open=True),
        help="collection: the fraction of its images held out for validation, never trained on "
        f"({training_data.VAL_FRACTION} unless --val-list; 0: no validation)",
    )
    group.add_argument(
        "--val-list", default=None, help="collection: a list file of its images to hold out for validation, one a line"
    )
    group.add_argument(
        "--val-input-size",
        default=None,
        type=flags.int_in(1),
        help="collection: the largest side of the validation images (default: --train-crop-size)",
    )

    group = flags.FlagGroup(parser, "running and checkpointing")
    flags.add_data_path(group)
    group.add_argument(
        "--data-root", default=None, help="collection: the folder the paths of a list file are relative to"
    )
    flags.add_output_dir(group, "where checkpoint.pth and log.jsonl are written")
    group.add_argument(
        "--resume", default="", help="training state (checkpoint.pth) to continue; with --test-only: any model"
    )
    group.add_argument(
        "--auto-resume", action=argparse.BooleanOptionalAction, default=True, help="resume <output-dir>/checkpoint.pth"
    )
    group.add_argument(
        "--allow-change", nargs="+", default=[], metavar="FLAG", help="recipe flags (without --) to change, e.g. epochs"
    )
    group.add_argument(
        "--checkpoint-every-minutes",
        default=30.0,
        type=flags.float_in(0, low_open=True),
        help="also write checkpoint.pth within an epoch this many minutes after the last one (always at its end)",
    )
    group.add_argument(
        "--checkpoint-every-iters", default=None, type=flags.int_in(1), help="also every this many iterations"
    )
    group.add_argument(
        "--requeue", action="store_true", help="under SLURM, requeue the job after the checkpoint written on SIGUSR1"
    )
    group.add_argument(
        "--start-epoch", default=0, type=flags.int_in(0), help="first epoch of a run that resumes no checkpoint"
    )
    group.add_argument(
        "--skip-bad-images", action="store_true", help="log and skip images that cannot be decoded instead of stopping"
    )
    flags.add_print_freq(group, default=10)
    flags.add_device(group)
    flags.add_dist_url(group)

    group = flags.FlagGroup(parser, "speed")
    flags.add_amp(group, training=True)
    flags.add_channels_last(group)
    flags.add_compile(group, help="torch.compile the model for training")
    group.add_argument(
        "--ra-decode-once", action="store_true", help="decode each image once for its --ra-reps copies (on one process)"
    )
    flags.add_workers(group)
    return parser


if __name__ == "__main__":
    utils.run_script(main, get_args_parser())
