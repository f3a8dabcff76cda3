import json
import os

import pytest
import torch

import train
from tests.scripts import ONE_THREAD, run_script
from tools.synthetic_data import make_imagefolder

SMALL = ["--model", "resnet18", "--device", "cpu", "-j", "0", "--print-freq", "1000"]


def size_flags(size):
    return ["--train-crop-size", str(size), "--val-resize-size", str(size + size // 8), "--val-crop-size", str(size)]


@pytest.fixture(scope="module")
def five_classes(tmp_path_factory):
    root = tmp_path_factory.mktemp("five_classes")
    make_imagefolder(root, num_classes=5, train_per_class=30, val_per_class=10, image_size=48, seed=0)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    make_imagefolder(root, num_classes=3, train_per_class=8, val_per_class=3, image_size=32, seed=1)
    return root


def read_log(output_dir):
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def parse(args):
    return train.get_args_parser().parse_args(args)


@pytest.mark.slow
def test_torchrun_two_processes_learns(five_classes, tmp_path):
    out = tmp_path / "run"
    args = [
        "--data-path", str(five_classes), "--output-dir", str(out), *SMALL, *size_flags(48), "-b", "16",
        "--epochs", "4", "--lr", "0.01", "--lr-scheduler", "cosineannealinglr", "--lr-warmup-epochs", "1",
        "--lr-warmup-decay", "0.1",
    ]  # fmt: skip
    run = run_script("train.py", *args, nproc=2, env=ONE_THREAD, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "300 samples per epoch" in run.stdout  # 150 images x epoch-len-factor 2.0

    log = read_log(out)
    assert [record["epoch"] for record in log] == [0, 1, 2, 3]
    assert all(record["val_images"] == 50 for record in log)  # every val image counted once over 2 ranks
    assert log[-1]["val_acc1"] >= 60.0, log[-1]  # chance is 20%
    assert log[-1]["train_margin_loss"] > 0

    checkpoint = torch.load(out / "checkpoint.pth", weights_only=True)
    assert {"model", "criterion", "optimizer", "lr_scheduler", "scaler", "epoch", "args"} <= checkpoint.keys()
    assert checkpoint["epoch"] == 3 and checkpoint["args"]["classif_weight"] == 0.5
    assert checkpoint["model"]["pool.p"].item() == 3.0
    beta = checkpoint["criterion"]["margin_loss.beta"].item()
    assert beta != pytest.approx(1.2) and beta == pytest.approx(log[-1]["beta"])

    flags = [*SMALL, *size_flags(48), "-b", "16", "--test-only", "--resume", out / "checkpoint.pth"]
    test_only = run_script("train.py", "--data-path", five_classes, *flags, env=ONE_THREAD, check=False)
    assert test_only.returncode == 0, test_only.stderr[-3000:]
    assert f"Acc@1 {log[-1]['val_acc1']:.3f}" in test_only.stdout


def state_of(output_dir):
    checkpoint = torch.load(os.path.join(output_dir, "checkpoint.pth"), weights_only=True)
    return checkpoint


def assert_same_state(a, b):
    for key in ("model", "criterion"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    for group_a, group_b in zip(a["optimizer"]["param_groups"], b["optimizer"]["param_groups"]):
        assert group_a["lr"] == group_b["lr"]
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"]


@pytest.mark.slow
def test_resume_gives_the_state_of_an_uninterrupted_run(tiny, tmp_path):
    common = ["--data-path", str(tiny), *SMALL, *size_flags(32), "-b", "6", "--lr", "0.02", "--lr-step-size", "1"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train.main(parse(common + ["--epochs", "2", "--output-dir", str(straight)]))
    train.main(parse(common + ["--epochs", "1", "--output-dir", str(interrupted)]))
    first_epoch = state_of(interrupted)
    train.main(
        parse(
            common
            + ["--epochs", "2", "--output-dir", str(interrupted), "--resume", str(interrupted / "checkpoint.pth")]
            + ["--allow-change", "epochs"]
        )
    )

    assert_same_state(state_of(straight), state_of(interrupted))
    assert not torch.equal(first_epoch["model"]["classifier.weight"], state_of(straight)["model"]["classifier.weight"])
    assert [r["epoch"] for r in read_log(interrupted)] == [0, 1]
    straight_log, resumed_log = read_log(straight), read_log(interrupted)
    assert straight_log[1]["train_loss"] == resumed_log[1]["train_loss"]


@pytest.mark.slow
def test_classification_only_with_bfloat16_autocast(tiny, tmp_path):
    args = parse(
        [
            "--data-path",
            str(tiny),
            *SMALL,
            *size_flags(32),
            "-b",
            "6",
            "--epochs",
            "1",
            "--lr",
            "0.02",
            "--classif-weight",
            "1",
            "--no-ra-sampler",
            "--epoch-len-factor",
            "1",
            "--amp",
            "--amp-dtype",
            "bfloat16",
            "--output-dir",
            str(tmp_path),
        ]
    )
    metrics = train.main(args)
    assert metrics["images"] == 9
    log = read_log(tmp_path)
    assert "train_margin_loss" not in log[0]
    assert log[0]["beta"] == pytest.approx(1.2)  # λ = 1: beta gets no gradient


@pytest.mark.slow
def test_lambda_one_with_repeated_augmentation_and_p1(tiny, tmp_path):
    args = parse(
        [
            "--data-path",
            str(tiny),
            *SMALL,
            *size_flags(32),
            "-b",
            "6",
            "--epochs",
            "1",
            "--lr",
            "0.02",
            "--classif-weight",
            "1",
            "--pooling-exponent",
            "1",
            "--output-dir",
            str(tmp_path),
        ]
    )
    train.main(args)
    checkpoint = state_of(tmp_path)
    assert checkpoint["model"]["pool.p"].item() == 1.0


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--classif-weight", "1.5"], "--classif-weight/--classify-weight: must be a finite number in [0, 1]"),
        (["--classif-weight", "-0.1"], "--classif-weight/--classify-weight: must be a finite number in [0, 1]"),
        (["--no-ra-sampler"], "needs repeated augmentation"),
        (["--ra-reps", "0"], "--ra-reps: must be an integer >= 1"),
        (["--ra-reps", "1"], "needs --ra-reps >= 2"),
        (["-b", "0"], "--batch-size: must be an integer >= 1"),
        (["--train-crop-size", "0"], "--train-crop-size: must be an integer >= 1"),
        (["--epoch-len-factor", "0"], "--epoch-len-factor: must be a finite number > 0"),
        (["--pooling-exponent", "0"], "--pooling-exponent: must be a number > 0 or inf"),
        (["--sampling-cutoff", "1.5"], "--sampling-cutoff"),
        (["--lr-warmup-epochs", "5", "--epochs", "5"], "--lr-warmup-epochs"),
        (["--resume", "/nonexistent/checkpoint.pth"], "/nonexistent/checkpoint.pth"),
    ],
)
def test_bad_flags_are_refused(tiny, flags, message, capsys):
    with pytest.raises((ValueError, SystemExit)) as error:
        train.check_args(parse(["--data-path", str(tiny), *flags]))
    assert message in str(error.value) + capsys.readouterr().err


def test_bad_flags_exit_before_any_process_starts(tmp_path):
    run = run_script("train.py", "--data-path", tmp_path, "--classif-weight", "2", env=ONE_THREAD, check=False)
    assert run.returncode == 2
    assert "error: argument --classif-weight/--classify-weight: must be a finite number in [0, 1], got 2" in run.stderr
    assert "Traceback" not in run.stderr
    missing = run_script("train.py", "--data-path", tmp_path / "nowhere", env=ONE_THREAD, check=False)
    assert missing.returncode == 2 and "nowhere/train is not a folder" in missing.stderr


@pytest.mark.slow
def test_train_py_with_decode_once_and_channels_last(tmp_path):
    make_imagefolder(tmp_path / "data", num_classes=3, train_per_class=8, val_per_class=3, image_size=32, seed=1)
    flags = [
        "--data-path", str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"), "--model", "resnet18",
        "--device", "cpu", "-j", "0", "--print-freq", "1000", "--train-crop-size", "32", "--val-resize-size", "36",
        "--val-crop-size", "32", "-b", "6", "--epochs", "1", "--lr", "0.01", "--ra-decode-once", "--channels-last",
    ]  # fmt: skip
    metrics = train.main(train.get_args_parser().parse_args(flags))
    assert metrics["images"] == 9
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "train_margin_loss" in record and record["train_margin_loss"] > 0
    weight = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["model"]["features.conv1.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last)

    refused = train.get_args_parser().parse_args([*flags, "--no-ra-sampler", "--classif-weight", "1"])
    with pytest.raises(ValueError, match="--ra-decode-once"):
        train.check_args(refused)


# The recipe as it was kept by hand before it was derived from the flag groups: a run continues only under these.
RECIPE = [
    "model", "weights", "init_from", "pooling_exponent", "sync_bn", "freeze_bn_stats",
    "classif_weight", "margin", "beta_init", "beta_lr", "sampling_cutoff", "nonzero_loss_cutoff",
    "negative_sampling", "label_smoothing",
    "ra_sampler", "ra_reps", "epoch_len_factor", "seed", "data_kind",
    "augmentation", "auto_augment", "ra_magnitude", "augmix_severity", "color_jitter", "lighting", "train_crop_size",
    "interpolation",
    "opt", "lr", "momentum", "weight_decay", "norm_weight_decay", "clip_grad_norm", "epochs",
    "lr_scheduler", "lr_steps", "lr_step_size", "lr_gamma", "lr_min", "lr_warmup_epochs", "lr_warmup_method",
    "lr_warmup_decay",
]  # fmt: skip


def test_every_flag_is_in_exactly_one_named_group():
    parser = train.get_args_parser()
    every_flag = sorted(vars(parser.parse_args([])))
    grouped = [action.dest for group in parser.flag_groups for action in group.actions]
    assert sorted(grouped) == every_flag  # none left out, none in two groups
    titles = [group.title for group in parser.flag_groups]
    assert len(set(titles)) == len(titles)
    help_text = parser.format_help()
    positions = [help_text.index(f"\n{title}:") for title in titles]
    assert positions == sorted(positions)  # --help shows the groups, the recipe's first
    assert [group.recipe for group in parser.flag_groups] == [True] * 5 + [False] * 3


def test_the_recipe_is_derived_from_the_recipe_groups():
    assert list(train.recipe().flags) == RECIPE
    assert (
        train.recipe().flags["weight_decay"] == "--wd" and train.recipe().flags["classif_weight"] == "--classif-weight"
    )
    args = parse(["-b", "32"])
    assert list(train.recipe().of(args, world_size=4)) == [*RECIPE, "global_batch_size"]
    assert train.recipe().of(args, world_size=4)["global_batch_size"] == 128


def test_a_recipe_flag_added_since_a_state_was_written_has_its_default_there():
    args = parse(["-b", "32"])
    stored = train.recipe().of(args, world_size=1)
    del stored["augmentation"]
    assert train.recipe().check({"recipe": stored}, "c.pth", args, 1) == []
    changed = parse(["-b", "32", "--augmentation", "copy-detection"])
    with pytest.raises(ValueError, match="--augmentation: 'full' → 'copy-detection'"):
        train.recipe().check({"recipe": stored}, "c.pth", changed, 1)


def learning_rates(args):
    """The rate of each epoch under the schedule train.py builds from `args`."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    lr_scheduler = train.build_lr_scheduler(args, optimizer)
    rates = []
    for _ in range(args.epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        lr_scheduler.step()
    return rates


@pytest.mark.parametrize(
    "flags,epochs_per_rate",
    [
        ([], [30, 30, 30, 30]),  # the default, torchvision's StepLR(30): drops at epochs 30, 60, 90
        # The published code's `epoch > drop` for drops 30, 60, 90: epochs 0-30 at 0.2, 31-60, 61-90, 91-119.
        (["--lr-scheduler", "multisteplr", "--lr-steps", "31", "61", "91"], [31, 30, 30, 29]),
    ],
)
def test_the_learning_rate_of_every_epoch(tiny, flags, epochs_per_rate):
    args = parse(["--data-path", str(tiny), *flags])
    train.check_args(args)
    rates = learning_rates(args)
    expected = [rate for rate, epochs in zip([0.2, 0.02, 0.002, 0.0002], epochs_per_rate) for _ in range(epochs)]
    assert len(rates) == len(expected) == 120
    for epoch, (rate, expected_rate) in enumerate(zip(rates, expected)):
        assert rate == pytest.approx(expected_rate, rel=1e-9), f"epoch {epoch}"
