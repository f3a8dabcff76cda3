"""Every numeric flag of the scripts is checked before anything starts: a usage error (exit code 2) naming it."""

import argparse
import math

import numpy as np
import pytest
import torch

import evaluate
import export
import extract
import finetune_p
import flags
import train
import utils
import whiten
from benchmarks import channels_last_compile, data_pipeline, retrieval, sampling_margin, step_overhead
from multigrain.model import build_model
from multigrain.storage.checkpoint import make_checkpoint
from tests.scripts import run_script
from tools.synthetic_data import make_imagefolder

BENCHMARKS = (channels_last_compile, data_pipeline, retrieval, sampling_margin, step_overhead)


def test_int_in():
    assert flags.int_in(1)("3") == 3
    assert flags.int_in(0, 30)("0") == 0 and flags.int_in(0, 30)("30") == 30
    assert flags.int_in(1, or_value=-1)("-1") == -1
    refusals = [
        (flags.int_in(1), "0", "must be an integer >= 1, got 0"),
        (flags.int_in(0, 30), "31", "must be an integer in [0, 30], got 31"),
        (flags.int_in(0, 30), "-1", "must be an integer in [0, 30], got -1"),
        (flags.int_in(1), "1.5", "must be an integer >= 1, got '1.5'"),
        (flags.int_in(1), "", "must be an integer >= 1, got ''"),
        (flags.int_in(1, or_value=-1), "0", "must be -1 or an integer >= 1, got 0"),
    ]
    for parse, text, message in refusals:
        with pytest.raises(argparse.ArgumentTypeError) as error:
            parse(text)
        assert str(error.value) == message


def test_float_in():
    assert flags.float_in(0)("0") == 0.0 and flags.float_in(0)("1e-4") == 1e-4
    assert flags.float_in(0, 1, high_open=True)("0.999") == 0.999
    assert flags.float_in(0, 1, low_open=True)("1") == 1.0
    assert flags.float_in(0, low_open=True, allow_inf=True)("inf") == math.inf
    refusals = [
        (flags.float_in(0), "-1", "must be a finite number >= 0, got -1"),
        (flags.float_in(0), "nan", "must be a finite number >= 0, got nan"),
        (flags.float_in(0), "inf", "must be a finite number >= 0, got inf"),
        (flags.float_in(0), "one", "must be a finite number >= 0, got 'one'"),
        (flags.float_in(0, low_open=True), "0", "must be a finite number > 0, got 0"),
        (flags.float_in(0, 1, high_open=True), "1", "must be a finite number in [0, 1), got 1"),
        (flags.float_in(0, 1, low_open=True), "0", "must be a finite number in (0, 1], got 0"),
        (flags.float_in(0, 1), "inf", "must be a finite number in [0, 1], got inf"),
        (flags.float_in(0, low_open=True, allow_inf=True), "nan", "must be a number > 0 or inf, got nan"),
        (flags.float_in(0, low_open=True, allow_inf=True), "-inf", "must be a number > 0 or inf, got -inf"),
    ]
    for parse, text, message in refusals:
        with pytest.raises(argparse.ArgumentTypeError) as error:
            parse(text)
        assert str(error.value) == message


def test_seed_range_fits_what_the_scripts_seed():
    assert flags.seed("0") == 0
    largest = flags.seed(str(2**32 - 1))
    for text in ("-1", str(2**32)):
        with pytest.raises(argparse.ArgumentTypeError, match=r"in \[0, 4294967295\]"):
            flags.seed(text)
    # train.py seeds a torch.Generator with seed + epoch and numpy's SeedSequence with (seed, epoch)
    torch.Generator().manual_seed(largest + 10**6)
    np.random.SeedSequence([largest, 10**6]).generate_state(1)


@pytest.fixture(scope="module")
def base_argv(tmp_path_factory):
    """Per script, a command line that parses and passes check_args: the cases below add one bad flag to it."""
    root = tmp_path_factory.mktemp("flags")
    make_imagefolder(root / "data", num_classes=2, train_per_class=1, val_per_class=1, image_size=16, seed=0)
    checkpoint = root / "checkpoint.pth"
    model = build_model("resnet18", num_classes=2)
    torch.save(make_checkpoint("whiten", model.state_dict(), {"model": "resnet18"}), checkpoint)
    data, output = str(root / "data"), str(root / "output")
    return {
        train: ["--data-path", data, "--output-dir", output],
        finetune_p: ["--resume", str(checkpoint), "--data-path", data, "--output-dir", output],
        whiten: ["--resume", str(checkpoint), "--whiten-path", data, "--output-dir", output],
        evaluate: [
            "--resume",
            str(checkpoint),
            "--dataset",
            "imagenet-val",
            "--imagenet-path",
            data,
            "--device",
            "cpu",
        ],
        **{benchmark: [] for benchmark in BENCHMARKS},
    }


