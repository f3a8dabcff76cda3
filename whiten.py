"""PCA whitening of the MultiGrain descriptor at one input size, folded into the classifier.

    python whiten.py --checkpoint finetune500/finetune_p.pth --whiten-path /datasets/whiten \\
        --whiten-list data/whiten.txt --input-size 500 --output-dir whiten500

Pooled vectors g of the whitening images (largest side --input-size, no crop) give the whitening
(multigrain/whitening.py): the retrieval descriptor becomes l2n((x − m)·P) with x = l2n([g; 1]), and
the classifier is rewritten to read (x − m)·P, which leaves every top-k prediction unchanged. The
checkpoint loads in evaluate.py, finetune_p.py and train.py --test-only; it stores its input size s*
(`input_size`: without --input-size, that of --checkpoint, e.g. finetune_p.py's s*, else 500) and the class
names of --checkpoint.
"""

import os
import time

import torch
from torchvision.transforms.functional import InterpolationMode

import flags
import presets
import utils
from multigrain.images.datasets import ImageList, list_image_files
from multigrain.inference.extraction import check_finite, extract_descriptors
from multigrain.storage.checkpoint import FILE_NAMES, LOG_NAMES, check_output_dir, make_checkpoint, save_checkpoint
from multigrain.storage.model_files import open_model
from multigrain.whitening import covariance_error_bound, fit_whitening, fold_whitening


def whitening_image_names(root, list_file=None, limit=-1):
    """Relative paths of the whitening images: the lines of `list_file`, or every image file under
    `root` in sorted order; the first `limit` of them unless limit is -1."""
    if list_file:
        names = read_whiten_list(root, list_file)
    else:
        names = list_image_files(root, recursive=True)
    if limit != -1:
        if limit > len(names):
            source = f"in --whiten-list {list_file}" if list_file else f"under --whiten-path {root}"
            raise ValueError(f"--num-whiten-images {limit}, but only {len(names)} images {source}")
        names = names[:limit]
    missing = [name for name in names if not os.path.isfile(os.path.join(root, name))]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images of --whiten-list {list_file} are not regular files under --whiten-path {root}, "
            f"e.g. {missing[0]}"
        )
    return names


def read_whiten_list(root, list_file):
    """The lines of --whiten-list: paths relative to --whiten-path that stay inside it, each image once."""
    names, first_line = [], {}
    with open(list_file) as f:
        for line_number, line in enumerate(f, start=1):
            name = line.strip()
            if not name:
                continue
            where = f"--whiten-list {list_file} line {line_number}: {name}"
            if os.path.isabs(name):
                raise ValueError(f"{where} is an absolute path; give paths relative to --whiten-path {root}")
            if os.path.normpath(name).split(os.sep)[0] == os.pardir:
                raise ValueError(f"{where} leaves --whiten-path {root}")
            real = os.path.realpath(os.path.join(root, name))
            if real in first_line:
                raise ValueError(f"{where} is the image of line {first_line[real]} again")
            first_line[real] = line_number
            names.append(name)
    return names


@utils.usage_check
def check_args(args):
    """Refuses bad flags, folders and checkpoints; returns the ModelFile of --checkpoint, read once."""
    if not os.path.isfile(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint} is not a file")
    if not os.path.isdir(args.whiten_path):
        raise ValueError(f"--whiten-path {args.whiten_path} is not a folder")
    if args.whiten_list and not os.path.isfile(args.whiten_list):
        raise ValueError(f"--whiten-list {args.whiten_list} is not a file")
    check_output_dir(args.output_dir, "whiten")
    utils.check_writable_folder(args.output_dir, "--output-dir")
    model_file = open_model(args.checkpoint, model_name=args.model)
    utils.print_at_launch(flags.checkpoint_input_size(args, model_file))
    return model_file


@torch.no_grad()
def whitening_checks(model, classifier_before, pooled):
    """How exactly the folded model keeps its promises on the fitting images, from their pooled vectors:
    the largest deviation of the whitened covariance from the identity, the fraction of images whose
    top-5 classes are unchanged, and the largest deviation of the new logits from the old ones times
    1 / (‖[g; 1]‖ + 1e-6), relative to the largest logit."""
    whitened = model.whitening(pooled)
    covariance = torch.cov(whitened.double().T)
    covariance_error = (covariance - torch.eye(covariance.shape[0], dtype=covariance.dtype)).abs().max().item()
    old_logits = classifier_before(pooled)
    new_logits = model.classifier(whitened)
    if not old_logits.shape[1]:  # a model without classes (trained on unlabelled images from scratch)
        return {"covariance_error": covariance_error, "top5_agreement": 1.0, "logit_factor_error": 0.0}
    factor = 1.0 / (torch.cat([pooled, pooled.new_ones(len(pooled), 1)], dim=1).norm(dim=1) + 1e-6)
    expected = old_logits * factor[:, None]
    k = min(5, old_logits.shape[1])
    same_top5 = (old_logits.topk(k).indices == new_logits.topk(k).indices).all(dim=1).double().mean().item()
    factor_error = ((new_logits - expected).abs().max() / expected.abs().max()).item()
    return {"covariance_error": covariance_error, "top5_agreement": same_top5, "logit_factor_error": factor_error}


