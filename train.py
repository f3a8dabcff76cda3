"""MultiGrain training: a CNN with GeM pooling, cross-entropy plus a margin loss on repeated augmentations.

    torchrun --nproc_per_node=8 train.py --data-path /datasets/imagenet --model resnet50

The defaults are the paper's recipe for 8 processes (global batch 512); see README.md.
"""

import argparse
import datetime
import math
import os
import time

import numpy as np
import torch
import torch.utils.data
import torchvision
from torch import nn
from torchvision.transforms.functional import InterpolationMode

from multigrain import distributed
from multigrain.checkpoint import load_checkpoint, load_model, model_state_dict
from multigrain.datasets import RepeatedViews, SkipBadImages, WithIndex, collate_skipping_bad, collate_views
from multigrain.distance_weighted_miner import NEGATIVE_SAMPLING_MODES, DistanceWeightedMiner
from multigrain.image_io import load_rgb
from multigrain.joint_loss import MultiGrainLoss
from multigrain.margin_loss import MarginLoss
from multigrain.model import build_model

import presets
import utils
from sampler import DecodeOnceBatchSampler, RASampler


def check_args(args):
    """Refuses inconsistent flags before any process group or worker starts."""
    if not 0.0 <= args.classif_weight <= 1.0:
        raise ValueError(f"--classif-weight must be in [0, 1], got {args.classif_weight}")
    if args.classif_weight < 1.0 and not args.ra_sampler:
        raise ValueError(
            f"--classif-weight {args.classif_weight} < 1 needs repeated augmentation for the margin loss's "
            "positive pairs: drop --no-ra-sampler, or use --classif-weight 1 for classification only"
        )
    if args.ra_reps < 1:
        raise ValueError(f"--ra-reps must be at least 1, got {args.ra_reps}")
    if args.ra_decode_once and not args.ra_sampler:
        raise ValueError("--ra-decode-once decodes each image once for its --ra-reps copies: it needs --ra-sampler")
    if args.classif_weight < 1.0 and args.ra_reps < 2:
        raise ValueError(f"--classif-weight < 1 needs --ra-reps >= 2 to have positive pairs, got {args.ra_reps}")
    for flag in ("batch_size", "epochs", "train_crop_size", "val_crop_size", "val_resize_size", "print_freq"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.classif_weight < 1.0 and args.batch_size < args.ra_reps:
        raise ValueError(
            f"--batch-size {args.batch_size} cannot hold the {args.ra_reps} copies of an image (--ra-reps)"
        )
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if not args.epoch_len_factor > 0:
        raise ValueError(f"--epoch-len-factor must be positive, got {args.epoch_len_factor}")
    if not args.pooling_exponent > 0:
        raise ValueError(f"--pooling-exponent must be positive, got {args.pooling_exponent}")
    if not 0 < args.sampling_cutoff < args.nonzero_loss_cutoff <= 2.0:
        raise ValueError(
            "need 0 < --sampling-cutoff < --nonzero-loss-cutoff <= 2 (distances between unit vectors), got "
            f"{args.sampling_cutoff} and {args.nonzero_loss_cutoff}"
        )
    if args.margin < 0 or args.beta_lr < 0:
        raise ValueError(f"--margin and --beta-lr must be >= 0, got {args.margin} and {args.beta_lr}")
    if args.lr_warmup_epochs < 0 or args.lr_warmup_epochs >= args.epochs:
        raise ValueError(f"--lr-warmup-epochs must be in [0, --epochs), got {args.lr_warmup_epochs}")
    if args.resume and not os.path.isfile(args.resume):
        raise ValueError(f"--resume {args.resume} is not a file")
    splits = ("val",) if args.test_only else ("train", "val")
    for split in splits:
        utils.check_image_folder(os.path.join(args.data_path, split), "--data-path")
    resume = checkpoint_to_resume(args)
    if resume:
        stored = (load_checkpoint(resume).get("args") or {}).get("model")
        if stored and stored != args.model:
            raise ValueError(f"checkpoint {resume} holds a {stored} model, but --model is {args.model}")


def checkpoint_to_resume(args):
    """--resume, else the checkpoint of --output-dir when there is one (unless --no-auto-resume)."""
    if args.resume or args.test_only:
        return args.resume
    path = os.path.join(args.output_dir, "checkpoint.pth") if args.output_dir else ""
    return path if args.auto_resume and os.path.isfile(path) else ""


def skipping_bad_images(dataset, args):
    return SkipBadImages(dataset) if args.skip_bad_images else dataset


def load_data(args):
    interpolation = InterpolationMode(args.interpolation)
    val_transform = presets.ClassificationPresetEval(
        crop_size=args.val_crop_size, resize_size=args.val_resize_size, interpolation=interpolation
    )
    dataset_val = torchvision.datasets.ImageFolder(os.path.join(args.data_path, "val"), val_transform, loader=load_rgb)
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
    dataset = torchvision.datasets.ImageFolder(os.path.join(args.data_path, "train"), folder_transform, loader=load_rgb)
    if dataset.classes != dataset_val.classes:
        raise ValueError(f"train/ and val/ of --data-path {args.data_path} have different class folders")
    reps = args.ra_reps if args.ra_sampler else 1
    train_sampler = RASampler(len(dataset), reps=reps, seed=args.seed, epoch_len_factor=args.epoch_len_factor)
    dataset = RepeatedViews(dataset, train_transform) if args.ra_decode_once else WithIndex(dataset)
    return skipping_bad_images(dataset, args), train_sampler, shard_val, dataset_val.classes


def build_optimizer(args, model, criterion):
    norm_classes = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
    norm_params, other_params = [], []
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                (norm_params if isinstance(module, norm_classes) else other_params).append(p)
    norm_wd = args.weight_decay if args.norm_weight_decay is None else args.norm_weight_decay
    groups = [
        {"params": other_params, "weight_decay": args.weight_decay},
        {"params": norm_params, "weight_decay": norm_wd},
        {"params": list(criterion.parameters()), "weight_decay": 0.0, "lr": args.lr * args.beta_lr},
    ]
    name = args.opt.lower()
    if name.startswith("sgd"):
        return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov="nesterov" in name)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=args.lr, momentum=args.momentum, alpha=0.9, eps=0.0316)
    return torch.optim.AdamW(groups, lr=args.lr)


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


