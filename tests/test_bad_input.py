"""Careless and hostile input (issue 15): each case ends in a message naming the file, flag or value, before
the expensive work where it can, and never in a silently wrong score, a hang or a leaked file."""

import errno
import functools
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import engine
import evaluate
import train
import whiten
from multigrain.evaluation.retrieval_datasets import read_copydays, read_holidays, read_revisitop, read_ukbench
from multigrain.images.datasets import ImageFolder, list_image_files
from multigrain.images.image_io import load_rgb
from multigrain.inference.extraction import NonFiniteOutputError, collate_image_list
from multigrain.model import build_model
from multigrain.storage import checkpoint as checkpoint_module
from multigrain.storage.atomic_write import WriteError
from multigrain.storage.checkpoint import (
    check_output_dir,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from presets import RetrievalPresetEval
from tools import synthetic_data
from utils import UsageError

SIZE = (40, 30)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input_data")
    synthetic_data.make_imagefolder(root, num_classes=4, train_per_class=2, val_per_class=2, image_size=32)
    return root


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input_bench")
    synthetic_data.make_holidays(root / "holidays", num_groups=3, image_size=SIZE)
    synthetic_data.make_ukbench(root / "ukbench", num_groups=3, image_size=SIZE)
    synthetic_data.make_copydays(root / "copydays", num_originals=3, num_distractors=4, image_size=SIZE)
    synthetic_data.make_revisitop(root / "revisitop", "roxford5k", 2, 12, image_size=SIZE)
    return root


@functools.cache
def random_state(num_classes):
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=num_classes).state_dict()


def write_model(path, num_classes=4, change=None):
    """A random resnet18 written as a checkpoint of this project; `change(state)` edits its state first."""
    state = {key: value.clone() for key, value in random_state(num_classes).items()}
    if change:
        change(state)
    save_checkpoint({"model": state, "args": {"model": "resnet18"}}, path)
    return path


def set_state(key, value):
    def change(state):
        state[key] = torch.full_like(state[key], value)

    return change


# --- checkpoints and models --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (set_state("pool.p", -2.0), "pool.p is -2.0; it must be positive"),
        (set_state("pool.p", float("nan")), "pool.p is nan"),
        (set_state("features.layer4.1.bn2.weight", float("nan")), "hold NaN or infinite values: features.layer4.1"),
        (set_state("classifier.bias", float("inf")), "hold NaN or infinite values: classifier.bias"),
    ],
)
def test_a_model_with_a_bad_pooling_exponent_or_nan_weights_is_refused_at_load(change, message, data, tmp_path):
    path = write_model(tmp_path / "model.pth", change=change)
    args = evaluate.get_args_parser().parse_args(
        [
            "--resume",
            str(path),
            "--dataset",
            "imagenet-val",
            "--imagenet-path",
            str(data),
            "--output-dir",
            str(tmp_path),
        ]
    )
    with pytest.raises(UsageError, match=message):
        evaluate.check_args(args)


def test_train_resume_refuses_a_stored_negative_pooling_exponent(data, tmp_path):
    state = {key: value.clone() for key, value in random_state(4).items()}
    state["pool.p"] = torch.tensor(-2.0)
    save_checkpoint(make_checkpoint("train", state, {"model": "resnet18"}, epoch=0), tmp_path / "checkpoint.pth")
    args = train.get_args_parser().parse_args(
        ["--data-path", str(data), "--model", "resnet18", "--output-dir", str(tmp_path)]
    )
    with pytest.raises(UsageError, match="checkpoint.pth: its GeM exponent pool.p is -2.0"):
        train.check_args(args)


def test_train_test_only_refuses_a_class_count_mismatch(data, tmp_path):
    path = write_model(tmp_path / "seven.pth", num_classes=7)
    args = train.get_args_parser().parse_args(
        ["--data-path", str(data), "--model", "resnet18", "--test-only", "--resume", str(path)]
    )
    with pytest.raises(UsageError, match=f"{path} classifies 7 classes, --data-path {data} has 4"):
        train.check_args(args)


