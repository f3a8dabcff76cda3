import csv
import os
import shutil
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest
from PIL import Image

from multigrain.search import keep, report
from multigrain.search.collection_images import CollectionImages, file_stats
from tests import browser

# Names a file system allows that a page or a CSV file could get wrong; the last is not UTF-8 (bytes 0xff 0xfe).
AWKWARD_NAMES = [
    "plain.jpg",
    "comma, and space.jpg",
    "quote \" and 'single'.jpg",
    "new\nline.jpg",
    "<b>tag</b> & ampersand.jpg",
    "folder/&amp;.jpg",
    os.fsdecode(b"latin1-\xff\xfe.jpg"),
]


def write_images(root, names, size=(48, 32)):
    """A JPEG per name: four blocks of strong colours."""
    rng = np.random.default_rng(0)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        blocks = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, (2, 2))] * 220
        picture = blocks.repeat(size[1] // 2, axis=0).repeat(size[0] // 2, axis=1)
        Image.fromarray(picture).save(path, "JPEG")


def parse(page):
    """The page as XML: it must be well formed (every name escaped)."""
    return ElementTree.fromstring(page.read_text(encoding="utf-8"))


def name_texts(tree):
    return [span.text for span in tree.iter("span") if span.get("class") == "name"]


def test_every_name_is_escaped_in_the_page_and_exact_in_the_keep_list(tmp_path):
    write_images(tmp_path / "images", AWKWARD_NAMES)
    images = CollectionImages(AWKWARD_NAMES, tmp_path / "images")
    groups = [(1, [0, 1, 2, 3]), (2, [4, 5, 6])]
    pairs = {1: [(0, 1, 0.99, True), (2, 3, 0.95, False)], 2: [(4, 5, 0.97, None), (5, 6, 0.96, None)]}
    decisions = keep.decide(groups, AWKWARD_NAMES, "first")
    page = report.write_dedup_report(
        tmp_path / "out",
        images,
        [report.DuplicateGroup(number, rows, pairs[number]) for number, rows in groups],
        ["summary with <angle> & ampersand"],
        decisions={decision.row: decision for decision in decisions},
        missed=[(6, 0, 0.5)],
    ).path
    text = page.read_text(encoding="utf-8")
    tree = parse(page)
    shown_rows = [0, 1, 2, 3, 4, 5, 6, 6, 0]  # the groups, then the pair not found
    assert name_texts(tree) == [report.shown(AWKWARD_NAMES[row]) for row in shown_rows]
    assert report.shown(AWKWARD_NAMES[3]) == "new\\nline.jpg"
    assert report.shown(AWKWARD_NAMES[6]) == "latin1-\\xff\\xfe.jpg"
    assert "<b>" not in text and "&lt;b&gt;tag&lt;/b&gt; &amp; ampersand.jpg" in text
    assert "folder/&amp;amp;.jpg" in text
    # Self-contained: inline style, no script, every picture a thumbnail written next to the page.
    assert "<script" not in text and "http" not in text and "<link" not in text
    sources = [img.get("src") for img in tree.iter("img")]
    assert len(sources) == 9  # 7 images, and the pair not found shows 2
    for source in sources:
        assert source.startswith(f"{report.THUMBNAILS}/") and ".." not in source
        assert Image.open(tmp_path / "out" / source).size == (48, 32)
    marks = [row.get("class") for row in tree.iter("tr") if row.get("class")]
    assert marks == ["pair known", "pair unknown", "pair", "pair"]

    keep.write_decisions(tmp_path / "out" / "keep.csv", decisions, AWKWARD_NAMES)
    with open(tmp_path / "out" / "keep.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    assert [row["image"] for row in rows] == AWKWARD_NAMES
    assert [row["decision"] for row in rows] == ["keep", "remove", "remove", "remove", "keep", "remove", "remove"]
    assert rows[1]["reason"] == f"a duplicate of {AWKWARD_NAMES[0]}"


def test_the_page_shows_in_chromium_what_it_holds(tmp_path):
    write_images(tmp_path / "images", AWKWARD_NAMES, size=(120, 90))
    images = CollectionImages(AWKWARD_NAMES, tmp_path / "images")
    groups = [report.DuplicateGroup(1, [0, 1, 2], [(0, 1, 0.9, True)]), report.DuplicateGroup(2, [4, 6], [])]
    page = report.write_dedup_report(tmp_path / "out", images, groups, ["two groups"], missed=[(3, 5, 0.4)]).path
    shutil.move(tmp_path / "images", tmp_path / "moved")  # the page must not need the images

    dom = browser.dump_dom(page)
    assert len(dom.select("section", "group")) == 2 and len(dom.select("section", "missed")) == 1
    assert len(dom.select("img")) == 7 and len(dom.select("tr", "pair", "known")) == 1
    assert [span.text for span in dom.select("span", "name")] == [
        report.shown(AWKWARD_NAMES[row]) for row in (0, 1, 2, 4, 6, 3, 5)
    ]
    picture = browser.screenshot(page, tmp_path / "page.png")
    # The random thumbnails are drawn: a page without them has almost no coloured pixel.
    shutil.rmtree(tmp_path / "out" / report.THUMBNAILS)
    bare = browser.screenshot(page, tmp_path / "bare.png")
    assert browser.colourful_pixels(picture) > browser.colourful_pixels(bare) + 7 * 0.5 * 120 * 90


def test_a_report_without_the_images_says_why_and_marks_gone_and_changed_files(tmp_path):
    names = ["a.jpg", "b.jpg", "c.jpg"]
    write_images(tmp_path / "images", names)
    recorded = file_stats([tmp_path / "images" / name for name in names])
    (tmp_path / "images" / "b.jpg").unlink()
    with open(tmp_path / "images" / "c.jpg", "ab") as f:
        f.write(b"more bytes")
    groups = [report.DuplicateGroup(1, [0, 1, 2], [])]

    unreachable = CollectionImages(names, unreachable="--database x.npy records no images folder")
    written = report.write_dedup_report(tmp_path / "none", unreachable, groups, [])
    assert written.notices == ["No thumbnails: --database x.npy records no images folder."]
    page = written.path
    tree = parse(page)
    assert not list(tree.iter("img")) and not os.listdir(tmp_path / "none" / report.THUMBNAILS)
    notices = [p.text for p in tree.iter("p") if p.get("class") == "notice"]
    assert notices == ["No thumbnails: --database x.npy records no images folder."]

    images = CollectionImages(names, tmp_path / "images", recorded=recorded)
    tree = parse(report.write_dedup_report(tmp_path / "marked", images, groups, []).path)
    assert len(list(tree.iter("img"))) == 2
    assert [span.text for span in tree.iter("span") if span.get("class") == "state"] == [
        "gone",
        "changed since described",
    ]
    notices = [p.text for p in tree.iter("p") if p.get("class") == "notice"]
    assert notices == [
        f"1 images shown are gone from {tmp_path / 'images'}.",
        "1 images shown changed since they were described: their scores are stale.",
    ]


def test_a_second_report_leaves_nothing_of_the_first(tmp_path):
    names = [f"{index:03d}.jpg" for index in range(120)]
    write_images(tmp_path / "images", names)
    images = CollectionImages(names, tmp_path / "images")
    many = [report.DuplicateGroup(number, [2 * number, 2 * number + 1], []) for number in range(60)]
    report.write_dedup_report(tmp_path / "out", images, many, [])
    assert sorted(path.name for path in (tmp_path / "out").glob("report*.html")) == ["report-2.html", "report.html"]
    assert "report-2.html" in (tmp_path / "out" / "report.html").read_text()
    (tmp_path / "out" / "report-notes.html").write_text("a file of the user's")
    report.write_dedup_report(tmp_path / "out", images, many[:1], [])
    assert sorted(path.name for path in (tmp_path / "out").glob("report*.html")) == ["report-notes.html", "report.html"]
    assert len(os.listdir(tmp_path / "out" / report.THUMBNAILS)) == 2
    report.remove_report(tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["report-notes.html"]


@pytest.mark.parametrize("name", ["x\x1b[31m.jpg", "tab\there.jpg"])
def test_control_characters_are_shown_escaped(name):
    assert report.shown(name).isprintable() and "\\" in report.shown(name)
