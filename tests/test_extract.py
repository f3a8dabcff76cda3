import hashlib
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

import evaluate
import extract
from multigrain.images.image_io import BadImageError
from multigrain.model import build_model
from multigrain.search.descriptor_files import DescriptorCollection, read_features
from tests.scripts import ONE_THREAD, ROOT, run_script, script_command
from tools import synthetic_data
from utils import UsageError

INPUT_SIZE = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("extract_model") / "model.pth"
    torch.save({"model": build_model("resnet18", num_classes=10).state_dict(), "args": {"model": "resnet18"}}, path)
    return path


@pytest.fixture(scope="module")
def ukbench(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract_ukbench") / "ukbench"
    synthetic_data.make_ukbench(root, num_groups=6, image_size=(64, 48))
    return root


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, ukbench):
    """Nine readable images in two sub-folders and three bad files: truncated, empty, not an image."""
    root = tmp_path_factory.mktemp("extract_bad")
    for index, name in enumerate(sorted(os.listdir(ukbench / "full"))[:9]):
        os.makedirs(root / f"part{index % 2}", exist_ok=True)
        (root / f"part{index % 2}" / name).write_bytes((ukbench / "full" / name).read_bytes())
    good = (ukbench / "full" / "ukbench00000.jpg").read_bytes()
    (root / "part0" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "part1" / "empty.jpg").write_bytes(b"")
    (root / "part1" / "text.png").write_text("not an image")
    return root


def command(checkpoint, images, output_dir, *extra):
    return [
        "--checkpoint", str(checkpoint), "--images", str(images), "--output-dir", str(output_dir), "--device", "cpu",
        "-j", "0", "--input-size", str(INPUT_SIZE), *extra,
    ]  # fmt: skip


def run_extract(argv):
    return extract.main(extract.get_args_parser().parse_args(argv))