def train_one_epoch(model, criterion, optimizer, data_loader, device, epoch, args, scaler):
    model.train()
    metric_logger = utils.MetricLogger()
    amp_dtype = getattr(torch, args.amp_dtype)
    beta = criterion.margin_loss.beta
    images_per_step = args.batch_size * distributed.get_world_size()
    header = f"Epoch: [{epoch}]"
    for step, (images, targets, ids) in enumerate(
        metric_logger.log_every(data_loader, args.print_freq, header, images_per_step)
    ):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        ids = ids.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=args.amp):
            logits, embeddings = model(images)
            losses = criterion(logits, embeddings, targets, ids)
        loss = losses["loss"]
        if not math.isfinite(loss.item()):
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at epoch {epoch}, iteration {step}: stopping. The last good "
                "checkpoint is "
                + (
                    os.path.join(args.output_dir, "checkpoint.pth")
                    if args.output_dir
                    else "not saved (no --output-dir)"
                )
            )

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if beta.grad is not None and args.distributed:
            torch.distributed.all_reduce(beta.grad)
            beta.grad /= distributed.get_world_size()
        if args.clip_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

        n = images.shape[0]
        acc1, acc5 = utils.accuracy_counts(logits, targets, topk=(1, 5))
        metric_logger.update(n=n, **{k: v.detach() for k, v in losses.items()})
        metric_logger.update(n=n, acc1=acc1.item() * 100.0 / n, acc5=acc5.item() * 100.0 / n)
        metric_logger.update(beta=beta.detach(), lr=optimizer.param_groups[0]["lr"])
    metric_logger.synchronize_between_processes()
    return {f"train_{name}": meter.global_avg for name, meter in metric_logger.meters.items()}


