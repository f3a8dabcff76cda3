import csv
import os
import shutil
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
import torch

import check
import extract
import search
from multigrain.model import build_model
from multigrain.search.descriptor_files import read_features, save_features
from multigrain.storage.checkpoint import make_checkpoint, save_checkpoint
from tools import synthetic_data
from utils import UsageError

# Names with the characters a CSV file or a page could get wrong.
NAMES = ['comma, "quoted".jpg', "<b>bold</b> & more.jpg", "x/plain.jpg", "x/&amp;.jpg", "y z.jpg"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """(root, checkpoint, photos folder, extract.py collection of its images)."""
    root = tmp_path_factory.mktemp("check")
    torch.manual_seed(0)
    model = root / "model.pth"
    state = build_model("resnet18", num_classes=3).state_dict()
    save_checkpoint(make_checkpoint("train", state, {"model": "resnet18"}), model)
    synthetic_data.make_ukbench(root / "ukbench", num_groups=2, image_size=(40, 30))
    sources = sorted((root / "ukbench" / "full").iterdir())
    for name, source in zip(NAMES, sources):
        (root / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / "photos" / name)
    extract.main(extract.get_args_parser().parse_args(
        ["--checkpoint", str(model), "--images", str(root / "photos"), "--output-dir", str(root / "collection"),
         "--device", "cpu", "-j", "0", "--input-size", "40"]))  # fmt: skip
    return root, model, root / "photos", root / "collection"


def check_argv(collection, *extra):
    root, _, photos, folder = collection
    return ["--collection", str(folder), "--images", str(photos), "--threshold", "0.5", "--output-dir",
            str(root / "out"), "--device", "cpu", "-j", "0", *extra]  # fmt: skip


def read_csv(path):
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def test_images_of_the_collection_match_themselves_whatever_their_names(collection):
    root = collection[0]
    result = check.main(check.get_args_parser().parse_args(check_argv(collection, "-k", "2")))
    assert result["matched"] == len(NAMES)
    rows = read_csv(root / "out" / "matches.csv")
    firsts = [row for row in rows if row["rank"] == "1"]
    assert [row["image"] for row in firsts] == sorted(NAMES) and all(row["match"] == row["image"] for row in firsts)
    assert all(float(row["score"]) > 0.9999 for row in firsts)
    # The descriptors are those of extract.py with the collection's settings.
    descriptors, names = read_features(root / "out" / "queries.npy")
    collection_descriptors, collection_names = read_features(root / "collection" / "descriptors-00000.npy")
    assert names == collection_names
    np.testing.assert_allclose(descriptors, collection_descriptors, atol=1e-6)
    page = (root / "out" / "report.html").read_text(encoding="utf-8")
    tree = ElementTree.fromstring(page)  # well formed: every name escaped
    shown = [span.text for span in tree.iter("span") if span.get("class") == "name"]
    assert set(shown) == set(NAMES) and len(list(tree.iter("img"))) == len(shown)

    search.main(search.get_args_parser().parse_args(
        ["--dedup", "--database", str(root / "collection"), "-k", "1", "--keep", "first", "--output-dir",
         str(root / "dedup")]))  # fmt: skip
    pairs = read_csv(root / "dedup" / "pairs.csv")
    assert {row["image1"] for row in pairs} | {row["image2"] for row in pairs} <= set(NAMES)
    assert {row["image"] for row in read_csv(root / "dedup" / "keep.csv")} == {
        row["image"] for row in read_csv(root / "dedup" / "groups.csv")
    }


@pytest.mark.parametrize(
    "change, extra, message",
    [
        ("not_extract", [], "is not a folder of extract.py (with its manifest.json)"),
        ("moved", [], "model.pth, the checkpoint the collection in {collection} was described with, is not a file"),
        ("moved", ["--checkpoint", "{root}/moved.pth"], None),
        ("other", ["--checkpoint", "{root}/other.pth"], "other.pth is not the checkpoint the collection in"),
        (None, ["-k", "6"], "-k 6 is more than the 5 images of --collection"),
        (None, ["--index", "{root}/missing.npz"], "--index {root}/missing.npz does not exist: build it with search.py"),
        (None, ["--nprobe", "4"], "--nprobe is for an --index of an IVF faiss index"),
        (None, ["--images", "{root}/nothing"], "--images {root}/nothing does not exist"),
        ("output_file", [], "--output-dir {root}/out is not a folder"),
    ],
)
def test_bad_inputs_are_refused_by_name(collection, tmp_path, change, extra, message):
    root, model, photos, folder = collection
    local = (tmp_path, model, photos, folder)
    argv = check_argv(local, *[flag.format(root=tmp_path) for flag in extra])
    if change == "not_extract":
        save_features(tmp_path / "features", "features", np.eye(2, dtype=np.float32), ["a", "b"])
        argv[1] = str(tmp_path / "features")
    elif change == "moved":
        shutil.copy(model, tmp_path / "moved.pth")
        os.rename(model, tmp_path / "away.pth")
    elif change == "other":
        torch.manual_seed(1)
        state = build_model("resnet18", num_classes=3).state_dict()
        save_checkpoint(make_checkpoint("train", state, {"model": "resnet18"}), tmp_path / "other.pth")
    elif change == "output_file":
        (tmp_path / "out").write_text("")
    try:
        if message is None:
            check.check_args(check.get_args_parser().parse_args(argv))
        else:
            with pytest.raises(UsageError) as error:
                check.check_args(check.get_args_parser().parse_args(argv))
            assert message.format(root=tmp_path, collection=folder) in str(error.value)
    finally:
        if change == "moved":
            os.rename(tmp_path / "away.pth", model)


def test_a_list_of_images_is_checked_through_a_saved_index(collection):
    root, _, photos, folder = collection
    index = root / "collection.index.npz"
    search.main(search.get_args_parser().parse_args(
        ["--dedup", "--database", str(folder), "-k", "1", "--faiss-index", "Flat", "--index", str(index),
         "--report-limit", "0", "--output-dir", str(root / "flat")]))  # fmt: skip
    (root / "new.txt").write_text(f"{NAMES[3]}\n{NAMES[1]}\n")
    argv = ["--collection", str(folder), "--images", str(root / "new.txt"), "--root", str(photos), "--threshold",
            "0.5", "-k", "3", "--index", str(index), "--output-dir", str(root / "listed"), "--device", "cpu", "-j",
            "0"]  # fmt: skip
    result = check.main(check.get_args_parser().parse_args(argv))
    assert [image for image, _ in result["results"]] == [NAMES[3], NAMES[1]]
    rows = read_csv(root / "listed" / "matches.csv")
    assert [(row["image"], row["match"]) for row in rows if row["rank"] == "1"] == [
        (NAMES[3], NAMES[3]),
        (NAMES[1], NAMES[1]),
    ]
    assert all(int(row["rank"]) <= 3 for row in rows)
