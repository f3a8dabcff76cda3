"""Careless input to instance-only training on a collection of unlabelled images (issue 22): each case is refused by
train.py's check_args, before any process group or worker starts, with one line naming what is wrong."""

import pytest
import torch

import train
from multigrain.images.collection import read_collection
from multigrain.model import build_model
from multigrain.storage.checkpoint import make_checkpoint, save_checkpoint
from tools.synthetic_data import make_disc21, make_imagefolder
from utils import UsageError

COLLECTION = ["--data-kind", "collection", "--classif-weight", "0", "--model", "resnet18"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """20 unlabelled pictures in a flat folder (the DISC21 layout's training images), and an ImageFolder."""
    root = tmp_path_factory.mktemp("bad_collection")
    make_disc21(root / "disc21", num_references=2, num_matched=1, num_unrelated=0, num_training=20, image_size=32)
    make_imagefolder(root / "imagefolder", num_classes=2, train_per_class=2, val_per_class=1, image_size=32)
    return root


def held_out_list(photos, tmp_path):
    path = tmp_path / "held_out.txt"
    path.write_text("T000000.jpg\nT000001.jpg\nT000001.jpg\n")
    return path


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--data-kind", "collection", "--data-path", "{training}", "--classif-weight", "0.5"],
            "--classif-weight 0.5: the classification loss needs class labels, and --data-kind collection has none",
        ),
        (
            [*COLLECTION, "--data-path", "{training}", "-b", "32", "--val-fraction", "0.25"],
            "{training} has 15 training images (5 more held out), fewer than a global batch of 32: lower -b",
        ),
        (
            [*COLLECTION, "--data-path", "{training}", "-b", "8", "--val-fraction", "0.1"],
            "2 of the 20 images of --data-path {training} are held out for validation: scoring copy detection needs "
            "at least 4 (--val-fraction, --val-list)",
        ),
        (
            [*COLLECTION, "--data-path", "{training}", "-b", "8", "--val-list", "{list}", "--val-fraction", "0.3"],
            "--val-list and --val-fraction both choose the held-out images: pass one of them",
        ),
        (
            [*COLLECTION, "--data-path", "{training}", "-b", "8", "--val-list", "{list}"],
            "line 3: T000001.jpg was already listed on line 2",
        ),
        (
            [*COLLECTION, "--data-path", "{list}", "-b", "8"],
            "--data-path {list} is a list file: pass the folder its paths are relative to with --data-root",
        ),
        (
            [*COLLECTION, "--data-path", "{training}", "--augmentation", "copy-detection", "--color-jitter", "0.5"],
            "--color-jitter is a flag of --augmentation full, not copy-detection",
        ),
        (
            ["--data-path", "{training}", "--classif-weight", "0"],
            "--data-path {training} has no train/ folder of classes: to train on images without classes, pass "
            "--data-kind collection --classif-weight 0",
        ),
        (
            ["--data-path", "{imagefolder}", "--val-fraction", "0.2"],
            "--val-fraction is a flag of --data-kind collection",
        ),
    ],
)
def test_refused_before_anything_starts(argv, message, photos, tmp_path):
    names = {
        "training": photos / "disc21" / "training",
        "imagefolder": photos / "imagefolder",
        "list": held_out_list(photos, tmp_path),
    }
    argv = [flag.format(**names) for flag in argv] + ["--output-dir", str(tmp_path / "run")]
    with pytest.raises(UsageError) as error:
        train.check_args(train.get_args_parser().parse_args(argv))
    assert message.format(**names) in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_a_collection_changed_since_the_run_started_is_refused_naming_the_images(photos, tmp_path):
    training = photos / "disc21" / "training"
    run = tmp_path / "run"
    run.mkdir()
    before = read_collection(training, val_fraction=0.25)
    added = before.training.pop(3)  # the run started when this image was not there yet
    before.write_lists(run)
    state = build_model("resnet18", num_classes=0).state_dict()
    args = {"model": "resnet18", "batch_size": 8, "world_size": 1}
    checkpoint = make_checkpoint("train", state, args, epoch=0, collection=before.fingerprint(), optimizer={})
    save_checkpoint(checkpoint, run / "checkpoint.pth")
    argv = [*COLLECTION, "--data-path", str(training), "-b", "8", "--val-fraction", "0.25", "--output-dir", str(run)]
    with pytest.raises(UsageError) as error:
        train.check_args(train.get_args_parser().parse_args(argv))
    assert f"{run / 'checkpoint.pth'} was trained on another collection than --data-path's images now: " in str(
        error.value
    )
    assert f"training part: 1 added ({added}), none removed" in str(error.value)
    assert torch.load(run / "checkpoint.pth", weights_only=True)["epoch"] == 0  # untouched