def test_the_load_error_does_not_tell_to_load_with_weights_only_false(tmp_path):
    path = tmp_path / "hostile.pth"
    torch.save({"model": {}, "hook": socket.gethostname}, path)
    with pytest.raises(RuntimeError) as error:
        load_checkpoint(path)
    assert "weights_only=False" not in str(error.value)
    assert "Only a file you trust may be converted" in str(error.value)
    assert "sha256sum" in str(error.value)


def temporary_name(pid, host=None):
    return f".tmp-{host or socket.gethostname()}-{pid}-0123456789abcdef.pth"


def test_stale_temporary_files_are_removed_at_start_up_and_live_ones_kept(tmp_path, capsys):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    names = {
        "dead": temporary_name(dead_pid),
        "alive": temporary_name(os.getpid()),
        "other_host": temporary_name(dead_pid, host="another-machine"),
        "old_other_host": temporary_name(dead_pid, host="old-machine"),
        "not_ours": ".tmp-notes.pth",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    os.utime(tmp_path / names["old_other_host"], (0, 0))
    check_output_dir(tmp_path, "train")
    assert f"removed 2 temporary files left by interrupted writes in {tmp_path}" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == sorted([names["alive"], names["other_host"], names["not_ours"]])


def test_a_save_that_raises_leaves_no_temporary_file(tmp_path):
    save_checkpoint({"version": 1}, tmp_path / "checkpoint.pth")
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for an unpicklable object
        save_checkpoint({"version": 2, "bad": lambda: None}, tmp_path / "checkpoint.pth")
    assert os.listdir(tmp_path) == ["checkpoint.pth"]
    assert load_checkpoint(tmp_path / "checkpoint.pth") == {"version": 1}


class FailingFile:
    """The file object of a save whose writes fail after the first `good_writes` with `error`."""

    def __init__(self, file, error, good_writes=2):
        self.file, self.error, self.good_writes = file, error, good_writes

    def write(self, data):
        if self.good_writes == 0:
            raise self.error
        self.good_writes -= 1
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()


def failing_fdopen(monkeypatch, error):
    real_fdopen = os.fdopen
    monkeypatch.setattr(checkpoint_module.os, "fdopen", lambda fd, mode: FailingFile(real_fdopen(fd, mode), error))


def test_a_full_disk_during_a_save_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"version": 1}, path)
    failing_fdopen(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(WriteError) as error:
        save_checkpoint({"version": 2, "weights": torch.ones(100000)}, path)
    assert f"cannot write checkpoint {path}: the disk is full" in str(error.value)
    assert f"the previous {path} is intact" in str(error.value)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["checkpoint.pth"] and load_checkpoint(path) == {"version": 1}


def test_an_interrupt_during_a_save_is_an_interrupt_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"version": 1}, path)
    failing_fdopen(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"version": 2, "weights": torch.ones(100000)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["checkpoint.pth"] and load_checkpoint(path) == {"version": 1}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_checkpoints_get_the_mode_of_a_plain_open(umask, mode, tmp_path):
    previous = os.umask(umask)
    try:
        save_checkpoint({"version": 1}, tmp_path / "checkpoint.pth")
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "checkpoint.pth").st_mode & 0o777 == mode


# --- non-finite outputs ------------------------------------------------------------------------------------


def overflowing_model(path):
    """Finite weights whose activations exceed 1, so that a GeM exponent of 1e9 overflows to infinity."""
    return write_model(path, change=set_state("features.layer4.1.bn2.bias", 3.0))


def test_nan_descriptors_stop_the_retrieval_evaluation_and_write_no_metrics(bench, tmp_path):
    path = overflowing_model(tmp_path / "model.pth")
    out = tmp_path / "out"
    argv = ["--resume", str(path), "--device", "cpu", "-j", "0", "--input-size", "40", "--dataset", "holidays"]
    argv += ["--holidays-path", str(bench / "holidays"), "--pooling-exponent", "1e9", "--output-dir", str(out)]
    with pytest.raises(NonFiniteOutputError, match=r"(\d+) of \1 images give NaN or infinite descriptors .*jpg/1000"):
        evaluate.main(evaluate.get_args_parser().parse_args(argv))
    assert not (out / "metrics.json").exists()