def main(args):
    model_file = check_args(args)
    print(args)
    device = torch.device(args.device)
    os.makedirs(args.output_dir, exist_ok=True)

    print(f"Whitening {model_file.description}{' (replacing its whitening)' if model_file.whitened else ''}")
    name, source, class_names = model_file.architecture, model_file.source, model_file.class_names
    model = model_file.model(device, unwhitened=True)
    del model_file

    names = whitening_image_names(args.whiten_path, args.whiten_list, args.num_whiten_images)
    dim = model.embedding_dim + 1
    if args.shrinkage == 0 and len(names) < dim + 1:
        raise ValueError(
            f"whitening the {dim}-d vectors [g; 1] of {name} needs at least {dim + 1} images, got {len(names)} "
            f"from --whiten-path {args.whiten_path}: use more images or --shrinkage"
        )
    interpolation = InterpolationMode(args.interpolation)
    transform = presets.RetrievalPresetEval(max_size=args.input_size, interpolation=interpolation)
    dataset = ImageList([os.path.join(args.whiten_path, name) for name in names], names, transform=transform)
    print(f"Extracting {len(dataset)} pooled vectors at input size {args.input_size}, p={float(model.pool.p):.4f}")
    start = time.time()
    pooled = extract_descriptors(
        model,
        dataset,
        device,
        output="pooled",
        batch_size=args.batch_size,
        num_workers=args.workers,
        print_freq=args.print_freq * args.batch_size,
    )
    print(f"Extraction took {time.time() - start:.1f} s; fitting the whitening in float64")

    check_finite(pooled, names, "pooled vectors")
    mean, projection = fit_whitening(pooled, shrinkage=args.shrinkage)
    classifier_before = model.classifier
    fold_whitening(model, mean, projection)
    checks = whitening_checks(model.cpu(), classifier_before.cpu(), pooled)
    print(
        f"On the {len(pooled)} whitening images: covariance of the whitened vectors - identity: max "
        f"{checks['covariance_error']:.2e}{' (shrinkage: not the identity by design)' if args.shrinkage else ''}; "
        f"same top-5 classes: {100 * checks['top5_agreement']:.2f}%; logits vs old logits / ||[g; 1]||: max relative "
        f"deviation {checks['logit_factor_error']:.2e}"
    )
    bound = covariance_error_bound(args.shrinkage)
    if not checks["covariance_error"] <= bound:
        raise FloatingPointError(
            f"the whitening failed its check: the whitened covariance of the {len(pooled)} images deviates from the "
            f"identity by {checks['covariance_error']:.2e}, more than the {bound:.2g} that --shrinkage "
            f"{args.shrinkage} allows (the images of --whiten-path {args.whiten_path} give nearly identical "
            "descriptors): nothing was saved"
        )
    record = {
        "input_size": args.input_size,
        "p": float(model.pool.p),
        "num_images": len(pooled),
        "shrinkage": args.shrinkage,
        **checks,
    }
    utils.append_json_line(os.path.join(args.output_dir, LOG_NAMES["whiten"]), record)
    path = os.path.join(args.output_dir, FILE_NAMES["whiten"])
    args_record = {**vars(args), "model": name}
    checkpoint = make_checkpoint(
        "whiten", model.state_dict(), args_record, source=source, whitening=record,
        input_size=args.input_size, class_names=class_names,
    )  # fmt: skip
    save_checkpoint(checkpoint, path)
    print(f"Whitened model saved in {path}")
    return record


def get_args_parser(add_help=True):
    parser = flags.script_parser("MultiGrain: PCA whitening of the descriptor, folded into the classifier", add_help)
    flags.add_checkpoint(parser, "the model to whiten")
    parser.add_argument(
        "--whiten-path",
        required=True,
        help="folder of the whitening images (every image below it, unless --whiten-list)",
    )
    parser.add_argument(
        "--whiten-list",
        default=None,
        help="file naming the whitening images, one path relative to --whiten-path per line",
    )
    parser.add_argument(
        "--num-whiten-images",
        default=-1,
        type=flags.int_in(1, or_value=-1),
        help="use only the first N images (-1: all)",
    )
    flags.add_input_size(parser)
    parser.add_argument(
        "--shrinkage",
        default=0.0,
        type=flags.float_in(0, 1, high_open=True),
        help="α in [0, 1): whiten (1 − α)·C + α·(trace(C)/D)·I instead of the covariance C. 0 is the paper's "
        "whitening and needs more images than dimensions + 1; α > 0 works with fewer images or degenerate "
        "descriptors, at the price of a whitened covariance that is not exactly the identity",
    )
    flags.add_device(parser)
    flags.add_batch_size(parser)
    flags.add_interpolation(parser)
    flags.add_workers(parser)
    flags.add_print_freq(parser)
    flags.add_output_dir(parser, "where whitened.pth and whiten_log.jsonl are written")
    return parser


if __name__ == "__main__":
    utils.run_script(main, get_args_parser())
