"""The scripts' command lines: argparse types that refuse bad values, and the flags several scripts share.

Each type factory (int_in, float_in) returns a `type=` function that converts a flag's text and refuses a
value out of its range with an argparse.ArgumentTypeError, so that argparse prints "argument --flag: must be
..., got ..." and exits with code 2 before anything starts. NaN is always refused.

Each add_* function defines a flag that several scripts share, once, on a parser or an argument group; its
parameters are the deliberate differences between the scripts (a default, the help). The functions after
them turn shared flags into the arguments of the package's functions.
"""

import argparse
import math

import torch
from torchvision.transforms.functional import InterpolationMode

from multigrain.model import DEFAULT_INPUT_SIZE
from multigrain.storage.checkpoint import SCRIPTS


def _interval(low, high, low_open=False, high_open=False):
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def int_in(low, high=None, *, or_value=None):
    """An integer in [low, high] (no upper bound when high is None), or exactly or_value when given."""
    requirement = f"an integer {_interval(low, high)}"
    if or_value is not None:
        requirement = f"{or_value} or {requirement}"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}") from None
        if value != or_value and not (low <= value and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


def float_in(low, high=None, *, low_open=False, high_open=False, allow_inf=False):
    """A finite float from low to high, bounds included unless low_open / high_open (no upper bound when
    high is None); allow_inf also accepts inf (with no upper bound)."""
    interval = _interval(low, high, low_open, high_open)
    requirement = f"a number {interval} or inf" if allow_inf else f"a finite number {interval}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}") from None
        above_low = value > low if low_open else value >= low
        below_high = high is None or (value < high if high_open else value <= high)
        if not (above_low and below_high and (allow_inf or math.isfinite(value))):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


# The usual 32-bit range: numpy's SeedSequence and torch.Generator.manual_seed take more, up to 2**64 - 1 for
# torch, which this leaves room for in the seeds derived as seed + epoch.
seed = int_in(0, 2**32 - 1)


def script_parser(description, add_help=True):
    """A script's parser, whose --help shows every default."""
    return argparse.ArgumentParser(
        description=description, add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


class FlagGroup:
    """An argument group that lists its flags (argparse keeps its own lists private) and adds itself to
    `parser.flag_groups`; the flags of a `recipe` group change what is trained."""

    def __init__(self, parser, title, description=None, *, recipe=False):
        self.argument_group = parser.add_argument_group(title, description)
        self.title, self.recipe, self.actions = title, recipe, []
        if not hasattr(parser, "flag_groups"):
            parser.flag_groups = []
        parser.flag_groups.append(self)

    def add_argument(self, *names, **options):
        action = self.argument_group.add_argument(*names, **options)
        self.actions.append(action)
        return action


# --- the data and the model ---------------------------------------------------------------------------------


def add_data_path(parser):
    parser.add_argument(
        "--data-path", default="/datasets01/imagenet_full_size/061417/", help="folder with train/ and val/ ImageFolders"
    )


def add_checkpoint(parser, what, *, required=True, model_help=None):
    """--checkpoint: the model file a script reads (multigrain.storage.model_files.open_model), --resume being its
    former name, still accepted; and --model, the architecture of checkpoints that do not name it."""
    parser.add_argument(
        "--checkpoint",
        "--resume",
        dest="checkpoint",
        metavar="FILE",
        required=required,
        help=f"{what}: a checkpoint of train.py, finetune_p.py or whiten.py, or a published file "
        "(--resume: the former name of this flag)",
    )
    add_model(parser, help=model_help or MODEL_HELP)


MODEL_HELP = "architecture, for checkpoints that do not name it (published files: told by their keys)"


def add_model(parser, *, default=None, help=MODEL_HELP):
    parser.add_argument("--model", default=default, help=help)


def add_pooling_exponent(parser, *, default=None, allow_inf=True, help="GeM exponent p (default: the checkpoint's)"):
    """--pooling-exponent: p > 0, and inf (max pooling) unless allow_inf is False."""
    parser.add_argument(
        "--pooling-exponent", default=default, type=float_in(0, low_open=True, allow_inf=allow_inf), help=help
    )


# --- the optimisation ---------------------------------------------------------------------------------------


def add_lr(parser, *, default, help):
    parser.add_argument("--lr", default=default, type=float_in(0, low_open=True), help=help)


def add_momentum(parser):
    parser.add_argument("--momentum", default=0.9, type=float_in(0, 1, high_open=True), help="momentum")


def add_seed(parser, help):
    parser.add_argument("--seed", default=0, type=seed, help=help)


# --- the input images ---------------------------------------------------------------------------------------


def add_image_list(parser, what):
    """--images and --root, as multigrain.images.image_lists.read_image_list reads them."""
    parser.add_argument(
        "--images",
        required=True,
        help=f"{what}: a folder (its image files, sub-folders included) or a list file of paths relative to --root",
    )
    parser.add_argument("--root", default=None, help="the folder the paths of a list file --images are relative to")


def add_input_size(parser, *, default=None, help="test resolution s: images are resized to largest side s, no crop"):
    """--input-size; without a default, checkpoint_input_size gives it after the checkpoint is read."""
    if default is None:
        help += f" (default: the checkpoint's s*, else {DEFAULT_INPUT_SIZE})"
    parser.add_argument("--input-size", default=default, type=int_in(1), help=help)


def add_multiscale(parser):
    parser.add_argument(
        "--multiscale",
        action="store_true",
        help="retrieval descriptor: the normalised mean of the descriptors at largest sides s, s/√2, s/2",
    )


def add_interpolation(parser):
    parser.add_argument(
        "--interpolation", default="bilinear", choices=["nearest", "bilinear", "bicubic"], help="resize interpolation"
    )


# --- running ------------------------------------------------------------------------------------------------


def add_device(parser, *, default="cuda", help="cuda or cpu"):
    parser.add_argument("--device", default=default, help=help)


def add_batch_size(parser, *, default=32, help="images of identical size run as one batch, per process"):
    parser.add_argument("-b", "--batch-size", default=default, type=int_in(1), help=help)


def add_workers(parser):
    parser.add_argument("-j", "--workers", default=8, type=int_in(0), help="data loading workers per process")


def add_print_freq(parser, *, default=100):
    parser.add_argument(
        "--print-freq", default=default, type=int_in(1), help="print progress every this many iterations"
    )


def add_output_dir(parser, help, *, required=False):
    parser.add_argument("--output-dir", required=required, default=None if required else ".", help=help)


def add_dist_url(parser):
    parser.add_argument("--dist-url", default="env://", help="url of the process group set-up")


# --- speed --------------------------------------------------------------------------------------------------


def add_amp(parser, *, training=False):
    """--amp and --amp-dtype; `training`: of train.py, whose float16 uses a gradient scaler."""
    if training:
        amp_help, dtype_help = "automatic mixed precision", "autocast dtype of --amp (float16 uses a gradient scaler)"
    else:
        amp_help, dtype_help = (
            "automatic mixed precision (GeM and whitening stay in float32)",
            "autocast dtype of --amp",
        )
    parser.add_argument("--amp", action="store_true", help=amp_help)
    parser.add_argument("--amp-dtype", default="float16", choices=["float16", "bfloat16"], help=dtype_help)


def add_channels_last(parser):
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="channels-last memory format (faster convolutions with --amp on tensor-core GPUs)",
    )