def test_nan_logits_stop_the_classification_evaluation_naming_the_images(data):
    model = build_model("resnet18", num_classes=4).eval()
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    dataset = ImageFolder(data / "val", RetrievalPresetEval(max_size=32), loader=load_rgb)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_image_list)
    with pytest.raises(NonFiniteOutputError, match=r"8 of 8 images give NaN or infinite logits \(.*class_000_00000"):
        engine.evaluate(model, loader, torch.device("cpu"))


def test_nan_pooled_vectors_stop_whitening_before_the_fit(data, tmp_path):
    path = write_model(
        tmp_path / "model.pth",
        change=lambda state: (set_state("pool.p", 1e9)(state), set_state("features.layer4.1.bn2.bias", 3.0)(state)),
    )
    out = tmp_path / "out"
    argv = ["--resume", str(path), "--whiten-path", str(data / "train"), "--device", "cpu", "-j", "0"]
    argv += ["--shrinkage", "0.5"]
    with pytest.raises(NonFiniteOutputError, match=r"8 of 8 images give NaN or infinite pooled vectors \(class_000"):
        whiten.main(whiten.get_args_parser().parse_args([*argv, "--input-size", "32", "--output-dir", str(out)]))
    assert not (out / "whitened.pth").exists()


def test_a_whitening_that_fails_its_own_check_is_not_saved(data, tmp_path, monkeypatch):
    path = write_model(tmp_path / "model.pth")
    real_fit = whiten.fit_whitening

    def amplifying_fit(pooled, shrinkage):  # what a fit on nearly identical images gives: a huge projection
        mean, projection = real_fit(pooled, shrinkage)
        return mean, projection * 1e3

    monkeypatch.setattr(whiten, "fit_whitening", amplifying_fit)
    out = tmp_path / "out"
    argv = ["--resume", str(path), "--whiten-path", str(data / "train"), "--device", "cpu", "-j", "0"]
    argv += ["--input-size", "32", "--shrinkage", "0.5", "--output-dir", str(out)]
    with pytest.raises(FloatingPointError, match="the whitening failed its check: .* more than the 1 that --shrinkage"):
        whiten.main(whiten.get_args_parser().parse_args(argv))
    assert not (out / "whitened.pth").exists()


# --- benchmark layouts -------------------------------------------------------------------------------------


def copy_tree(source, target):
    subprocess.run(["cp", "-r", str(source), str(target)], check=True)
    return target


def renamed_ukbench(folder):
    os.remove(folder / "full" / "ukbench00001.jpg")
    os.link(folder / "full" / "ukbench00002.jpg", folder / "full" / "ukbench00099.png")


def duplicate_ukbench_number(folder):
    os.link(folder / "full" / "ukbench00002.jpg", folder / "full" / "ukbench00002.png")
    for number in range(12, 15):
        os.link(folder / "full" / "ukbench00002.jpg", folder / "full" / f"ukbench{number:05d}.jpg")


def foreign_ukbench_name(folder):
    for name in ("photo.jpg", "a.jpg", "b.jpg", "c.jpg"):
        os.link(folder / "full" / "ukbench00002.jpg", folder / "full" / name)


@pytest.mark.parametrize(
    "damage, message",
    [
        (renamed_ukbench, "2 groups are incomplete, missing ukbench00001, ukbench00096, ukbench00097, ukbench00098"),
        (duplicate_ukbench_number, "ukbench00002.jpg and ukbench00002.png .* have the same number"),
        (foreign_ukbench_name, "a.jpg is not named ukbenchNNNNN.jpg"),
    ],
)
def test_ukbench_groups_come_from_the_numbers_in_the_names(damage, message, bench, tmp_path):
    folder = copy_tree(bench / "ukbench", tmp_path / "ukbench")
    damage(folder)
    with pytest.raises(ValueError, match=message):
        read_ukbench(folder)