def without_npy_hashes(folder):
    """The manifest of an extract.py folder, each .npy file's SHA-256 checked against the file and left out."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for shard in manifest["shards"]:
        record = shard["files"][f"{shard['stem']}.npy"]
        assert record.pop("sha256") == hashlib.sha256((folder / f"{shard['stem']}.npy").read_bytes()).hexdigest()
    return manifest


def folder_bytes(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.mark.slow
def test_descriptors_equal_those_of_evaluate(checkpoint, ukbench, tmp_path):
    evaluate_dir = tmp_path / "evaluate"
    evaluate.main(
        evaluate.get_args_parser().parse_args(
            ["--resume", str(checkpoint), "--device", "cpu", "-j", "0", "--input-size", str(INPUT_SIZE),
             "--dataset", "ukbench", "--ukbench-path", str(ukbench), "--save-features", str(evaluate_dir),
             "--output-dir", str(evaluate_dir)]
        )
    )  # fmt: skip
    expected, expected_names = read_features(evaluate_dir / "ukbench.npy")

    run_extract(command(checkpoint, ukbench / "full", tmp_path / "folder", "--shard-size", "100"))
    folder = DescriptorCollection(tmp_path / "folder", "--database")
    assert ["full/" + name for name in folder.names] == expected_names
    np.testing.assert_array_equal(np.concatenate([part for _, part in folder.parts()]), expected)

    # A list file of paths relative to --root, in its own order, in shards of 5.
    listed = expected_names[::-1]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    run_extract(
        command(checkpoint, tmp_path / "list.txt", tmp_path / "list", "--root", str(ukbench), "--shard-size", "5")
    )
    shards = DescriptorCollection(tmp_path / "list", "--database")
    assert shards.names == listed and len(shards.arrays) == 5
    np.testing.assert_allclose(np.concatenate([part for _, part in shards.parts()]), expected[::-1], atol=1e-6)


@pytest.mark.slow
def test_killed_run_resumes_to_the_files_of_an_uninterrupted_run(checkpoint, ukbench, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    run_extract(command(checkpoint, ukbench / "full", uninterrupted, "--shard-size", "2"))

    killed = tmp_path / "killed"
    killed_argv = command(checkpoint, ukbench / "full", killed, "--shard-size", "2")
    argv, env = script_command("extract.py", *killed_argv, env=ONE_THREAD)
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    complete = 0
    while time.time() < deadline and process.poll() is None:
        if (killed / "manifest.json").is_file():
            complete = sum(shard["complete"] for shard in json.loads((killed / "manifest.json").read_text())["shards"])
            if complete:
                break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 1 <= complete < 12, f"the run was not killed mid-way ({complete} of 12 shards complete)"

    resumed = run_script("extract.py", *killed_argv, env=ONE_THREAD, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done_before = int(resumed.stdout.split(" of 12 shards already complete")[0].split()[-1])
    assert done_before >= complete
    assert folder_bytes(killed) == folder_bytes(uninterrupted)

    # Another model, input or size on the same folder is refused, naming what differs; nothing is touched.
    with pytest.raises(UsageError, match="extraction.input_size = 64, this command has 72"):
        run_extract(command(checkpoint, ukbench / "full", killed, "--shard-size", "2", "--input-size", "72"))
    with pytest.raises(UsageError, match="input.count = 24, this command has 9"):
        (tmp_path / "short.txt").write_text("\n".join(f"full/ukbench{i:05d}.jpg" for i in range(9)))
        run_extract(command(checkpoint, tmp_path / "short.txt", killed, "--root", str(ukbench), "--shard-size", "2"))
    assert folder_bytes(killed) == folder_bytes(uninterrupted)


@pytest.mark.slow
def test_bad_images_are_named_or_skipped_and_two_processes_equal_one(checkpoint, bad_folder, tmp_path):
    with pytest.raises(BadImageError, match="truncated.jpg"):
        run_extract(command(checkpoint, bad_folder, tmp_path / "stopped", "--shard-size", "4"))

    one = tmp_path / "one"
    run_extract(command(checkpoint, bad_folder, one, "--shard-size", "4", "--skip-bad-images"))
    assert (one / "bad_images.txt").read_text().splitlines() == [
        "part0/truncated.jpg",
        "part1/empty.jpg",
        "part1/text.png",
    ]
    skipped = DescriptorCollection(one, "--database")

    # Nothing else changes: the other images get the descriptors of a folder without the bad files.
    clean = tmp_path / "clean_images"
    for name in skipped.names:
        os.makedirs((clean / name).parent, exist_ok=True)
        (clean / name).write_bytes((bad_folder / name).read_bytes())
    run_extract(command(checkpoint, clean, tmp_path / "clean", "--shard-size", "100"))
    reference = DescriptorCollection(tmp_path / "clean", "--database")
    assert skipped.names == reference.names and len(skipped) == 9
    np.testing.assert_allclose(skipped.sample(100), reference.sample(100), atol=1e-6)

    two = tmp_path / "two"
    two_argv = command(checkpoint, bad_folder, two, "--shard-size", "4", "--skip-bad-images")
    run = run_script("extract.py", *two_argv, nproc=2, env=ONE_THREAD, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Same files; the descriptors up to float rounding, as each process batches its own share of the images, and
    # so the SHA-256 that the manifest records of each .npy file.
    two_files, one_files = folder_bytes(two), folder_bytes(one)
    assert two_files.keys() == one_files.keys()
    for name in one_files:
        if not name.endswith(".npy") and name != "manifest.json":
            assert two_files[name] == one_files[name], name
    assert without_npy_hashes(two) == without_npy_hashes(one)
    for name in one_files:
        if name.endswith(".npy"):
            np.testing.assert_allclose(np.load(two / name), np.load(one / name), atol=1e-6)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--images", "{tmp}/missing"], "--images {tmp}/missing does not exist"),
        (["--images", "{tmp}/empty"], "--images {tmp}/empty holds no image file"),
        (["--images", "{tmp}/list.txt"], "pass the folder its paths are relative to with --root"),
        (["--images", "{tmp}/twice.txt", "--root", "{tmp}"], "a.jpg is listed twice (line 2)"),
        (["--images", "{tmp}/empty", "--resume", "{tmp}/nothing.pth"], "--checkpoint {tmp}/nothing.pth is not a file"),
    ],
)
def test_bad_inputs_are_refused_by_name(flags, message, checkpoint, tmp_path):
    os.makedirs(tmp_path / "empty")
    (tmp_path / "list.txt").write_text("a.jpg\n")
    (tmp_path / "twice.txt").write_text("a.jpg\na.jpg\n")
    argv = command(checkpoint, "unused", tmp_path / "out") + [flag.format(tmp=tmp_path) for flag in flags]
    with pytest.raises(UsageError) as error:
        extract.check_args(extract.get_args_parser().parse_args(argv))
    assert message.format(tmp=tmp_path) in str(error.value)
    assert not (tmp_path / "out").exists()
