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
from multigrain.storage.checkpoint import make_checkpoint, save_checkpoint
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


def test_input_size_defaults_to_the_checkpoints_s_star_and_says_so(checkpoint, ukbench, tmp_path, capsys, monkeypatch):
    """The case of issue 21: a model whitened at s* was extracted at 500 without a word. Now at s*, said, and
    recorded in the manifest; --input-size still wins; a file without s* gives 500, said too."""
    whitened = tmp_path / "whitened.pth"
    state = torch.load(checkpoint, weights_only=True)["model"]
    save_checkpoint(make_checkpoint("whiten", state, {"model": "resnet18"}, input_size=48), whitened)
    (tmp_path / "two.txt").write_text("full/ukbench00000.jpg\nfull/ukbench00005.jpg\n")

    def extract_with(model, output_dir, *flags):
        run_extract([
            "--checkpoint", str(model), "--images", str(tmp_path / "two.txt"), "--root", str(ukbench),
            "--output-dir", str(tmp_path / output_dir), "--device", "cpu", "-j", "0", *flags,
        ])  # fmt: skip
        manifest = json.loads((tmp_path / output_dir / "manifest.json").read_text())
        return (
            capsys.readouterr().out,
            manifest["extraction"]["input_size"],
            read_features(tmp_path / output_dir / "descriptors-00000.npy")[0],
        )

    out, size, default = extract_with(whitened, "default")
    assert f"--input-size 48 from {whitened} (whiten.py's s*)" in out and size == 48
    out, size, explicit = extract_with(checkpoint, "explicit", "--input-size", "48")  # the same weights
    assert "--input-size 48 from" not in out and size == 48
    np.testing.assert_array_equal(default, explicit)
    out, size, _ = extract_with(whitened, "flag wins", "--input-size", "40")
    assert "--input-size" not in out.split("Namespace")[0] and size == 40
    out, size, _ = extract_with(checkpoint, "no s*")
    assert f"--input-size 500, the default: {checkpoint} stores no s*" in out and size == 500

    # Under torchrun or SLURM only the first process says it.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = [
        "--checkpoint",
        str(whitened),
        "--images",
        str(tmp_path / "two.txt"),
        "--root",
        str(ukbench),
        "--device",
        "cpu",
    ]
    args = extract.get_args_parser().parse_args([*argv, "--output-dir", str(tmp_path / "rank1")])
    extract.check_args(args)
    assert args.input_size == 48 and capsys.readouterr().out == ""


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


def copy_images(source, names, target):
    for name in names:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_bytes((source / os.path.basename(name)).read_bytes())


def descriptors_by_name(folder):
    collection = DescriptorCollection(folder, "--database")
    return dict(zip(collection.names, np.concatenate([part for _, part in collection.parts()])))


