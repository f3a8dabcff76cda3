import os
from collections import namedtuple

import pytest
import torch

from tests.scripts import run_script
from tools.synthetic_data import make_imagefolder

TrainedCheckpoint = namedtuple("TrainedCheckpoint", ["path", "data_path", "val_acc1"])
SLOW_FIXTURES = {"trained_checkpoint"}
QUICK_BUDGET_S = 20
SETUP_S = pytest.StashKey[float]()


def pytest_addoption(parser):
    parser.addoption(
        "--quick",
        action="store_true",
        help="the edit loop's subset (make test-quick): leaves out the tests marked slow and warns of a test that "
        f"takes more than {QUICK_BUDGET_S} s to set up and run",
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the marks added here
def pytest_collection_modifyitems(config, items):
    """Skips the tests marked `cuda` (pytest.ini) when torch sees no CUDA device, marks `slow` the tests that
    use a slow fixture and, with --quick, leaves out the tests marked slow."""
    cuda = torch.cuda.is_available()
    for item in items:
        if item.get_closest_marker("cuda") and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA"))
        if SLOW_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    if config.getoption("quick"):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("slow")])
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """With --quick, warns of a test that took more than QUICK_BUDGET_S to set up and run, naming the mark it
    lacks. A warning, not a failure: on a loaded machine any test may take that long."""
    report = yield
    if item.config.getoption("quick"):
        if report.when == "setup":
            item.stash[SETUP_S] = report.duration
        elif report.when == "call" and item.stash[SETUP_S] + report.duration > QUICK_BUDGET_S:
            seconds, load = item.stash[SETUP_S] + report.duration, os.getloadavg()[0]
            item.warn(
                pytest.PytestWarning(
                    f"{seconds:.0f} s to set up and run (load average {load:.1f}), more than the {QUICK_BUDGET_S} s "
                    "of a test in the quick subset: mark it @pytest.mark.slow if it takes that long on its own"
                )
            )
    return report


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A resnet18 trained once per test session by `python train.py` (λ = 0.5, repeated augmentation)
    on a synthetic ImageFolder of 10 classes x 40 images of 64 px, in about 35 s on 2 CPU cores: the
    smallest run found whose descriptors beat an untrained network's on the synthetic retrieval
    benchmarks by a wide margin, whatever the training seed.

    Gives the checkpoint path, the ImageFolder root (train/ and val/) and the final validation top-1.
    """
    root = tmp_path_factory.mktemp("trained_checkpoint")
    data_path, output_dir = root / "data", root / "train"
    make_imagefolder(data_path, num_classes=10, train_per_class=40, val_per_class=10, image_size=64, seed=0)
    run = run_script(
        "train.py", "--data-path", data_path, "--output-dir", output_dir,
        "--model", "resnet18", "--device", "cpu", "-j", "0", "--print-freq", "1000", "-b", "64", "--epochs", "6",
        "--lr", "0.04", "--lr-scheduler", "cosineannealinglr", "--lr-warmup-epochs", "1", "--lr-warmup-decay", "0.1",
        "--train-crop-size", "64", "--val-resize-size", "73", "--val-crop-size", "64",
    )  # fmt: skip
    final = next(line for line in run.stdout.splitlines() if line.startswith("Final"))
    val_acc1 = float(final.split("Acc@1")[1].split()[0])
    return TrainedCheckpoint(output_dir / "checkpoint.pth", data_path, val_acc1)


@pytest.fixture(scope="session")
def tiny_whitened_checkpoint(tmp_path_factory):
    """An untrained resnet18 (5 classes, p = 3) with a random whitening folded into its classifier, saved as
    whiten.py saves its models: the inference model (trunk, GeM, whitening, classifier) in seconds."""
    from multigrain.model import build_model
    from multigrain.storage.checkpoint import make_checkpoint, save_checkpoint
    from multigrain.whitening import fold_whitening

    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=5).eval()
    dim = model.embedding_dim + 1
    mean = torch.randn(dim, generator=generator) / dim**0.5
    projection = torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0] * 3.0
    fold_whitening(model, mean, projection)
    path = tmp_path_factory.mktemp("tiny_whitened") / "whitened.pth"
    save_checkpoint(make_checkpoint("whiten", model.state_dict(), {"model": "resnet18"}), path)
    return path