def parse_command_line(script, argv):
    """The script's arguments as its __main__ checks them (the benchmarks have no check_args)."""
    parser = script.get_args_parser()
    args = parser.parse_args(argv)
    try:
        getattr(script, "check_args", lambda args: None)(args)
    except utils.UsageError as e:
        parser.error(str(e))
    return args


def test_base_command_lines_pass(base_argv):
    for script, argv in base_argv.items():
        parse_command_line(script, argv)
    for script in (train, evaluate):  # p = inf is max pooling
        args = parse_command_line(script, [*base_argv[script], "--pooling-exponent", "inf"])
        assert args.pooling_exponent == math.inf


# (script, flags added to its base command line, what follows "error: " in the usage message)
CASES = [
    # the sweep of train.py
    (train, ["--wd", "-1"], "argument --wd/--weight-decay: must be a finite number >= 0, got -1"),
    (train, ["--norm-weight-decay", "-5"], "argument --norm-weight-decay: must be a finite number >= 0"),
    (train, ["--label-smoothing", "-0.5"], "argument --label-smoothing: must be a finite number in [0, 1)"),
    (train, ["--lr-gamma", "nan"], "argument --lr-gamma: must be a finite number > 0, got nan"),
    (train, ["--lighting", "nan"], "argument --lighting: must be a finite number >= 0, got nan"),
    (train, ["--color-jitter", "-1"], "argument --color-jitter: must be a finite number >= 0, got -1"),
    (train, ["--lr-steps", "-5"], "argument --lr-steps: must be an integer >= 1, got -5"),
    (train, ["--ra-magnitude", "-5"], "argument --ra-magnitude: must be an integer in [0, 30], got -5"),
    (train, ["--beta-init", "-1"], "argument --beta-init: must be a finite number > 0, got -1"),
    (train, ["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (train, ["--margin", "nan"], "argument --margin: must be a finite number >= 0, got nan"),
    (train, ["--beta-lr", "nan"], "argument --beta-lr: must be a finite number >= 0, got nan"),
    (train, ["--lr-step-size", "0"], "argument --lr-step-size: must be an integer >= 1, got 0"),
    (train, ["--epoch-len-factor", "inf"], "argument --epoch-len-factor: must be a finite number > 0, got inf"),
    (train, ["--momentum", "-1"], "argument --momentum: must be a finite number in [0, 1), got -1"),
    (train, ["--ra-magnitude", "1000"], "argument --ra-magnitude: must be an integer in [0, 30], got 1000"),
    (train, ["--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295], got -1"),
    (train, ["--start-epoch", "5", "--epochs", "1"], "--start-epoch 5 must be below --epochs 1"),
    # more of train.py
    (train, ["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    (train, ["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
    (train, ["--momentum", "1"], "argument --momentum: must be a finite number in [0, 1), got 1"),
    (train, ["--label-smoothing", "1"], "argument --label-smoothing: must be a finite number in [0, 1), got 1"),
    (train, ["--lr-min", "-1"], "argument --lr-min: must be a finite number >= 0, got -1"),
    (train, ["--lr-warmup-decay", "0"], "argument --lr-warmup-decay: must be a finite number in (0, 1], got 0"),
    (train, ["--lr-warmup-decay", "1.5"], "argument --lr-warmup-decay: must be a finite number in (0, 1], got 1.5"),
    (train, ["--lr-warmup-epochs", "-1"], "argument --lr-warmup-epochs: must be an integer >= 0, got -1"),
    (train, ["--augmix-severity", "0"], "argument --augmix-severity: must be an integer in [1, 10], got 0"),
    (train, ["--augmix-severity", "11"], "argument --augmix-severity: must be an integer in [1, 10], got 11"),
    (train, ["--clip-grad-norm", "0"], "argument --clip-grad-norm: must be a finite number > 0, got 0"),
    (train, ["--pooling-exponent", "nan"], "argument --pooling-exponent: must be a number > 0 or inf, got nan"),
    (train, ["--classif-weight", "nan"], "argument --classif-weight/--classify-weight: must be a finite number"),
    (train, ["--sampling-cutoff", "0"], "argument --sampling-cutoff: must be a finite number in (0, 2], got 0"),
    (train, ["--nonzero-loss-cutoff", "2.5"], "argument --nonzero-loss-cutoff: must be a finite number in (0, 2]"),
    (train, ["--seed", str(2**32)], "argument --seed: must be an integer in [0, 4294967295], got 4294967296"),
    (train, ["--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
    (train, ["--start-epoch", "-1"], "argument --start-epoch: must be an integer >= 0, got -1"),
    (train, ["-b", "two"], "argument -b/--batch-size: must be an integer >= 1, got 'two'"),
    (train, ["-j", "-1"], "argument -j/--workers: must be an integer >= 0, got -1"),
    (train, ["--print-freq", "0"], "argument --print-freq: must be an integer >= 1, got 0"),
    (train, ["--val-resize-size", "0"], "argument --val-resize-size: must be an integer >= 1, got 0"),
    # cross-flag checks of train.py
    (train, ["--lr-warmup-epochs", "5", "--epochs", "5"], "--lr-warmup-epochs 5 must be below --epochs 5"),
    (train, ["--lr-scheduler", "multisteplr", "--epochs", "50"], "--lr-steps of multisteplr must increase"),
    (train, ["--lr-scheduler", "multisteplr", "--lr-steps", "20", "10"], "--lr-steps of multisteplr must increase"),
    (train, ["--lr-scheduler", "multisteplr", "--lr-steps", "10", "10"], "--lr-steps of multisteplr must increase"),
    (
        train,
        ["--lr-scheduler", "multisteplr", "--epochs", "100", "--lr-warmup-epochs", "20", "--lr-steps", "30", "80"],
        "--lr-steps of multisteplr must increase and stay below --epochs - --lr-warmup-epochs = 80",
    ),
    (
        train,
        ["--lr-scheduler", "cosineannealinglr", "--lr", "0.1", "--lr-min", "0.1"],
        "--lr-min 0.1 of cosineannealinglr must be below --lr 0.1",
    ),
    (train, ["--sampling-cutoff", "1.5"], "--sampling-cutoff 1.5 must be below --nonzero-loss-cutoff 1.4"),
    (train, ["--val-crop-size", "300"], "--val-crop-size 300 must be at most --val-resize-size 256"),
    # finetune_p.py
    (finetune_p, ["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (finetune_p, ["--lr", "-1"], "argument --lr: must be a finite number > 0, got -1"),
    (finetune_p, ["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
    (finetune_p, ["--momentum", "1"], "argument --momentum: must be a finite number in [0, 1), got 1"),
    (finetune_p, ["--momentum", "nan"], "argument --momentum: must be a finite number in [0, 1), got nan"),
    (finetune_p, ["--lr-power", "-1"], "argument --lr-power: must be a finite number >= 0, got -1"),
    (finetune_p, ["--lr-power", "nan"], "argument --lr-power: must be a finite number >= 0, got nan"),
    (finetune_p, ["--input-size", "0"], "argument --input-size: must be an integer >= 1, got 0"),
    (finetune_p, ["--images-per-class", "0"], "argument --images-per-class: must be an integer >= 1, got 0"),
    (finetune_p, ["-b", "0"], "argument -b/--batch-size: must be an integer >= 1, got 0"),
    (finetune_p, ["--eval-batch-size", "0"], "argument --eval-batch-size: must be an integer >= 1, got 0"),
    (finetune_p, ["-j", "-1"], "argument -j/--workers: must be an integer >= 0, got -1"),
    (finetune_p, ["--print-freq", "0"], "argument --print-freq: must be an integer >= 1, got 0"),
    (finetune_p, ["--seed", "-1"], "argument --seed: must be an integer in [0, 4294967295], got -1"),
    # whiten.py
    (whiten, ["--shrinkage", "1"], "argument --shrinkage: must be a finite number in [0, 1), got 1"),
    (whiten, ["--shrinkage", "-0.1"], "argument --shrinkage: must be a finite number in [0, 1), got -0.1"),
    (whiten, ["--shrinkage", "nan"], "argument --shrinkage: must be a finite number in [0, 1), got nan"),
    (whiten, ["--num-whiten-images", "0"], "argument --num-whiten-images: must be -1 or an integer >= 1, got 0"),
    (whiten, ["--num-whiten-images", "-2"], "argument --num-whiten-images: must be -1 or an integer >= 1, got -2"),
    (whiten, ["--input-size", "0"], "argument --input-size: must be an integer >= 1, got 0"),
    (whiten, ["-b", "0"], "argument -b/--batch-size: must be an integer >= 1, got 0"),
    (whiten, ["-j", "-1"], "argument -j/--workers: must be an integer >= 0, got -1"),
    (whiten, ["--print-freq", "0"], "argument --print-freq: must be an integer >= 1, got 0"),
    # evaluate.py
    (evaluate, ["--pooling-exponent", "nan"], "argument --pooling-exponent: must be a number > 0 or inf, got nan"),
    (evaluate, ["--pooling-exponent", "0"], "argument --pooling-exponent: must be a number > 0 or inf, got 0"),
    (evaluate, ["--pooling-exponent=-inf"], "argument --pooling-exponent: must be a number > 0 or inf, got -inf"),
    (evaluate, ["--chunk-size", "0"], "argument --chunk-size: must be an integer >= 1, got 0"),
    (evaluate, ["--num-distractors", "-1"], "argument --num-distractors: must be an integer >= 0, got -1"),
    (evaluate, ["--input-size", "0"], "argument --input-size: must be an integer >= 1, got 0"),
    (evaluate, ["-b", "0"], "argument -b/--batch-size: must be an integer >= 1, got 0"),
    (evaluate, ["-j", "-1"], "argument -j/--workers: must be an integer >= 0, got -1"),
    (evaluate, ["--print-freq", "0"], "argument --print-freq: must be an integer >= 1, got 0"),
    (evaluate, ["--multiscale", "--input-size", "1"], "--multiscale needs --input-size >= 2 for its scale s/2, got 1"),
    # the benchmarks
    (retrieval, ["-b", "1"], "argument -b/--batch-size: must be an integer >= 2, got 1"),
    (retrieval, ["-k", "0"], "argument -k: must be an integer >= 1, got 0"),
    (retrieval, ["--chunk-sizes", "64", "0"], "argument --chunk-sizes: must be an integer >= 1, got 0"),
    (retrieval, ["--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
    (sampling_margin, ["--reps", "1"], "argument --reps: must be an integer >= 2, got 1"),
    (sampling_margin, ["--target", "nan"], "argument --target: must be a finite number > 0, got nan"),
    (step_overhead, ["--classif-weight", "2"], "argument --classif-weight: must be a finite number in [0, 1], got 2"),
    (step_overhead, ["--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
    (channels_last_compile, ["--rounds", "0"], "argument --rounds: must be an integer >= 1, got 0"),
    (channels_last_compile, ["--input-size", "0"], "argument --input-size: must be an integer >= 1, got 0"),
    (data_pipeline, ["--epoch-len-factor", "inf"], "argument --epoch-len-factor: must be a finite number > 0"),
    (data_pipeline, ["--max-images", "0"], "argument --max-images: must be an integer >= 1, got 0"),
    (data_pipeline, ["-j", "-1"], "argument -j/--workers: must be an integer >= 0, got -1"),
]


@pytest.mark.parametrize(
    "script, argv, message", CASES, ids=[f"{script.__name__} {' '.join(argv)}" for script, argv, _ in CASES]
)
def test_bad_numbers_are_usage_errors_naming_the_flag(script, argv, message, base_argv, capsys):
    with pytest.raises(SystemExit) as exit:
        parse_command_line(script, [*base_argv[script], *argv])
    assert exit.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err


# The scripts that read a model with --checkpoint, and the other flags their parsers require.
CHECKPOINT_READERS = {
    evaluate: ["--dataset", "holidays"],
    extract: ["--images", "photos", "--output-dir", "out"],
    finetune_p: [],
    whiten: ["--whiten-path", "photos"],
    export: ["--output", "model.pt2"],
}


@pytest.mark.parametrize("script", CHECKPOINT_READERS, ids=lambda script: script.__name__)
def test_the_model_to_read_is_checkpoint_and_resume_still_names_it(script):
    parser = script.get_args_parser()
    for flag in ("--checkpoint", "--resume"):
        args = parser.parse_args([*CHECKPOINT_READERS[script], flag, "model.pth"])
        assert args.checkpoint == "model.pth" and "resume" not in vars(args)
    assert "--checkpoint FILE, --resume FILE" in parser.format_help()


def test_a_bad_number_exits_with_code_2_before_anything_starts(tmp_path):
    run = run_script("finetune_p.py", "--resume", tmp_path / "missing.pth", "--lr", "nan", check=False)
    assert run.returncode == 2
    assert "finetune_p.py: error: argument --lr: must be a finite number > 0, got nan" in run.stderr
    assert "Traceback" not in run.stderr