@torch.no_grad()
def evaluate(model, data_loader, device, args, header="Test:"):
    """Top-1/top-5 and loss over the whole validation set, each image counted once across ranks."""
    model.eval()
    metric_logger = utils.MetricLogger()
    amp_dtype = getattr(torch, args.amp_dtype)
    correct1 = correct5 = loss_sum = 0.0
    count = 0
    for images, targets in metric_logger.log_every(data_loader, args.print_freq, header):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=args.amp):
            logits, _ = model(images)
        loss = nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        acc1, acc5 = utils.accuracy_counts(logits, targets, topk=(1, 5))
        correct1 += acc1.item()
        correct5 += acc5.item()
        loss_sum += loss.item()
        count += images.shape[0]
    correct1, correct5, loss_sum, count = distributed.reduce_sum([correct1, correct5, loss_sum, count])
    metrics = {
        "acc1": 100.0 * correct1 / count,
        "acc5": 100.0 * correct5 / count,
        "loss": loss_sum / count,
        "images": int(count),
    }
    distributed.print_main(
        f"{header} Acc@1 {metrics['acc1']:.3f} Acc@5 {metrics['acc5']:.3f} loss {metrics['loss']:.4f} "
        f"on {int(count)} images"
    )
    return metrics


def main(args):
    check_args(args)
    utils.init_distributed_mode(args)
    distributed.print_main(args)
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
    device = torch.device(args.device)

    dataset, train_sampler, dataset_val, classes = load_data(args)
    collate_fn = collate_skipping_bad if args.skip_bad_images else None
    val_loader = torch.utils.data.DataLoader(
        dataset_val,
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_fn,
    )

    if args.test_only:
        if args.resume:
            model = load_model(args.resume, model_name=args.model, device=device)
        else:
            model = build_model(
                args.model, weights=args.weights, num_classes=len(classes), pooling_exponent=args.pooling_exponent
            )
        return evaluate(model.to(device), val_loader, device, args)

    utils.seed_everything(args.seed)
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

    optimizer = build_optimizer(args, model_without_ddp, criterion)
    lr_scheduler = build_lr_scheduler(args, optimizer)
    scaler = torch.amp.GradScaler(device.type) if args.amp and args.amp_dtype == "float16" else None

    start_epoch = args.start_epoch
    history = []  # one record per finished epoch: the checkpoint carries it, log.jsonl mirrors it
    resume = checkpoint_to_resume(args)
    if resume:
        distributed.print_main(f"Resuming from {resume}")
        checkpoint = load_checkpoint(resume)
        model_without_ddp.load_state_dict(model_state_dict(checkpoint, resume))
        criterion.load_state_dict(checkpoint["criterion"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = checkpoint["epoch"] + 1
        history = checkpoint.get("log", [])
        if args.output_dir and distributed.is_main_process():
            # Drops the lines of epochs after the checkpoint, restores any written after it was saved.
            utils.write_json_lines(os.path.join(args.output_dir, "log.jsonl"), history)

    drop_last = len(train_sampler) >= args.batch_size  # equal batch shapes on every rank for the all-gather
    distributed.print_main(
        f"{len(dataset)} training images, {len(train_sampler) * distributed.get_world_size()} samples per epoch "
        f"({len(train_sampler) // args.batch_size if drop_last else 1} iterations of {args.batch_size} per process)"
    )
    distributed.print_main(criterion)
    start_time = time.time()
    val_metrics = {}
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.time()
        # Seeding per (seed, epoch, rank) makes a resumed run repeat what the uninterrupted one did.
        utils.seed_everything(args.seed, epoch, distributed.get_rank())
        sampling_generator.manual_seed(int(np.random.SeedSequence([args.seed, epoch]).generate_state(1)[0]))
        train_sampler.set_epoch(epoch)
        if args.ra_decode_once:
            batching = {
                "batch_sampler": DecodeOnceBatchSampler(train_sampler, args.batch_size, drop_last),
                "collate_fn": collate_views,
            }
        else:
            batching = {
                "batch_size": args.batch_size,
                "sampler": train_sampler,
                "drop_last": drop_last,
                "collate_fn": collate_fn,
            }
        train_loader = torch.utils.data.DataLoader(
            dataset, num_workers=args.workers, pin_memory=device.type == "cuda", **batching
        )
        train_metrics = train_one_epoch(model, criterion, optimizer, train_loader, device, epoch, args, scaler)
        lr_scheduler.step()
        if args.distributed:
            # Each rank's last forward updated its own BatchNorm statistics: evaluate rank 0's (the saved) model.
            for buffer in model_without_ddp.buffers():
                torch.distributed.broadcast(buffer, src=0)
        val_metrics = evaluate(model_without_ddp, val_loader, device, args)
        record = {"epoch": epoch, **train_metrics, **{f"val_{k}": v for k, v in val_metrics.items()}}
        record["beta"] = criterion.margin_loss.beta.item()
        record["epoch_time_s"] = time.time() - epoch_start
        history.append(record)
        if args.output_dir and distributed.is_main_process():
            checkpoint = {
                "model": model_without_ddp.state_dict(),
                "criterion": criterion.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch,
                "args": vars(args),
                "log": history,
            }
            utils.save_checkpoint(checkpoint, os.path.join(args.output_dir, "checkpoint.pth"))
            utils.append_json_line(os.path.join(args.output_dir, "log.jsonl"), record)
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
        help="torchvision model name (ResNet, ResNeXt, Wide-ResNet, RegNet, EfficientNet)",
    )
    parser.add_argument(
        "--weights", default=None, help="torchvision weights for the trunk, e.g. ResNet50_Weights.IMAGENET1K_V1"
    )
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument(
        "-b",
        "--batch-size",
        default=64,
        type=int,
        help="images per process; the global batch is this times the number of processes",
    )
    parser.add_argument("--epochs", default=120, type=int, help="number of epochs")
    parser.add_argument("-j", "--workers", default=8, type=int, help="data loading workers per process")
    parser.add_argument("--opt", default="sgd", choices=["sgd", "sgd_nesterov", "rmsprop", "adamw"], help="optimizer")
    parser.add_argument(
        "--lr", default=0.2, type=float, help="learning rate (the paper: 0.2 for a global batch of 512)"
    )
    parser.add_argument("--momentum", default=0.9, type=float, help="momentum")
    parser.add_argument("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay", help="weight decay")
    parser.add_argument(
        "--norm-weight-decay", default=None, type=float, help="weight decay of normalization layers (default: --wd)"
    )
    parser.add_argument("--label-smoothing", default=0.0, type=float, help="label smoothing of the cross-entropy")
    parser.add_argument(
        "--lr-scheduler",
        default="steplr",
        choices=["steplr", "multisteplr", "cosineannealinglr"],
        help="learning rate schedule, stepped every epoch",
    )
    parser.add_argument(
        "--lr-steps", default=[30, 60, 90], nargs="+", type=int, help="epochs of the multisteplr decays"
    )
    parser.add_argument("--lr-step-size", default=30, type=int, help="period of the steplr decays, in epochs")
    parser.add_argument("--lr-gamma", default=0.1, type=float, help="decay factor of steplr / multisteplr")
    parser.add_argument("--lr-min", default=0.0, type=float, help="final learning rate of cosineannealinglr")
    parser.add_argument("--lr-warmup-epochs", default=0, type=int, help="warm-up epochs (the paper: none)")
    parser.add_argument("--lr-warmup-method", default="linear", choices=["linear", "constant"], help="warm-up shape")
    parser.add_argument(
        "--lr-warmup-decay", default=0.01, type=float, help="learning rate factor at the start of the warm-up"
    )
    parser.add_argument("--print-freq", default=10, type=int, help="print every this many iterations")
    parser.add_argument("--output-dir", default=".", help="where checkpoint.pth and log.jsonl are written")
    parser.add_argument("--resume", default="", help="checkpoint to resume from")
    parser.add_argument(
        "--auto-resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="resume from <output-dir>/checkpoint.pth when it exists",
    )
    parser.add_argument(
        "--skip-bad-images", action="store_true", help="log and skip images that cannot be decoded instead of stopping"
    )
    parser.add_argument("--start-epoch", default=0, type=int, help="first epoch (overridden by --resume)")
    parser.add_argument("--sync-bn", action="store_true", help="synchronised BatchNorm across processes")
    parser.add_argument("--test-only", action="store_true", help="only evaluate (the model of --resume if given)")
    parser.add_argument(
        "--auto-augment",
        default=None,
        choices=presets.AUTO_AUGMENT_POLICIES,
        help="augmentation policy replacing colour jitter and lighting (the paper's variant: autoaugment)",
    )
    parser.add_argument("--ra-magnitude", default=9, type=int, help="magnitude of --auto-augment ra")
    parser.add_argument("--augmix-severity", default=3, type=int, help="severity of --auto-augment augmix")
    parser.add_argument(
        "--color-jitter",
        default=0.3,
        type=float,
        help="brightness, contrast and saturation jitter of the full augmentation",
    )
    parser.add_argument(
        "--lighting", default=0.1, type=float, help="std of the PCA lighting noise of the full augmentation"
    )
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision")
    parser.add_argument(
        "--amp-dtype",
        default="float16",
        choices=["float16", "bfloat16"],
        help="autocast dtype of --amp (float16 uses a gradient scaler)",
    )
    parser.add_argument(
        "--clip-grad-norm", default=None, type=float, help="maximum gradient norm of the model's parameters"
    )
    parser.add_argument(
        "--ra-sampler",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="repeated augmentation: every image --ra-reps times per batch",
    )
    parser.add_argument("--ra-reps", default=3, type=int, help="copies of each image under --ra-sampler")
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
        type=float,
        help="samples per epoch / training images, copies included: an epoch has ceil(factor * N / processes) "
        "samples per process, i.e. about factor * N / reps distinct images (the paper: 2.0, 5005 iterations "
        "of 512 on ImageNet)",
    )
    parser.add_argument("--val-resize-size", default=256, type=int, help="validation resize of the shorter side")
    parser.add_argument("--val-crop-size", default=224, type=int, help="validation center crop")
    parser.add_argument("--train-crop-size", default=224, type=int, help="training random-resized-crop size")
    parser.add_argument(
        "--interpolation", default="bilinear", choices=["nearest", "bilinear", "bicubic"], help="resize interpolation"
    )
    parser.add_argument("--seed", default=0, type=int, help="random seed")
    parser.add_argument(
        "--classif-weight",
        "--classify-weight",
        default=0.5,
        type=float,
        dest="classif_weight",
        help="λ: loss = λ·CE + (1−λ)·margin loss; 1 is plain classification",
    )
    parser.add_argument(
        "--pooling-exponent", default=3.0, type=float, help="GeM exponent p (1: average pooling, inf: max pooling)"
    )
    parser.add_argument("--beta-init", default=1.2, type=float, help="initial margin-loss boundary beta")
    parser.add_argument("--beta-lr", default=1.0, type=float, help="beta's learning rate as a multiple of --lr")
    parser.add_argument("--margin", default=0.2, type=float, help="margin alpha of the margin loss")
    parser.add_argument(
        "--sampling-cutoff",
        default=0.5,
        type=float,
        help="distances are clamped below at this value for the sampling weights",
    )
    parser.add_argument(
        "--nonzero-loss-cutoff", default=1.4, type=float, help="negatives are drawn among the ones closer than this"
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
    main(utils.parse_checked_args(get_args_parser(), check_args))
