"""Fine-tuning of the GeM exponent p for one test resolution s* (the paper's p*).

    python finetune_p.py --data-path /datasets/imagenet --checkpoint train/checkpoint.pth --input-size 500 \\
        --output-dir finetune500

or, from a pretrained classifier with no MultiGrain checkpoint (the paper's appendix E), e.g.

    python finetune_p.py --data-path /datasets/imagenet --model senet154 --weights legacy_senet154.pth \\
        --input-size 450 --output-dir senet154-finetune450

Only p is learned: the model stays in eval mode (BatchNorm statistics frozen), SGD on the
cross-entropy, one pass over the first --images-per-class training images of each class, resized so
that their largest side is s*, without crop. A pretrained classifier starts from --pooling-exponent
(1: the average pooling it was trained with). With --p-grid, p is chosen by cross-validation on the same
images instead. The checkpoint holds the model with the new p and its s* (`input_size`, the default input
size of the scripts that read it), and the class names of its source (else the class folders of --data-path,
which the classifier was validated on); a whitened model loses its whitening, which is specific to p and s*:
run whiten.py on the result.
"""

import argparse
import math
import os
import time

import torch
import torch.utils.data
from torch.nn import functional as F
from torchvision.transforms.functional import InterpolationMode

import engine
import flags
import presets
import utils
from multigrain.images.datasets import ImageFolder
from multigrain.images.image_io import load_rgb
from multigrain.inference.extraction import collate_image_list, forward_by_size
from multigrain.model import build_model, check_model_name
from multigrain.storage.checkpoint import FILE_NAMES, LOG_NAMES, check_output_dir, make_checkpoint, save_checkpoint
from multigrain.storage.model_files import open_model


def parse_p_grid(text):
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--p-grid must be comma-separated numbers, e.g. 1,2,3,4, got {text!r}"
        ) from None
    if not all(value > 0 and math.isfinite(value) for value in values):
        raise argparse.ArgumentTypeError(f"--p-grid values must be positive and finite, got {text!r}")
    return values


@utils.usage_check
def check_args(args):
    """Refuses bad flags, data folders and checkpoints; returns the ModelFile of --checkpoint, read once
    (None when starting from --weights)."""
    if bool(args.checkpoint) == bool(args.weights):
        raise ValueError(
            "start from a checkpoint (--checkpoint) or from a pretrained classifier (--model NAME --weights W): "
            "pass exactly one of --checkpoint and --weights"
        )
    if args.weights:
        if not args.model:
            raise ValueError("--weights needs --model, the architecture of the weights")
        check_model_name(args.model)
    elif not os.path.isfile(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint} is not a file")
    elif args.pooling_exponent is not None:
        raise ValueError("--pooling-exponent sets the starting p of --weights; --checkpoint starts from its stored p")
    classes = [
        utils.check_image_folder(os.path.join(args.data_path, split), "--data-path") for split in ("train", "val")
    ]
    if classes[0] != classes[1]:
        raise ValueError(f"train/ and val/ of --data-path {args.data_path} have different class folders")
    check_output_dir(args.output_dir, "finetune_p")
    utils.check_writable_folder(args.output_dir, "--output-dir")
    if args.weights:
        return None
    model_file = open_model(args.checkpoint, model_name=args.model)
    model_file.check_num_classes(len(classes[0]), f"--data-path {args.data_path}")
    return model_file


@utils.usage_check
def pretrained_classifier(args):
    """The MultiGrainNet of --model with --weights, in eval mode, its classifier kept, p = --pooling-exponent."""
    classes = utils.check_image_folder(os.path.join(args.data_path, "val"), "--data-path")
    p = 1.0 if args.pooling_exponent is None else args.pooling_exponent
    model = build_model(args.model, weights=args.weights, num_classes=None, pooling_exponent=p)
    if model.classifier.out_features != len(classes):
        raise ValueError(
            f"--weights {args.weights} classify {model.classifier.out_features} classes, "
            f"--data-path {args.data_path} has {len(classes)}"
        )
    return model.to(args.device).eval()


