"""Careless and hostile input to the commands for your own images (issue 24): extract.py, search.py, export.py,
load_model and torch.hub, evaluate.py's DISC21 mode, and every script under torchrun. Each case ends in a one-line
message naming the file, line, row, flag or value (exit code 2 for usage, 1 for a failed run) before the work, or
in the right result; never in a traceback, a hang or a silently wrong result."""

import contextlib
import csv
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess

import numpy as np
import pytest
import torch

import evaluate
import export
import extract
import search
from multigrain import load_model
from multigrain.search.descriptor_files import MANIFEST, DescriptorCollection, save_features
from multigrain.storage.model_files import cache_path
from tests.scripts import ONE_THREAD, ROOT, run_script, script_command
from tests.test_bad_input import random_state, set_state, write_model
from tests.test_search import write_shards
from tools import synthetic_data
from utils import Failure, UsageError

INPUT_SIZE = "32"
NAMES = [f"img_{index}.jpg" for index in range(6)]
NAN_WEIGHTS = "1 tensors of its model hold NaN or infinite values: features.layer4.1.bn2.weight"
HAS_CUDA = torch.cuda.is_available()


def unit_rows(rows=6, dim=8, seed=0):
    descriptors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A model, a folder of 8 images (full/), a copy with NaN weights, an ImageFolder, a DISC21 layout."""
    root = tmp_path_factory.mktemp("own_images")
    write_model(root / "model.pth")
    write_model(root / "nan.pth", change=set_state("features.layer4.1.bn2.weight", float("nan")))
    torch.save({"model_state": random_state(4)}, root / "published_resnet18.pth")  # published files are resnet50s
    (root / "page.pth").write_text("<html>Not found</html>")
    synthetic_data.make_ukbench(root / "photos", num_groups=2, image_size=(32, 24))
    synthetic_data.make_imagefolder(root / "data", num_classes=4, train_per_class=1, val_per_class=1, image_size=16)
    synthetic_data.make_disc21(
        root / "disc21", num_references=6, num_matched=3, num_unrelated=1, num_training=2, image_size=(32, 24)
    )
    return root


def run_search(*argv):
    return search.main(search.get_args_parser().parse_args(list(map(str, argv))))


def extract_args(root, *argv):
    base = ["--checkpoint", root / "model.pth", "--device", "cpu", "-j", "0", "--input-size", INPUT_SIZE]
    return extract.get_args_parser().parse_args(list(map(str, [*base, *argv])))


def refusal(error):
    """The message of a refusal: one line."""
    message = str(error.value)
    assert "\n" not in message, message
    return message


# --- descriptor files --------------------------------------------------------------------------------------


def descriptor_file(array, names_text=None):
    def write(folder):
        np.save(folder / "db.npy", array, allow_pickle=array.dtype == object)
        text = "".join(f"{name}\n" for name in NAMES[: len(array)]) if names_text is None else names_text
        (folder / "db.txt").write_bytes(text.encode() if isinstance(text, str) else text)

    return write


def with_values(rows, dtype=np.float32):
    array = unit_rows().astype(dtype)
    for (row, column), value in rows.items():
        array[row, column] = value
    return array


def truncated(folder):
    descriptor_file(unit_rows())(folder)
    data = (folder / "db.npy").read_bytes()
    (folder / "db.npy").write_bytes(data[: len(data) - 20])


def fifo(name):
    def write(folder):
        descriptor_file(unit_rows())(folder)
        os.remove(folder / name)
        os.mkfifo(folder / name)

    return write


DESCRIPTOR_FILES = [
    ("integers", descriptor_file(np.arange(48).reshape(6, 8)), "db.npy holds int64 values: descriptors are float32"),
    ("booleans", descriptor_file(np.ones((6, 8), dtype=bool)), "db.npy holds bool values"),
    ("complex", descriptor_file(unit_rows().astype(np.complex64)), "db.npy holds complex64 values"),
    ("float128", descriptor_file(unit_rows().astype(np.longdouble)), "db.npy holds float128 values"),
    ("one row", descriptor_file(unit_rows()[0]), "db.npy holds an array of shape (8,), expected (images, dimension)"),
    ("no dimension", descriptor_file(np.zeros((6, 0), np.float32)), "holds an array of shape (6, 0)"),
    ("objects", descriptor_file(np.array([[1.0, None]] * 6, dtype=object)), "db.npy is not a .npy array"),
    ("truncated", truncated, "db.npy is not a .npy array"),
    ("empty", descriptor_file(np.zeros(0), b""), "holds an array of shape (0,)"),
    ("NaN row", descriptor_file(with_values({(3, 0): np.nan})), "1 of 6 descriptors hold NaN or infinite values: "),
    ("-inf component", descriptor_file(with_values({(4, 2): -np.inf})), "values: img_4.jpg (row 4)"),
    ("inf once float32", descriptor_file(with_values({(1, 7): 1e39}, np.float64)), "values: img_1.jpg (row 1)"),
    ("names not UTF-8", descriptor_file(unit_rows(), b"a\n\xe9\nc\nd\ne\nf\n"), "db.txt line 2 is not UTF-8 text"),
    ("names short", descriptor_file(unit_rows(), "a\nb\nc\nd\ne\n"), "db.txt lists 5 names but"),
    ("names CR", descriptor_file(unit_rows(), "a\rb\rc\rd\re\rf\r"), "db.txt lists 1 names but"),
    ("array FIFO", fifo("db.npy"), "db.npy is not a regular file but a FIFO"),
    ("names FIFO", fifo("db.txt"), "db.txt is not a regular file but a FIFO"),
]


@pytest.mark.parametrize(
    "write, message", [case[1:] for case in DESCRIPTOR_FILES], ids=[c[0] for c in DESCRIPTOR_FILES]
)
def test_descriptor_files_are_float_arrays_of_finite_rows(write, message, tmp_path):
    write(tmp_path)
    with pytest.raises(UsageError) as error:
        run_search("--database", tmp_path / "db.npy", "--dedup", "-k", "1", "--output-dir", tmp_path / "out")
    assert message in refusal(error)
    assert not (tmp_path / "out").exists()


def test_float16_and_float64_descriptors_give_the_float32_search(tmp_path):
    results = {}
    for dtype in (np.float16, np.float32, np.float64):
        folder = tmp_path / np.dtype(dtype).name
        folder.mkdir()
        descriptor_file(unit_rows().astype(np.float16).astype(dtype))(folder)
        run_search("--database", folder / "db.npy", "--queries", folder / "db.npy", "-k", "3", "--output-dir", folder)
        results[dtype] = (folder / "neighbours.csv").read_text()
    assert results[np.float16] == results[np.float32] == results[np.float64]


def test_names_that_cannot_be_one_line_are_not_written(tmp_path):
    for name in ("line\nbreak.jpg", "next\x85line.jpg", os.fsdecode(b"caf\xe9.jpg")):
        with pytest.raises(ValueError, match="cannot be written one a line as UTF-8 text"):
            save_features(tmp_path, "db", unit_rows(1), [name])
    assert not list(tmp_path.iterdir())


# --- manifests edited by hand ------------------------------------------------------------------------------


def edit_manifest(edit):
    def write(folder):
        manifest = json.loads((folder / MANIFEST).read_text())
        edit(manifest)
        (folder / MANIFEST).write_text(json.dumps(manifest))

    return write


def set_shard(index, **fields):
    return edit_manifest(lambda manifest: manifest["shards"][index].update(fields))


def replace_manifest(text):
    def write(folder):
        (folder / MANIFEST).write_text(text)

    return write


def manifest_folder(folder):
    os.remove(folder / MANIFEST)
    (folder / MANIFEST).mkdir()


MANIFESTS = [
    ("not JSON", replace_manifest('{"shards": ['), "is not a manifest of extract.py (not JSON: "),
    ("a list", replace_manifest("[]"), 'is not a manifest of extract.py (no "shards" list)'),
    ("stem outside", set_shard(0, stem="../db"), "shard 0 has the stem '../db', not a new descriptors-NNNNN"),
    ("stem twice", set_shard(1, stem="descriptors-00000"), "shard 1 has the stem 'descriptors-00000'"),
    ("complete text", set_shard(0, complete="yes"), 'shard 0 is not an object with a true or false "complete"'),
    ("files", set_shard(0, files={"x": 1}), 'shard 0 has "files" that are not'),
    ("size", set_shard(1, files={"descriptors-00001.npy": {"bytes": 1, "sha256": "0"}}), "records 1: the file"),
    ("a folder", manifest_folder, "Is a directory"),
]


@pytest.mark.parametrize("edit, message", [case[1:] for case in MANIFESTS], ids=[case[0] for case in MANIFESTS])
def test_a_manifest_edited_by_hand_is_refused_naming_what_is_wrong(edit, message, tmp_path):
    folder = tmp_path / "descriptors"
    write_shards(folder, unit_rows(), NAMES, 3)
    edit(folder)
    with pytest.raises(UsageError) as error:
        run_search("--database", folder, "--dedup", "-k", "1", "--output-dir", tmp_path / "out")
    assert message in refusal(error) and str(folder) in refusal(error)


# --- extract.py --------------------------------------------------------------------------------------------


def photos_with(*names):
    """A copy of the module's photos plus a file of each name (bytes: a name that is not UTF-8)."""

    def make(root, tmp_path):
        folder = tmp_path / "photos"
        shutil.copytree(root / "photos" / "full", folder)
        for name in names:
            path = os.path.join(os.fsencode(folder), name if isinstance(name, bytes) else name.encode())
            shutil.copy(folder / "ukbench00000.jpg", path)
        return ["--images", folder, "--output-dir", tmp_path / "out"]

    return make