@pytest.mark.slow
def test_add_describes_only_the_new_images_as_a_full_extraction_would(checkpoint, ukbench, tmp_path, capsys):
    names = sorted(os.listdir(ukbench / "full"))
    photos, collection = tmp_path / "photos", tmp_path / "collection"
    copy_images(ukbench / "full", names[:14], photos)
    run_extract(command(checkpoint, photos, collection, "--shard-size", "4"))
    before = DescriptorCollection(collection, "--database").names
    copy_images(ukbench / "full", [f"new/{name}" for name in names[14:]], photos)

    capsys.readouterr()
    run_extract(command(checkpoint, photos, collection, "--shard-size", "4", "--add"))
    assert "adding 10 new images to the collection" in capsys.readouterr().out
    manifest = json.loads((collection / "manifest.json").read_text())
    assert "adding" not in manifest and len(manifest["shards"]) == 4 + 3
    (addition,) = manifest["additions"]
    assert addition["images"] == addition["descriptors"] == 10
    assert addition["shards"] == ["descriptors-00004", "descriptors-00005", "descriptors-00006"]
    assert DescriptorCollection(collection, "--database").names == before + [f"new/{name}" for name in names[14:]]
    run_extract(command(checkpoint, photos, tmp_path / "scratch", "--shard-size", "100"))
    grown, scratch = descriptors_by_name(collection), descriptors_by_name(tmp_path / "scratch")
    assert grown.keys() == scratch.keys()
    for name in scratch:
        np.testing.assert_allclose(grown[name], scratch[name], atol=1e-6)

    # Nothing new: nothing written. Other settings, or another images folder, are refused naming what differs.
    files = folder_bytes(collection)
    run_extract(command(checkpoint, photos, collection, "--add"))
    assert f"no new image in --images {photos}" in capsys.readouterr().out
    with pytest.raises(UsageError, match="extraction.input_size = 64, this command has 72"):
        run_extract(command(checkpoint, photos, collection, "--add", "--input-size", "72"))
    with pytest.raises(UsageError, match=f"named relative to {photos}, this command's relative to {photos / 'new'}"):
        run_extract(command(checkpoint, photos / "new", collection, "--add"))
    with pytest.raises(UsageError, match="holds no collection: run without --add first"):
        run_extract(command(checkpoint, photos, tmp_path / "nothing", "--add"))
    assert folder_bytes(collection) == files

    # An image gone is named and its descriptor stays; one changed since it was described is refused by name.
    (photos / names[0]).unlink()
    run_extract(command(checkpoint, photos, collection, "--add"))
    assert f"1 images of the collection are gone ({names[0]})" in capsys.readouterr().out
    (photos / names[1]).write_bytes((ukbench / "full" / names[2]).read_bytes())
    with pytest.raises(
        UsageError, match=f"1 images of the collection in .* changed since they were described \\({names[1]}\\)"
    ):
        run_extract(command(checkpoint, photos, collection, "--add"))
    assert folder_bytes(collection) == files


def collection_record(folder):
    """What two runs that end alike have in common: the descriptors, names, image files and manifest, but times."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for addition in manifest.get("additions", []):
        del addition["started"], addition["finished"]
    files = {name: data for name, data in folder_bytes(folder).items() if name != "manifest.json"}
    return manifest, files


@pytest.mark.slow
def test_a_killed_addition_leaves_the_collection_as_it_was_and_resumes(checkpoint, ukbench, tmp_path):
    names = sorted(os.listdir(ukbench / "full"))
    photos, killed, uninterrupted = tmp_path / "photos", tmp_path / "killed", tmp_path / "uninterrupted"
    copy_images(ukbench / "full", names[:6], photos)
    for collection in (killed, uninterrupted):
        run_extract(command(checkpoint, photos, collection, "--shard-size", "2"))
    before = folder_bytes(killed)
    copy_images(ukbench / "full", [f"new/{name}" for name in names[6:20]], photos)

    argv, env = script_command("extract.py", *command(checkpoint, photos, killed, "--shard-size", "2", "--add"),
                               env=ONE_THREAD)  # fmt: skip
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline, complete = time.time() + 120, 0
    while time.time() < deadline and process.poll() is None:
        adding = json.loads((killed / "manifest.json").read_text()).get("adding")
        complete = sum(shard["complete"] for shard in adding["shards"]) if adding else 0
        if complete:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    manifest = json.loads((killed / "manifest.json").read_text())
    assert 1 <= complete < 7 and "adding" in manifest, f"the addition was not killed mid-way ({complete} of 7 shards)"
    # The collection reads as it was: the shards of the addition are not part of it yet.
    assert DescriptorCollection(killed, "--database").names == names[:6]
    assert manifest["shards"] == json.loads(before["manifest.json"])["shards"]
    assert {name: before[name] for name in before if name != "manifest.json"} == {
        name: data for name, data in folder_bytes(killed).items() if name in before and name != "manifest.json"
    }

    resumed = run_script(
        "extract.py", *command(checkpoint, photos, killed, "--shard-size", "2", "--add"), env=ONE_THREAD
    )
    done_before = int(resumed.stdout.split(" of 7 shards already complete")[0].split()[-1])
    assert done_before >= complete
    run_extract(command(checkpoint, photos, uninterrupted, "--shard-size", "2", "--add"))
    assert collection_record(killed) == collection_record(uninterrupted)
    assert DescriptorCollection(killed, "--database").names == names[:6] + [f"new/{name}" for name in names[6:20]]