def test_ukbench_orders_the_images_by_number(bench, tmp_path):
    folder = copy_tree(bench / "ukbench", tmp_path / "ukbench")
    os.rename(folder / "full" / "ukbench00005.jpg", folder / "full" / "ukbench00005.png")
    names = read_ukbench(folder).database.names
    assert names[4:6] == ["full/ukbench00004.jpg", "full/ukbench00005.png"]


def test_holidays_refuses_two_files_with_one_number(bench, tmp_path):
    folder = copy_tree(bench / "holidays", tmp_path / "holidays")
    os.link(folder / "jpg" / "100000.jpg", folder / "jpg" / "100000.JPG")
    with pytest.raises(ValueError, match="two Holidays images have the number 100000: 100000.JPG and 100000.jpg"):
        read_holidays(folder)


def test_copydays_refuses_distractors_that_are_benchmark_images(bench, tmp_path):
    copydays = bench / "copydays"
    with pytest.raises(ValueError, match=r"(\d+) distractors \(--distractors-path .*\) are Copydays images"):
        read_copydays(copydays, copydays)
    distractors = copy_tree(copydays / "distractors", tmp_path / "distractors")
    original = sorted(os.listdir(copydays / "original"))[0]
    (distractors / "copy.jpg").write_bytes((copydays / "original" / original).read_bytes())
    with pytest.raises(ValueError, match="1 distractors .* are Copydays images, e.g. .*copy.jpg"):
        read_copydays(copydays, distractors)
    os.remove(distractors / "copy.jpg")
    assert len(read_copydays(copydays, distractors).database) == 3 + 4


def edit_gnd(key, value, query=0):
    def edit(ground_truth):
        ground_truth["gnd"][query][key] = value

    return edit


def no_hard_anywhere(ground_truth):
    for entry in ground_truth["gnd"]:
        entry["hard"] = []


@pytest.mark.parametrize(
    "edit, message",
    [
        (edit_gnd("bbx", [500.0, 500.0, 600.0, 600.0]), r"query 0 \(.*\): 'bbx' .* lies outside its 40×30 image"),
        (edit_gnd("bbx", [20.0, 5.0, 10.0, 25.0]), "query 0 .*: 'bbx' .* is inverted or has zero area"),
        (edit_gnd("bbx", [5.0, 5.0, 5.0, 25.0]), "query 0 .*: 'bbx' .* is inverted or has zero area"),
        (edit_gnd("bbx", [5.0, float("nan"), 10.0, 25.0], query=1), "query 1 .*: 'bbx' is not a box .* of finite"),
        (edit_gnd("easy", np.array([1.5, 2.0])), r"query 0 .*: 'easy' holds values that are not whole .*1\.5"),
        (edit_gnd("junk", [99]), "query 0 .*: 'junk' has indices outside the 12 database images"),
        (lambda gt: (edit_gnd("easy", [])(gt), edit_gnd("hard", [])(gt)), "query 0 .*: no easy or hard positive"),
        (no_hard_anywhere, "no query has a 'hard' positive: the Hard mAP would be undefined"),
    ],
)
def test_revisitop_ground_truth_is_checked_when_read(edit, message, bench, tmp_path):
    folder = copy_tree(bench / "revisitop" / "roxford5k", tmp_path / "roxford5k")
    with open(folder / "gnd_roxford5k.pkl", "rb") as f:
        ground_truth = pickle.load(f)
    edit(ground_truth)
    with open(folder / "gnd_roxford5k.pkl", "wb") as f:
        pickle.dump(ground_truth, f)
    with pytest.raises(ValueError, match=message):
        read_revisitop(folder, "roxford5k")


# --- image listers -----------------------------------------------------------------------------------------