def listing(text, *fifos):
    """A list file of paths relative to --root (the module's photos), and FIFOs named in the photos' copy."""

    def make(root, tmp_path):
        folder = tmp_path / "photos"
        shutil.copytree(root / "photos" / "full", folder)
        (folder / "folder.jpg").mkdir()
        for name in fifos:
            os.mkfifo(folder / name)
        (tmp_path / "list.txt").write_bytes(text)
        return ["--images", tmp_path / "list.txt", "--root", folder, "--output-dir", tmp_path / "out"]

    return make


def list_file_fifo(root, tmp_path):
    os.mkfifo(tmp_path / "list.txt")
    return ["--images", tmp_path / "list.txt", "--root", root / "photos", "--output-dir", tmp_path / "out"]


def output_under_a_file(root, tmp_path):
    (tmp_path / "a_file").write_text("")
    return ["--images", root / "photos", "--output-dir", tmp_path / "a_file" / "out"]


def flags(*argv):
    return lambda root, tmp_path: ["--images", root / "photos", "--output-dir", tmp_path / "out", *argv]


def checkpoint(name):
    return lambda root, tmp_path: ["--images", root / "photos", "--output-dir", tmp_path / "out", "--checkpoint",
                                   root / name]  # fmt: skip


EXTRACT_CASES = [
    ("line break", photos_with("line\nbreak.jpg"), "1 image names cannot be written one a line as UTF-8 text: "),
    ("NEL", photos_with("next\x85line.jpg"), "'next\\x85line.jpg' (it holds a line break)"),
    ("not UTF-8", photos_with(b"caf\xe9.jpg"), "b'caf\\xe9.jpg' (it is not valid UTF-8)"),
    ("list not UTF-8", listing(b"ukbench00000.jpg\ncaf\xe9.jpg\n"), "list.txt line 2 is not UTF-8 text (byte 0xe9)"),
    ("listed FIFO", listing(b"ukbench00000.jpg\nfifo.jpg\n", "fifo.jpg"), "line 2: fifo.jpg cannot be read ("),
    ("listed missing", listing(b"gone.jpg\n"), "list.txt line 1: gone.jpg cannot be read (["),
    ("listed folder", listing(b"folder.jpg\n"), "folder.jpg is not a regular file but a folder"),
    ("list FIFO", list_file_fifo, "list.txt is not a regular file but a FIFO"),
    ("under a file", output_under_a_file, "a_file/out is not a writable folder"),
    ("in /proc", flags("--output-dir", "/proc/multigrain-out"), "--output-dir /proc/multigrain-out is not a writable"),
    ("device", flags("--device", "cuda:0x"), "--device cuda:0x is not a device: pass cpu, cuda or cuda:N"),
    ("listed NUL", listing(b"ukbench00000.jpg\nuk\x00bench.jpg\n"), "line 2: 'uk\\x00bench.jpg' cannot be read"),
    ("NaN weights", checkpoint("nan.pth"), NAN_WEIGHTS),
    ("architecture", checkpoint("published_resnet18.pth"), "resnet50: 165 tensors of the architecture are missing"),
    ("not a checkpoint", checkpoint("page.pth"), "page.pth safely: weights_only=True failed (Unsupported operand 60)"),
]
if not HAS_CUDA:
    EXTRACT_CASES.append(("no CUDA", flags("--device", "cuda"), "--device cuda: torch sees no CUDA device"))