def first_images_per_class(targets, count):
    """Indices of the first `count` images of each class, in dataset order."""
    seen = {}
    indices = []
    for index, target in enumerate(targets):
        if seen.get(target, 0) < count:
            seen[target] = seen.get(target, 0) + 1
            indices.append(index)
    return indices


def load_data(args):
    transform = presets.RetrievalPresetEval(
        max_size=args.input_size, interpolation=InterpolationMode(args.interpolation)
    )
    train = ImageFolder(os.path.join(args.data_path, "train"), transform, loader=load_rgb)
    val = ImageFolder(os.path.join(args.data_path, "val"), transform, loader=load_rgb)
    indices = first_images_per_class(train.targets, args.images_per_class)
    subset = torch.utils.data.Subset(train, indices)
    return subset, val


def evaluate(model, dataset, device, args, header):
    """Top-1, top-5 and cross-entropy of the model on `dataset` of (image, target), images of any size."""
    start = time.time()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.eval_batch_size, num_workers=args.workers, collate_fn=collate_image_list
    )
    header = f"{header} p={float(model.pool.p.detach()):.4f}"
    metrics = engine.evaluate(model, loader, torch.device(device), print_freq=args.print_freq, header=header)
    print(f"{header} took {time.time() - start:.1f} s", flush=True)
    return metrics


def finetune_p(model, dataset, device, args, log_path):
    """One pass of SGD on p alone over `dataset`, in random order, batches of args.batch_size images.

    The learning rate decays polynomially (power args.lr_power) at every iteration. Returns the new p.
    """
    model.eval()  # BatchNorm statistics stay frozen
    model.pool.make_p_learnable()
    for param in model.parameters():
        param.requires_grad_(False)
    p = model.pool.p
    p.requires_grad_(True)
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=args.workers,
        collate_fn=collate_image_list,
    )
    optimizer = torch.optim.SGD([p], lr=args.lr, momentum=args.momentum)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=len(loader), power=args.lr_power)
    metric_logger = utils.MetricLogger()
    for iteration, (images, targets) in enumerate(metric_logger.log_every(loader, args.print_freq, "finetune_p:")):
        images = [image.to(device, non_blocking=True) for image in images]
        targets = targets.to(device, non_blocking=True)
        logits, _ = forward_by_size(model, images)
        loss = F.cross_entropy(logits, targets)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if not (math.isfinite(p.item()) and p.item() > 0):
            raise FloatingPointError(f"p became {p.item()} at iteration {iteration}: lower --lr")
        metric_logger.update(n=len(images), loss=loss.detach(), p=p.detach())
        utils.append_json_line(log_path, {"iteration": iteration, "p": p.item(), "loss": loss.item(), "lr": lr})
    model.pool.set_p(p.item())
    return p.item()


def cross_validate_p(model, dataset, device, args, log_path):
    """Evaluates every p of args.p_grid on `dataset`; keeps the best top-1 (then the lowest loss)."""
    rows = []
    for p in args.p_grid:
        model.pool.set_p(p)
        metrics = evaluate(model, dataset, device, args, header=f"cross-validation p={p:g}:")
        rows.append((p, metrics))
        utils.append_json_line(log_path, {"stage": "p_grid", "p": p, **{f"subset_{k}": v for k, v in metrics.items()}})
    best_p, _ = max(rows, key=lambda row: (row[1]["acc1"], -row[1]["loss"]))
    print(f"\nCross-validation on {len(dataset)} training images at input size {args.input_size}:")
    print(f"{'p':>8}  {'Acc@1':>7}  {'Acc@5':>7}  {'loss':>8}")
    for p, metrics in rows:
        mark = "  <- best" if p == best_p else ""
        print(f"{p:>8g}  {metrics['acc1']:>7.3f}  {metrics['acc5']:>7.3f}  {metrics['loss']:>8.4f}{mark}")
    model.pool.set_p(best_p)
    return best_p