def test_fifos_and_link_loops_are_not_images(data, tmp_path):
    root = copy_tree(data / "train", tmp_path / "train")
    os.mkfifo(root / "class_000" / "fifo.jpg")
    os.symlink(".", root / "class_001" / "loop")
    os.symlink("..", root / "class_002" / "parent")
    expected = {f"class_{c:03d}/class_{c:03d}_{i:05d}.jpg" for c in range(4) for i in range(2)}
    folder = ImageFolder(root)
    assert sorted(os.path.relpath(path, root) for path, _ in folder.samples) == sorted(expected)
    assert list_image_files(root, recursive=True) == sorted(expected)
    assert whiten.whitening_image_names(str(root)) == sorted(expected)
    only_fifo = tmp_path / "only_fifo"
    (only_fifo / "val" / "class_000").mkdir(parents=True)
    os.mkfifo(only_fifo / "val" / "class_000" / "fifo.jpg")
    args = train.get_args_parser().parse_args(["--data-path", str(only_fifo), "--test-only"])
    with pytest.raises(UsageError, match="class folder .*class_000 holds no image file"):
        train.check_args(args)


@pytest.mark.parametrize(
    "lines, message",
    [
        (["/etc/hostname"], "line 1: /etc/hostname is an absolute path"),
        (
            ["class_000/class_000_00000.jpg", "../train/class_000/class_000_00001.jpg"],
            "line 2: .* leaves --whiten-path",
        ),
        (["class_000/class_000_00000.jpg", "./class_000/class_000_00000.jpg"], "line 2: .* is the image of line 1"),
    ],
)
def test_whiten_list_paths_stay_inside_whiten_path_once(lines, message, data, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message):
        whiten.whitening_image_names(str(data / "train"), str(listing))


# --- flags and outputs -------------------------------------------------------------------------------------


def test_num_distractors_without_distractors_is_refused(bench, tmp_path):
    model = write_model(tmp_path / "model.pth")
    argv = ["--resume", str(model), "--dataset", "copydays", "--copydays-path", str(bench / "copydays")]
    with pytest.raises(UsageError, match="--num-distractors 5 needs --distractors-path"):
        evaluate.check_args(evaluate.get_args_parser().parse_args([*argv, "--num-distractors", "5"]))


@pytest.mark.parametrize("flag", ["--output-dir", "--save-features"])
@pytest.mark.parametrize("under_a_file", [False, True])
def test_evaluate_outputs_that_cannot_be_written_are_refused_first(flag, under_a_file, bench, tmp_path):
    model = write_model(tmp_path / "model.pth")
    target = tmp_path / "a_file"
    target.write_text("not a folder")
    if under_a_file:
        target = target / "out"
    argv = ["--resume", str(model), "--dataset", "ukbench", "--ukbench-path", str(bench / "ukbench"), flag, str(target)]
    if flag == "--save-features":
        argv += ["--output-dir", str(tmp_path)]
    with pytest.raises(UsageError, match=f"{flag} {target} is not a writable folder"):
        evaluate.check_args(evaluate.get_args_parser().parse_args(argv))


def test_train_output_dir_under_a_file_is_refused_first(data, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    args = train.get_args_parser().parse_args(["--data-path", str(data), "--output-dir", str(tmp_path / "a_file/run")])
    with pytest.raises(UsageError, match="--output-dir .*a_file/run is not a writable folder"):
        train.check_args(args)


def test_metrics_json_never_holds_nan(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "evaluate_retrieval", lambda *args: {"mAP": float("nan")})
    argv = ["--load-features", str(tmp_path), "--dataset", "holidays", "--holidays-path", str(bench / "holidays")]
    with pytest.raises(FloatingPointError, match=r"non-finite results \(holidays mAP\): metrics.json is not written"):
        evaluate.main(evaluate.get_args_parser().parse_args([*argv, "--device", "cpu", "--output-dir", str(tmp_path)]))
    assert not (tmp_path / "metrics.json").exists()