@pytest.mark.parametrize("make, message", [case[1:] for case in EXTRACT_CASES], ids=[c[0] for c in EXTRACT_CASES])
def test_extract_refuses_what_it_cannot_read_or_write_before_the_work(make, message, root, tmp_path):
    with pytest.raises(UsageError) as error:
        extract.check_args(extract_args(root, *make(root, tmp_path)))
    assert message in refusal(error)
    assert not (tmp_path / "out").exists()


def test_files_that_are_not_images_by_their_extension_are_named(root, tmp_path, capsys):
    argv = photos_with("anim.gif", "notes.txt")(root, tmp_path)
    paths, names, *_ = extract.check_args(extract_args(root, *argv))
    assert len(names) == 8 and "2 files under --images" in capsys.readouterr().out


def test_a_listed_fifo_is_a_bad_image_not_a_hang(root, tmp_path):
    argv = listing(b"\xef\xbb\xbfukbench00000.jpg\r\nfifo.jpg\r\n\r\nukbench00001.jpg\r\n", "fifo.jpg")(root, tmp_path)
    extract.main(extract_args(root, *argv, "--skip-bad-images"))  # a byte-order mark and CRLF line ends too
    assert (tmp_path / "out" / "bad_images.txt").read_text() == "fifo.jpg\n"
    assert DescriptorCollection(tmp_path / "out", "--database").names == ["ukbench00000.jpg", "ukbench00001.jpg"]


