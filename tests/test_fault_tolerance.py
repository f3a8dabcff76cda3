import json
import os
import signal
import subprocess
import time

import pytest
import torch

import train
from multigrain.storage.checkpoint import save_checkpoint
from tests.scripts import ONE_THREAD, ROOT, script_command
from tools.synthetic_data import make_imagefolder

pytestmark = pytest.mark.slow  # training runs, killed workers
SMALL = [
    "--model", "resnet18", "--device", "cpu", "-j", "0", "--print-freq", "1000", "--train-crop-size", "32",
    "--val-resize-size", "36", "--val-crop-size", "32",
]  # fmt: skip


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    make_imagefolder(root, num_classes=3, train_per_class=8, val_per_class=3, image_size=32, seed=2)
    return root


def parse(args):
    return train.get_args_parser().parse_args(args)


def read_log(output_dir):
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def children_of(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def test_killed_worker_restarts_and_the_run_finishes_with_a_continuous_log(data, tmp_path):
    out = tmp_path / "run"
    cmd, env = script_command(
        "train.py", "--data-path", data, "--output-dir", out, *SMALL, "-b", "3", "--epochs", "4", "--lr", "0.01",
        "--epoch-len-factor", "6", nproc=2, torchrun_flags=["--standalone", "--max-restarts=1"], env=ONE_THREAD,
    )  # fmt: skip
    torchrun = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        deadline = time.time() + 240
        while not (out / "log.jsonl").exists() or not read_log(out):
            assert torchrun.poll() is None and time.time() < deadline, "no epoch finished"
            time.sleep(0.2)
        time.sleep(1.0)  # into the second epoch
        workers = children_of(torchrun.pid)
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        output, _ = torchrun.communicate(timeout=300)
    finally:
        if torchrun.poll() is None:
            os.killpg(torchrun.pid, signal.SIGKILL)  # torchrun and its workers
    assert torchrun.returncode == 0, output[-4000:]
    assert "Resuming from" in output
    assert [record["epoch"] for record in read_log(out)] == [0, 1, 2, 3]
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 3


def test_auto_resume_continues_and_can_be_turned_off(data, tmp_path):
    common = ["--data-path", str(data), "--output-dir", str(tmp_path), *SMALL, "-b", "6", "--lr", "0.01"]
    train.main(parse(common + ["--epochs", "1"]))
    train.main(parse(common + ["--epochs", "2", "--allow-change", "epochs"]))  # picks up checkpoint.pth by itself
    assert [r["epoch"] for r in read_log(tmp_path)] == [0, 1]
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "written after": "the last checkpoint"}) + "\n")
    train.main(parse(common + ["--epochs", "3", "--allow-change", "epochs"]))
    assert [r["epoch"] for r in read_log(tmp_path)] == [0, 1, 2]  # the stray line was replaced
    assert "written after" not in read_log(tmp_path)[2]

    fresh = tmp_path / "fresh"
    train.main(parse(common[:-6] + ["--output-dir", str(fresh), *SMALL, "-b", "6", "--lr", "0.01", "--epochs", "1"]))
    train.main(
        parse(
            common[:-6]
            + ["--output-dir", str(fresh), *SMALL, "-b", "6", "--lr", "0.01", "--epochs", "1", "--no-auto-resume"]
        )
    )
    assert [r["epoch"] for r in read_log(fresh)] == [0, 0]  # started over, as asked


SAVER = """
import sys, torch
from multigrain.storage.checkpoint import save_checkpoint
save_checkpoint({"version": 2, "weights": torch.ones(64, 1024, 1024)}, sys.argv[1])
"""


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"version": 1, "weights": torch.zeros(3)}, path)
    command, env = script_command("-c", SAVER, path)
    saver = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.time() + 60
    while not any(name.startswith(".tmp-") for name in os.listdir(tmp_path)):
        assert saver.poll() is None and time.time() < deadline, "the save never started"
        time.sleep(0.005)
    saver.send_signal(signal.SIGKILL)
    saver.wait()
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["version"] == 1 and torch.equal(checkpoint["weights"], torch.zeros(3))


class WritesAFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(data, tmp_path):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pth"
    torch.save({"model": WritesAFile(marker), "args": {"model": "resnet18"}}, crafted)
    for args in (
        ["--resume", str(crafted)],
        ["--test-only", "--resume", str(crafted)],
    ):
        with pytest.raises((ValueError, RuntimeError), match="crafted.pth"):
            train.main(parse(["--data-path", str(data), *SMALL, "--output-dir", str(tmp_path / "out"), *args]))
    assert not marker.exists()


def test_bad_images_name_the_file_or_are_skipped(data, tmp_path):
    (data / "train" / "class_000" / "zero.jpg").write_bytes(b"")
    (data / "train" / "class_001" / "notes.jpg").write_text("not a picture")
    good = next((data / "val" / "class_002").iterdir()).read_bytes()
    (data / "val" / "class_002" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    common = ["--data-path", str(data), *SMALL, "-b", "6", "--lr", "0.01", "--epochs", "1"]

    with pytest.raises(OSError, match=r"(zero|notes|truncated)\.jpg"):
        train.main(parse(common + ["--output-dir", str(tmp_path / "strict")]))

    metrics = train.main(parse(common + ["--output-dir", str(tmp_path / "lenient"), "--skip-bad-images"]))
    assert metrics["images"] == 9  # the truncated val image is not counted
    assert read_log(tmp_path / "lenient")[0]["val_images"] == 9


def test_non_finite_loss_stops_with_epoch_and_iteration(data, tmp_path, monkeypatch):
    common = ["--data-path", str(data), "--output-dir", str(tmp_path), *SMALL, "-b", "6", "--lr", "0.01"]
    train.main(parse(common + ["--epochs", "1"]))
    good = torch.load(tmp_path / "checkpoint.pth", weights_only=True)

    original = train.MultiGrainLoss.forward
    calls = {"n": 0}

    def nan_on_third_step(self, *args):
        losses = original(self, *args)
        calls["n"] += 1
        if calls["n"] == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(train.MultiGrainLoss, "forward", nan_on_third_step)
    with pytest.raises(FloatingPointError, match="epoch 1, iteration 2"):
        train.main(parse(common + ["--epochs", "2", "--allow-change", "epochs"]))
    after = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert after["epoch"] == 0
    assert torch.equal(after["model"]["classifier.weight"], good["model"]["classifier.weight"])


def test_argument_checks_before_anything_starts(data, tmp_path):
    empty_class = tmp_path / "empty"
    make_imagefolder(empty_class, num_classes=2, train_per_class=2, val_per_class=1, image_size=32, seed=0)
    for image in (empty_class / "val" / "class_001").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match="class_001 holds no image file"):
        train.check_args(parse(["--data-path", str(empty_class)]))
    with pytest.raises(ValueError, match="cannot hold the 3 copies"):
        train.check_args(parse(["--data-path", str(data), "-b", "2"]))

    out = tmp_path / "out"
    train.main(parse(["--data-path", str(data), "--output-dir", str(out), *SMALL, "-b", "6", "--epochs", "1"]))
    with pytest.raises(ValueError, match="holds a resnet18 model, but --model is resnet50"):
        train.check_args(parse(["--data-path", str(data), "--output-dir", str(out), "--model", "resnet50"]))
