"""A collection of synthetic photos with planted copies goes through the workflow of docs/own_images.md: extract,
near-duplicates with their report (looked at in Chromium), keep list and saved index, new images checked against the
saved collection, then added to it; every result equal to that of a run from scratch."""

import csv
import shutil

import pytest
import torch

import check
import extract
import search
from multigrain.model import build_model
from multigrain.search.report import shown
from multigrain.storage.checkpoint import make_checkpoint, save_checkpoint
from tests import browser
from tests.scripts import run_script
from tools import synthetic_data
from utils import UsageError

COMMON = ["--device", "cpu", "-j", "0", "--input-size", "64"]


def read_csv(path):
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def groups_of(path):
    groups = {}
    for row in read_csv(path):
        groups.setdefault(int(row["group"]), []).append(row["image"])
    return groups


def pair_scores(rows, first="image1", second="image2", ordered=True):
    """{(first, second): score}; unordered: {{first, second}: score}."""
    key = tuple if ordered else frozenset
    return {key((row[first], row[second])): float(row["score"]) for row in rows}


def assert_same_scores(found, expected):
    assert found.keys() == expected.keys()
    for pair, score in expected.items():
        assert found[pair] == pytest.approx(score, abs=1e-5), pair


@pytest.mark.slow
def test_a_collection_through_the_whole_workflow(tmp_path, capsys):
    torch.manual_seed(0)  # an untrained network, as in test_search.py: the workflow is what is tested here
    model = tmp_path / "model.pth"
    save_checkpoint(
        make_checkpoint("train", build_model("resnet18", num_classes=10).state_dict(), {"model": "resnet18"}), model
    )
    synthetic_data.make_duplicates(tmp_path / "generated", num_originals=30, image_size=(64, 48))
    photos, incoming = tmp_path / "photos", tmp_path / "incoming"
    for folder in ("a", "b"):
        shutil.copytree(tmp_path / "generated" / "images" / folder, photos / folder)
    shutil.copytree(tmp_path / "generated" / "images" / "c", incoming / "c")
    planted = read_csv(tmp_path / "generated" / "duplicates.csv")
    known = [pair for pair in planted if not pair["image1"].startswith("c/") and not pair["image2"].startswith("c/")]
    (tmp_path / "known.csv").write_text("image1,image2\n" + "".join(f"{p['image1']},{p['image2']}\n" for p in known))

    # Extract, then the near-duplicates with their keep list and report.
    collection = tmp_path / "collection"
    extract.main(extract.get_args_parser().parse_args(
        ["--checkpoint", str(model), "--images", str(photos), "--output-dir", str(collection), "--shard-size", "16",
         *COMMON]))  # fmt: skip
    dedup, index = tmp_path / "dedup", tmp_path / "collection.index.npz"
    result = search.main(search.get_args_parser().parse_args(
        ["--dedup", "--database", str(collection), "-k", "4", "--known-duplicates", str(tmp_path / "known.csv"),
         "--precision-target", "0.9", "--keep", "largest", "--keep-in", "a", "--faiss-index", "Flat", "--index",
         str(index), "--output-dir", str(dedup)]))  # fmt: skip
    assert result["precision"] >= 0.9 and result["recall"] >= 0.5, result
    threshold = result["threshold"] - 1e-4  # not the score of a pair: float rounding cannot move a pair across it
    groups = groups_of(dedup / "groups.csv")
    decisions = read_csv(dedup / "keep.csv")
    for number, images in groups.items():
        mine = [row for row in decisions if int(row["group"]) == number]
        assert sorted(row["image"] for row in mine) == sorted(images)
        kept = [row["image"] for row in mine if row["decision"] == "keep"]
        assert len(kept) == 1 and (kept[0].startswith("a/") or not any(i.startswith("a/") for i in images))

    # The report as Chromium shows it, the photos moved away: it needs only the output folder.
    pairs = read_csv(dedup / "pairs.csv")
    known_pairs = {frozenset((pair["image1"], pair["image2"])) for pair in known}
    found = sum(frozenset((pair["image1"], pair["image2"])) in known_pairs for pair in pairs)
    shutil.move(photos, tmp_path / "away")
    dom = browser.dump_dom(dedup / "report.html")
    shutil.move(tmp_path / "away", photos)
    members = sum(len(images) for images in groups.values())
    missed = len(known) - found
    assert len(dom.select("section", "group")) == len(groups) and len(dom.select("section", "missed")) == missed
    assert len(dom.select("img")) == members + 2 * missed
    assert len(dom.select("figure", "keep")) == len(groups) and len(dom.select("figure", "remove")) == members - len(
        groups
    )
    assert len(dom.select("tr", "known")) == found and len(dom.select("tr", "unknown")) == len(pairs) - found
    largest_first = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    names = [span.text for span in dom.select("span", "name")]
    assert names[:members] == [shown(image) for _, images in largest_first for image in images]
    picture = browser.screenshot(dedup / "report.html", tmp_path / "report.png")
    assert browser.colourful_pixels(picture) > 20000  # the thumbnails of the synthetic photos are drawn

    # The new images checked against the saved collection and its saved index.
    checked = tmp_path / "checked"
    run = run_script("check.py", "--collection", collection, "--images", incoming, "--threshold", threshold,
                     "--index", index, "--output-dir", checked, "--device", "cpu", "-j", "0")  # fmt: skip
    assert f"report: {checked / 'report.html'}" in run.stdout
    matches = pair_scores(read_csv(checked / "matches.csv"), "image", "match")
    planted_pairs = {frozenset((pair["image1"], pair["image2"])) for pair in planted}
    assert sum(frozenset(pair) in planted_pairs for pair in matches) >= 0.5 * len(matches) > 0
    dom = browser.dump_dom(checked / "report.html")
    matched = {image for image, _ in matches}
    assert len(dom.select("section", "query")) == len(list((incoming / "c").iterdir()))
    assert sum(int(section.attributes["data-matches"]) > 0 for section in dom.select("section", "query")) == len(
        matched
    )

    # From scratch: the new images extracted on their own and searched with search.py find the same matches.
    extract.main(extract.get_args_parser().parse_args(
        ["--checkpoint", str(model), "--images", str(incoming), "--output-dir", str(tmp_path / "incoming_descriptors"),
         *COMMON]))  # fmt: skip
    search.main(search.get_args_parser().parse_args(
        ["--queries", str(tmp_path / "incoming_descriptors"), "--database", str(collection), "-k", "5",
         "--output-dir", str(tmp_path / "neighbours")]))  # fmt: skip
    neighbours = read_csv(tmp_path / "neighbours" / "neighbours.csv")
    expected = pair_scores([row for row in neighbours if float(row["score"]) >= threshold], "query", "match")
    assert_same_scores(matches, expected)

    # The new images join the collection: only they are extracted, and the saved index is refused from then on.
    shutil.move(incoming / "c", photos / "c")
    capsys.readouterr()
    extract.main(extract.get_args_parser().parse_args(
        ["--checkpoint", str(model), "--images", str(photos), "--output-dir", str(collection), "--shard-size", "16",
         "--add", *COMMON]))  # fmt: skip
    assert f"adding {len(list((photos / 'c').iterdir()))} new images" in capsys.readouterr().out
    with pytest.raises(UsageError, match="images were added to it since"):
        check.check_args(check.get_args_parser().parse_args(
            ["--collection", str(collection), "--images", str(photos / "c"), "--threshold", "0.9", "--index",
             str(index), "--output-dir", str(tmp_path / "refused")]))  # fmt: skip

    # The grown collection has the near-duplicates of one extracted from scratch.
    extract.main(
        extract.get_args_parser().parse_args(
            ["--checkpoint", str(model), "--images", str(photos), "--output-dir", str(tmp_path / "scratch"), *COMMON]
        )
    )
    for database in (collection, tmp_path / "scratch"):
        search.main(search.get_args_parser().parse_args(
            ["--dedup", "--database", str(database), "-k", "4", "--threshold", str(threshold), "--keep", "first",
             "--output-dir", str(database) + "_dedup"]))  # fmt: skip
    grown, scratch = (f"{database}_dedup" for database in (collection, tmp_path / "scratch"))
    grown_pairs, scratch_pairs = (pair_scores(read_csv(f"{d}/pairs.csv"), ordered=False) for d in (grown, scratch))
    assert_same_scores(grown_pairs, scratch_pairs)
    assert {frozenset(images) for images in groups_of(f"{grown}/groups.csv").values()} == {
        frozenset(images) for images in groups_of(f"{scratch}/groups.csv").values()
    }