def test_a_shard_of_bad_images_only_is_written_and_read(root, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (folder / name).write_text("not an image")
    for name in ("d.jpg", "e.jpg"):
        shutil.copy(root / "photos" / "full" / "ukbench00000.jpg", folder / name)
    extract.main(extract_args(root, "--images", folder, "--output-dir", tmp_path / "out", "--skip-bad-images",
                              "--shard-size", "3"))  # fmt: skip
    assert np.load(tmp_path / "out" / "descriptors-00000.npy").shape == (0, 512)
    assert (tmp_path / "out" / "descriptors-00000.txt").read_text() == ""
    run_search("--database", tmp_path / "out", "--dedup", "-k", "1", "--output-dir", tmp_path / "dedup")
    with open(tmp_path / "dedup" / "pairs.csv") as f:
        assert [row[:2] for row in csv.reader(f)] == [["image1", "image2"], ["d.jpg", "e.jpg"]]


def test_a_rerun_extracts_again_the_shards_that_changed(root, tmp_path):
    argv = ["--images", root / "photos", "--output-dir", tmp_path / "out", "--shard-size", "3"]
    extract.main(extract_args(root, *argv))
    out = tmp_path / "out"
    written = {path.name: path.read_bytes() for path in out.iterdir()}
    os.remove(out / "descriptors-00000.txt")
    np.save(out / "descriptors-00001.npy", np.load(out / "descriptors-00000.npy"))  # same size, other rows
    with pytest.raises(FileNotFoundError, match="descriptors-00000.txt does not exist: run its extract.py command"):
        DescriptorCollection(out, "--database")
    extract.main(extract_args(root, *argv))
    assert {path.name: path.read_bytes() for path in out.iterdir()} == written

    manifest = json.loads((out / MANIFEST).read_text())
    manifest["shards"][1]["first"] = 4
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="does not describe the shards of this extraction"):
        extract.check_args(extract_args(root, *argv))