def main(args):
    model_file = check_args(args)
    print(args)
    device = torch.device(args.device)
    os.makedirs(args.output_dir, exist_ok=True)
    log_path = os.path.join(args.output_dir, LOG_NAMES["finetune_p"])
    if os.path.exists(log_path):
        os.remove(log_path)

    subset, val = load_data(args)
    if model_file is None:
        print(f"Fine-tuning p of --model {args.model} with --weights {args.weights}")
        name, source, class_names = args.model, {"weights": args.weights}, None
        model = pretrained_classifier(args)
    else:
        print(f"Fine-tuning p of {model_file.description}")
        if model_file.whitened:
            print(f"{args.checkpoint} is whitened: fine-tuning p on the unwhitened model (re-run whiten.py afterwards)")
        name, source, class_names = model_file.architecture, model_file.source, model_file.class_names
        model = model_file.model(device, unwhitened=True)
    del model_file
    initial_p = float(model.pool.p)

    print(f"{len(subset)} fine-tuning images ({args.images_per_class} per class), {len(val)} validation images")

    record = {"input_size": args.input_size, "initial_p": initial_p}
    if args.validate_first:
        before = evaluate(model, val, device, args, header="Validation before:")
        record.update({f"val_before_{k}": v for k, v in before.items()})

    start = time.time()
    if args.p_grid:
        p = cross_validate_p(model, subset, device, args, log_path)
    else:
        p = finetune_p(model, subset, device, args, log_path)
    print(f"p: {initial_p:.4f} -> {p:.4f} ({time.time() - start:.1f} s)")

    after = evaluate(model, val, device, args, header="Validation after:")
    record.update({"p": p, **{f"val_{k}": v for k, v in after.items()}})
    utils.append_json_line(log_path, record)
    path = os.path.join(args.output_dir, FILE_NAMES["finetune_p"])
    args_record = {**vars(args), "model": name}
    checkpoint = make_checkpoint(
        "finetune_p", model.state_dict(), args_record, source=source, finetune_p=record,
        input_size=args.input_size, class_names=class_names or val.classes,
    )  # fmt: skip
    save_checkpoint(checkpoint, path)
    print(f"p* = {p:.4f} at input size {args.input_size}; model in {path}")
    return record


def get_args_parser(add_help=True):
    parser = flags.script_parser("MultiGrain: learn the GeM exponent p* for a test resolution", add_help)
    flags.add_data_path(parser)
    flags.add_checkpoint(
        parser,
        "the model to start from",
        required=False,
        model_help="architecture: of --weights, or for checkpoints that do not name it (published files: told by "
        "their keys)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="start from a pretrained classifier instead of --checkpoint: torchvision weights name, or for timm "
        "models (timm:NAME, senet154, pnasnet5large) a weights file or timm pretrained tag, for nasnetamobile a "
        "pretrainedmodels weights file",
    )
    flags.add_pooling_exponent(
        parser,
        allow_inf=False,  # max pooling has no p to learn
        help="starting p with --weights (default 1: the average pooling the classifier was trained with)",
    )
    flags.add_device(parser)
    flags.add_input_size(
        parser, default=flags.DEFAULT_INPUT_SIZE, help="test resolution s*: largest image side, no crop"
    )
    parser.add_argument(
        "--images-per-class",
        default=50,
        type=flags.int_in(1),
        help="fine-tune on the first N training images of each class",
    )
    flags.add_batch_size(parser, default=4, help="fine-tuning batch size")
    parser.add_argument(
        "--eval-batch-size", default=32, type=flags.int_in(1), help="largest batch of same-size images when evaluating"
    )
    flags.add_lr(parser, default=0.005, help="learning rate of p")
    flags.add_momentum(parser)
    parser.add_argument(
        "--lr-power",
        default=0.9,
        type=flags.float_in(0),
        help="power of the per-iteration polynomial learning rate decay",
    )
    parser.add_argument(
        "--p-grid",
        default=None,
        type=parse_p_grid,
        help="comma-separated p values: choose p by cross-validation on the fine-tuning images instead of SGD",
    )
    parser.add_argument(
        "--validate-first",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="validate at the test resolution before fine-tuning (--no-validate-first skips it)",
    )
    flags.add_interpolation(parser)
    flags.add_workers(parser)
    flags.add_print_freq(parser)
    flags.add_output_dir(parser, "where finetune_p.pth and finetune_p_log.jsonl (started afresh) are written")
    flags.add_seed(parser, "seed of the order of the fine-tuning images")
    return parser


if __name__ == "__main__":
    utils.run_script(main, get_args_parser())