def add_compile(parser, help):
    parser.add_argument("--compile", action="store_true", help=help)


# --- search -------------------------------------------------------------------------------------------------

# --search: the use_faiss argument of multigrain.search.nn_search.
SEARCH_BACKENDS = {"auto": None, "faiss": True, "torch": False}


def add_search(parser):
    parser.add_argument(
        "--search",
        default="auto",
        choices=list(SEARCH_BACKENDS),
        help="exact search: auto uses faiss when installed and the search runs on the CPU",
    )


def add_chunk_size(parser, help="queries and database rows scored at a time"):
    parser.add_argument("--chunk-size", default=4096, type=int_in(1), help=help)


def add_neighbours(parser, *, default, help):
    parser.add_argument("-k", default=default, type=int_in(1), help=help)


def add_threshold(parser, *, help, required=False):
    """--threshold: a score, the inner product of two normalised descriptors, in [-1, 1]."""
    parser.add_argument("--threshold", default=None, required=required, type=float_in(-1, 1), help=help)


def add_saved_index(parser, help):
    parser.add_argument("--index", default=None, metavar="FILE", help=help)


def add_nprobe(parser, help):
    parser.add_argument("--nprobe", default=None, type=int_in(1), help=help)


def add_report_limit(parser, what):
    parser.add_argument(
        "--report-limit",
        default=200,
        type=int_in(0),
        help=f"{what} shown in report.html, with thumbnails; 0: no report",
    )


# --- the flags as the package's arguments -------------------------------------------------------------------


def checkpoint_input_size(args, model_file):
    """--input-size when it was not given: the s* that --checkpoint stores (model_file: its ModelFile), else
    DEFAULT_INPUT_SIZE. Sets args.input_size; returns the line that says where it came from (None when given)."""
    if args.input_size is not None:
        return None
    if model_file.input_size is None:
        args.input_size = DEFAULT_INPUT_SIZE
        return f"--input-size {args.input_size}, the default: {model_file.path} stores no s*"
    args.input_size = model_file.input_size
    made_by = f"{SCRIPTS[model_file.kind]}'s" if model_file.kind in SCRIPTS else "its"
    return f"--input-size {args.input_size} from {model_file.path} ({made_by} s*)"


def amp_dtype(args):
    """The autocast dtype of --amp --amp-dtype; None without --amp."""
    return getattr(torch, args.amp_dtype) if args.amp else None


def retrieval_extraction(args):
    """The keyword arguments of multigrain.inference.retrieval_descriptors.retrieval_descriptors that
    --input-size, --multiscale, --interpolation, -b, -j, --amp, --amp-dtype and --print-freq give."""
    return {
        "input_size": args.input_size,
        "multiscale": args.multiscale,
        "interpolation": InterpolationMode(args.interpolation),
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "amp_dtype": amp_dtype(args),
        "print_freq": args.print_freq,
    }