def test_one_writer_per_output_folder_and_a_killed_one_leaves_no_lock(root, tmp_path):
    out = tmp_path / "out"
    hold = "from multigrain.storage.folder_lock import hold_folder; import sys, time; "
    hold += f"hold_folder({str(out)!r}, '--output-dir', 'extract.py'); print('held', flush=True); time.sleep(600)"
    command, env = script_command("-c", hold)
    holder = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UsageError) as error:
            extract.check_args(extract_args(root, "--images", root / "photos", "--output-dir", out))
        assert f"--output-dir {out} is being written by another run of extract.py (it holds {out}/.lock" in str(
            error.value
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    extract.check_args(extract_args(root, "--images", root / "photos", "--output-dir", out))


# --- search.py ---------------------------------------------------------------------------------------------


@pytest.fixture
def database(tmp_path):
    write_shards(tmp_path / "db", unit_rows(), NAMES, 4)
    return tmp_path / "db"


def known_pairs(content):
    def make(tmp_path):
        (tmp_path / "pairs.csv").write_bytes(content)
        return ["--known-duplicates", tmp_path / "pairs.csv"]

    return make


def search_flags(*argv):
    return lambda tmp_path: list(argv)


LONG_FIELD = b"x" * (128 * 1024 + 1)
SEARCH_CASES = [
    ("CSV not UTF-8", known_pairs(b"image1,image2\nimg_0.jpg,\xe9\n"), "pairs.csv line 2 is not UTF-8 text"),
    ("CSV field 128 KiB", known_pairs(b"image1,image2\n" + LONG_FIELD + b",a\n"), "pairs.csv line 2: field larger"),
    ("CSV fields", known_pairs(b"image1,image2\nimg_0.jpg,img_1.jpg,x\n"), "line 2: 3 fields, the header has 2"),
    ("CSV no header", known_pairs(b"img_0.jpg,img_1.jpg\n"), "needs the columns image1,image2 (a header line)"),
    ("CSV long name", known_pairs(b"image1,image2\n" + b"y" * 1000 + b",a\n"), "line 2: yyyyyyyy"),
    ("output under a file", search_flags("--output-dir", "{tmp}/db/manifest.json/out"), "is not a writable folder"),
    ("output in /proc", search_flags("--output-dir", "/proc/multigrain-out"), "/proc/multigrain-out is not a"),
    ("device", search_flags("--device", "tpu"), "--device tpu is not a device"),
    ("faiss on GPU", search_flags("--device", "cuda", "--search", "faiss"), "--device cuda"),
]
if not HAS_CUDA:
    SEARCH_CASES.append(("no CUDA", search_flags("--device", "cuda"), "--device cuda: torch sees no CUDA device"))
FAISS_CASES = [
    ("nonsense", "nonsense", [], "faiss cannot build the index 'nonsense' for 8-d descriptors: could not parse"),
    ("centroids", "IVF1024,Flat", [], "has 1024 inverted lists, and its training takes at least one descriptor a"),
    ("no lists", "IVF0,Flat", [], "has 0 inverted lists"),
    ("nprobe", "HNSW32", ["--nprobe", "4"], "the index 'HNSW32' has no inverted lists for nprobe to visit"),
    ("PQ dimension", "IVF2,PQ3", [], "The dimension of the vector (d) should be a multiple"),
    ("PQ training", "PQ4", [], "with 6 training descriptors: Number of training points (6) should be at least"),
    ("ids", "IDMap,Flat", [], "cannot train or fill the index 'IDMap,Flat' with 6 training descriptors: add does not"),
]
for name, factory, extra, message in FAISS_CASES:
    SEARCH_CASES.append((f"faiss {name}", search_flags("--faiss-index", factory, *extra), message))


@pytest.mark.parametrize("make, message", [case[1:] for case in SEARCH_CASES], ids=[c[0] for c in SEARCH_CASES])
def test_search_refuses_flags_and_files_it_cannot_use_before_the_search(make, message, database, tmp_path):
    argv = [flag.format(tmp=tmp_path) for flag in map(str, make(tmp_path))]
    if "--faiss-index" in argv:
        pytest.importorskip("faiss")
    with pytest.raises(UsageError) as error:
        run_search("--database", database, "--dedup", "-k", "1", "--output-dir", tmp_path / "out", *argv)
    assert message in refusal(error)
    assert not (tmp_path / "out" / "pairs.csv").exists()
    assert len(refusal(error)) < 600


# --- export.py ---------------------------------------------------------------------------------------------


def run_export(*argv):
    export.main(export.get_args_parser().parse_args(list(map(str, argv))))


@pytest.mark.parametrize(
    "output, message",
    [
        (
            "{tmp}/a_file/model.pt2",
            "the folder of --output {tmp}/a_file is not a writable folder: {tmp}/a_file is a file",
        ),
        ("/proc/model.pt2", "the folder of --output /proc is not a writable folder"),
    ],
)
def test_export_refuses_an_output_it_cannot_write(output, message, root, tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UsageError) as error:
        run_export("--checkpoint", root / "model.pth", "--output", output.format(tmp=tmp_path))
    assert message.format(tmp=tmp_path) in refusal(error)


def limited_file_size(limit):
    """A preexec_fn: files of the process may not grow beyond `limit` bytes, and a write past it fails (EFBIG)
    instead of killing the process: what a disk that fills does to a write."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow  # an export, in a subprocess
def test_a_disk_that_fills_during_an_export_ends_in_a_message_and_leaves_no_file(root, tmp_path):
    command, env = script_command("export.py", "--checkpoint", root / "model.pth", "--output", tmp_path / "m.pt2")
    run = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, preexec_fn=limited_file_size(2**20), timeout=600
    )
    assert run.returncode == 1, run.stderr[-2000:]
    assert (
        f"export.py: error: [Errno 27] cannot write exported model {tmp_path / 'm.pt2'}: the write failed" in run.stderr
    )
    assert "Traceback" not in run.stderr and "terminate called" not in run.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # an export
def test_an_exported_program_that_refuses_thin_images_is_not_written(root, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "sizes_from_one", contextlib.nullcontext)  # tracing that assumes sizes of 2 or more
    with pytest.raises(Failure, match=r"torch.export program does not give the model's outputs on an input of shape "):
        run_export("--checkpoint", root / "model.pth", "--output", tmp_path / "model.pt2")
    assert os.listdir(tmp_path) == []


# --- load_model and torch.hub ------------------------------------------------------------------------------


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def bias(model):
    return float(model.state_dict()["classifier.bias"][0])


def test_downloads_are_cached_by_the_whole_url_and_checked_before_they_are_kept(root, tmp_path, torch_home):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_model(tmp_path / "a" / "whitened.pth")
    write_model(tmp_path / "b" / "whitened.pth", change=set_state("classifier.bias", 7.0))
    first, second = (load_model((tmp_path / name / "whitened.pth").as_uri()) for name in ("a", "b"))
    assert bias(first) != 7.0 and bias(second) == 7.0

    served = tmp_path / "c" / "whitened.pth"
    served.parent.mkdir()
    served.write_text("<html>Not found</html>")
    with pytest.raises(ValueError, match=f"{served.as_uri()} is not a MultiGrain checkpoint, and is not kept"):
        load_model(served.as_uri())
    assert not os.path.exists(cache_path(served.as_uri()))
    shutil.copy(tmp_path / "b" / "whitened.pth", served)
    assert bias(load_model(served.as_uri())) == 7.0
    assert sorted(os.listdir(torch_home / "hub" / "checkpoints")) == sorted(
        os.path.basename(cache_path((tmp_path / name / "whitened.pth").as_uri())) for name in ("a", "b", "c")
    )


def test_check_hash_as_torch_hub_does(root, tmp_path, torch_home):
    digest = hashlib.sha256((root / "model.pth").read_bytes()).hexdigest()
    good, bad, unnamed = tmp_path / f"model-{digest[:10]}.pth", tmp_path / "model-0123abcd.pth", tmp_path / "m.pth"
    for path in (good, bad, unnamed):
        shutil.copy(root / "model.pth", path)
    assert load_model(good.as_uri(), check_hash=True).classifier.out_features == 4
    hub = torch.hub.load(str(ROOT), "multigrain", source="local", checkpoint=str(good), check_hash=True)
    assert hub.classifier.out_features == 4
    with pytest.raises(ValueError, match=f"{bad.as_uri()}: its SHA-256 is {digest}, its name says 0123abcd"):
        load_model(bad.as_uri(), check_hash=True)
    with pytest.raises(ValueError, match="check_hash: the file name of .*m.pth carries no hash"):
        load_model(unnamed, check_hash=True)


def test_load_model_refuses_nan_weights_in_one_line(root, torch_home):
    for source in (root / "nan.pth", (root / "nan.pth").as_uri()):
        with pytest.raises(ValueError) as error:
            load_model(source)
        assert NAN_WEIGHTS in refusal(error)


# --- evaluate.py --dataset disc21 --------------------------------------------------------------------------


def disc21_file(name, content):
    def make(root, tmp_path):
        path = tmp_path / name
        if content is None:
            os.mkfifo(path)
        else:
            path.write_bytes(content)
        flag = {"queries.txt": "--disc21-query-list", "truth.csv": "--disc21-ground-truth"}.get(name)
        return [flag, path] if flag else ["--disc21-predictions", path]

    return make


DISC21_CASES = [
    ("list not UTF-8", disc21_file("queries.txt", b"Q00000\nQ0000\xe9\n"), "queries.txt line 2 is not UTF-8 text"),
    ("list FIFO", disc21_file("queries.txt", None), "queries.txt is not a regular file but a FIFO"),
    ("truth not UTF-8", disc21_file("truth.csv", b"query_id,reference_id\n\xff,\n"), "truth.csv line 2 is not UTF"),
    ("predictions not UTF-8", disc21_file("p.csv", b"query_id,reference_id,score\n\xff\n"), "p.csv line 2 is not"),
    ("predictions field", disc21_file("p.csv", b"Q00000,R000000,0\n" + LONG_FIELD), "p.csv line 2: field larger"),
    ("predictions long id", disc21_file("p.csv", b"Q00000," + b"R" * 5000 + b",0\n"), "reference 'RRRRRRR"),
]


@pytest.mark.parametrize("make, message", [case[1:] for case in DISC21_CASES], ids=[c[0] for c in DISC21_CASES])
def test_disc21_lists_and_csvs_that_are_not_text_name_their_line(make, message, root, tmp_path):
    argv = ["--dataset", "disc21", "--disc21-path", root / "disc21", "--device", "cpu", *make(root, tmp_path)]
    if "--disc21-predictions" not in argv:
        argv += ["--disc21-predictions", tmp_path / "p.csv"]
        (tmp_path / "p.csv").write_text("query_id,reference_id,score\n")
    with pytest.raises(UsageError) as error:
        evaluate.main(evaluate.get_args_parser().parse_args(list(map(str, argv))))
    assert message in refusal(error) and len(refusal(error)) < 600


def test_disc21_refuses_descriptors_that_are_not_finite(root, tmp_path):
    flags = ["--dataset", "disc21", "--disc21-path", str(root / "disc21"), "--device", "cpu"]
    queries = sorted(name[:-4] for name in os.listdir(root / "disc21" / "queries"))
    references = sorted(name[:-4] for name in os.listdir(root / "disc21" / "references"))
    save_features(tmp_path, "disc21_queries", unit_rows(len(queries)), queries)
    bad = unit_rows(len(references))
    bad[2, 5] = np.inf
    save_features(tmp_path, "disc21_references", bad, references)
    with pytest.raises(UsageError) as error:
        evaluate.main(evaluate.get_args_parser().parse_args([*flags, "--load-features", str(tmp_path)]))
    assert f"values: {references[2]} (row 2)" in refusal(error)


# --- every script: NaN weights, and one message under torchrun ---------------------------------------------


NAN_COMMANDS = {
    "extract.py": ["--images", "{root}/photos", "--output-dir", "{tmp}/out", "--device", "cpu"],
    "evaluate.py": ["--dataset", "disc21", "--disc21-path", "{root}/disc21", "--device", "cpu"],
    "export.py": ["--output", "{tmp}/model.pt2"],
    "whiten.py": ["--whiten-path", "{root}/photos", "--output-dir", "{tmp}/out"],
    "finetune_p.py": ["--data-path", "{root}/data", "--output-dir", "{tmp}/out"],
    "train.py": ["--data-path", "{root}/data", "--test-only", "--model", "resnet18"],
}


@pytest.mark.slow  # a subprocess each
@pytest.mark.parametrize("script", NAN_COMMANDS)
def test_every_script_refuses_nan_weights_in_one_line(script, root, tmp_path):
    argv = [flag.format(root=root, tmp=tmp_path) for flag in NAN_COMMANDS[script]]
    run = run_script(script, "--resume", root / "nan.pth", *argv, env=ONE_THREAD, check=False)
    assert run.returncode == 2
    assert run.stderr == f"{script}: error: {root / 'nan.pth'}: {NAN_WEIGHTS}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--checkpoint", "{root}/nan.pth"], ["extract.py: error: {root}/nan.pth: " + NAN_WEIGHTS]),
        (["--shard-size", "0"], ["usage: extract.py", "extract.py: error: argument --shard-size: must be an integer"]),
    ],
    ids=["a refusal", "a flag that does not parse"],
)
def test_under_torchrun_a_refusal_is_reported_once(argv, expected, root, tmp_path):
    base = ["--checkpoint", root / "model.pth", "--images", root / "photos", "--output-dir", tmp_path / "out"]
    argv = [*base, "--device", "cpu", *[flag.format(root=root) for flag in argv]]
    run = run_script("extract.py", *argv, nproc=2, env=ONE_THREAD, check=False)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.startswith(("usage:", "extract.py: error:"))]
    expected = [start.format(root=root) for start in expected]
    assert len(lines) == len(expected), run.stderr[-3000:]
    assert all(line.startswith(start) for line, start in zip(lines, expected)), run.stderr[-3000:]
    assert "(process 1)" not in run.stderr


def test_a_script_refusal_prints_no_usage_block(root, tmp_path):
    run = run_script("search.py", "--database", tmp_path / "none", "--dedup", "--output-dir", tmp_path, check=False)
    assert (run.returncode, run.stderr) == (2, f"search.py: error: --database {tmp_path / 'none'} does not exist\n")
