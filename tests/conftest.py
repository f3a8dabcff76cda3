import os
import subprocess
import sys
from collections import namedtuple

import pytest

from synthetic_data import make_imagefolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TrainedCheckpoint = namedtuple("TrainedCheckpoint", ["path", "data_path", "val_acc1"])


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A resnet18 trained once per test session by `python train.py` (λ = 0.5, repeated augmentation)
    on a synthetic ImageFolder of 5 classes x 30 images of 48 px, in about 10 s on 2 CPU cores.

    Gives the checkpoint path, the ImageFolder root (train/ and val/) and the final validation top-1.
    """
    root = tmp_path_factory.mktemp("trained_checkpoint")
    data_path, output_dir = root / "data", root / "train"
    make_imagefolder(data_path, num_classes=5, train_per_class=30, val_per_class=10, image_size=48, seed=0)
    command = [
        sys.executable, "train.py", "--data-path", str(data_path), "--output-dir", str(output_dir),
        "--model", "resnet18", "--device", "cpu", "-j", "0", "--print-freq", "1000", "-b", "32", "--epochs", "4",
        "--lr", "0.01", "--lr-scheduler", "cosineannealinglr", "--train-crop-size", "48", "--val-resize-size", "54",
        "--val-crop-size", "48",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=ROOT)
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    final = next(line for line in run.stdout.splitlines() if line.startswith("Final"))
    val_acc1 = float(final.split("Acc@1")[1].split()[0])
    return TrainedCheckpoint(output_dir / "checkpoint.pth", data_path, val_acc1)
