"""The HTML report of search.py and check.py: near-duplicate groups, or each query with its matches, as thumbnails
with names, sizes and scores.

The report is report.html, then report-2.html, ... (PAGE_SIZE groups or queries a page, as many as the script
gives: it caps them), and the thumbnails in report_thumbnails/ next to them: small JPEG
copies made from the images when the report is written, so that the pages open offline from the output folder and
never read an image from anywhere else. The pages are self-contained (inline CSS, no script, no external resource)
and XHTML-compatible; every name is escaped, and a name that is not valid UTF-8, or holds control characters, is
shown with backslash escapes. A group shows at most IMAGES_PER_GROUP images and PAIRS_PER_GROUP pairs; the CSV files
hold them all.
"""

import html
import re
import shutil
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageOps

from ..images.image_io import to_rgb
from ..storage.atomic_write import write_atomic

REPORT = "report.html"
THUMBNAILS = "report_thumbnails"
PAGE_SIZE = 50
THUMBNAIL_SIZE = 160
IMAGES_PER_GROUP = 24
PAIRS_PER_GROUP = 30

STYLE = """
body { font-family: sans-serif; margin: 1em 2em; color: #222; background: #fff; }
nav { margin: 1em 0; }
nav a, nav span { margin-right: 0.6em; }
section { border-top: 1px solid #bbb; padding: 0.5em 0 1em; }
h2 { font-size: 1.05em; margin: 0.3em 0; }
.images { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure { margin: 0; width: 170px; padding: 4px; border: 3px solid #ddd; border-radius: 4px; }
figure.keep { border-color: #2a8f3a; }
figure.remove { border-color: #c0392b; }
figure.query-image { border-color: #2c5aa0; }
figure img, .placeholder { display: block; max-width: 160px; max-height: 160px; margin: 0 auto; }
.placeholder { width: 160px; height: 90px; background: #eee; color: #666; text-align: center; line-height: 90px; }
figcaption { font-size: 0.8em; margin-top: 3px; }
.name { display: block; white-space: pre-wrap; word-break: break-all; font-family: monospace; }
.facts, .decision, .score { display: block; color: #555; }
.decision.keep { color: #2a8f3a; font-weight: bold; }
.decision.remove { color: #c0392b; font-weight: bold; }
.state { display: block; color: #b35900; font-weight: bold; }
table.pairs { border-collapse: collapse; font-size: 0.85em; margin-top: 0.5em; }
table.pairs td, table.pairs th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
tr.known td:last-child { color: #2a8f3a; }
tr.unknown td:last-child { color: #b35900; }
section.missed h2 { color: #c0392b; }
.notice { background: #fff4d6; border: 1px solid #e0b84d; padding: 0.4em 0.8em; }
"""


def shown(name):
    """A name as the page shows it: bytes that are not UTF-8 and control characters as backslash escapes."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text)


def escaped(text):
    return html.escape(shown(str(text)), quote=True)


def human_bytes(size):
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000


def write_thumbnail(source, target):
    """A JPEG of at most THUMBNAIL_SIZE px a side of the image `source`, upright; False if it cannot be read."""
    try:
        with Image.open(source) as image:
            image.draft("RGB", (2 * THUMBNAIL_SIZE, 2 * THUMBNAIL_SIZE))  # JPEG: decode at a reduced scale
            image = to_rgb(ImageOps.exif_transpose(image))
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            image.save(target, "JPEG", quality=85)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False
    return True


class Gallery:
    """The images of one collection (a CollectionImages) as figures: a thumbnail written once per image into the
    thumbnails folder (its files prefixed by `prefix`), the name, size in pixels and bytes, and the state of the
    file when it is gone or changed since it was described."""

    def __init__(self, output_dir, images, prefix):
        self.output_dir, self.images, self.prefix = Path(output_dir), images, prefix
        self.shown = {}  # row -> (its ImageFacts, its thumbnail's path relative to the output folder or None)

    def thumbnail(self, row):
        if row not in self.shown:
            facts = self.images.facts([row], pixels=True)[row]
            relative = f"{THUMBNAILS}/{self.prefix}{row:08d}.jpg"
            ok = facts.state != "missing" and write_thumbnail(self.images.path(row), self.output_dir / relative)
            self.shown[row] = facts, relative if ok else None
        return self.shown[row]

    def figure(self, row, caption="", css_class="image"):
        """The figure of image `row`, with `caption` (HTML) added under its name."""
        name = escaped(self.images.names[row])
        if self.images.root is None:
            picture, details = '<div class="placeholder">no thumbnail</div>', ""
        else:
            facts, source = self.thumbnail(row)
            if source is None:
                label = "missing" if facts.state == "missing" else "unreadable"
                picture = f'<div class="placeholder">{label}</div>'
            else:
                picture = f'<img src="{source}" alt="" title="{name}" loading="lazy"/>'
            details = ""
            if facts.bytes is not None:
                pixels = f"{facts.width}×{facts.height} px · " if facts.width is not None else ""
                details = f'<span class="facts">{pixels}{human_bytes(facts.bytes)}</span>'
            if facts.state != "present":
                details += f'<span class="state">{"gone" if facts.state == "missing" else "changed since described"}'
                details += "</span>"
        return (
            f'<figure class="{css_class}" data-row="{row}">{picture}<figcaption><span class="name">{name}</span>'
            f"{details}{caption}</figcaption></figure>"
        )

    def notices(self):
        """What the pages must say of the images: why there are no thumbnails, how many files are gone or changed."""
        if self.images.root is None:
            return [f"No thumbnails: {self.images.unreachable}."]
        states = [facts.state for facts, _ in self.shown.values()]
        lines = []
        if states.count("missing"):
            lines.append(f"{states.count('missing')} images shown are gone from {self.images.root}.")
        if states.count("changed"):
            lines.append(
                f"{states.count('changed')} images shown changed since they were described: their scores are stale."
            )
        return lines


def remove_report(output_dir):
    """Removes the pages and thumbnails of an earlier report in `output_dir` (they would show other results)."""
    output_dir = Path(output_dir)
    for page in output_dir.glob("report*.html"):
        if re.fullmatch(r"report(-\d+)?\.html", page.name):
            page.unlink()
    shutil.rmtree(output_dir / THUMBNAILS, ignore_errors=True)


def start_output(output_dir):
    remove_report(output_dir)
    (Path(output_dir) / THUMBNAILS).mkdir(parents=True)


def page_name(number):
    return REPORT if number == 1 else f"report-{number}.html"


class Written(NamedTuple):
    """A report written: the path of its first page, and its notices (no thumbnails, images gone or changed)."""

    path: Path
    notices: list


def write_pages(output_dir, title, summary, sections, galleries):
    """Writes the sections (HTML strings) PAGE_SIZE a page under the title and summary (plain text lines); the
    galleries' notices go under the summary. Returns the report Written."""
    pages = [sections[start : start + PAGE_SIZE] for start in range(0, len(sections), PAGE_SIZE)] or [[]]
    notices = [line for gallery in galleries for line in gallery.notices()]
    for number, page in enumerate(pages, 1):
        links = [
            f"<span>page {other}</span>" if other == number else f'<a href="{page_name(other)}">page {other}</a>'
            for other in range(1, len(pages) + 1)
        ]
        nav = f"<nav>{''.join(links)}</nav>" if len(pages) > 1 else ""
        body = "".join(
            [
                f"<h1>{escaped(title)}</h1>",
                *(f"<p class='summary'>{escaped(line)}</p>" for line in summary),
                *(f"<p class='notice'>{escaped(line)}</p>" for line in notices),
                nav,
                *page,
                nav,
            ]
        )
        document = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
            f"<title>{escaped(title)} ({number}/{len(pages)})</title><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>\n"
        )
        write_atomic(Path(output_dir) / page_name(number), lambda f, text=document: f.write(text.encode()), "report")
    return Written(Path(output_dir) / REPORT, notices)


class DuplicateGroup(NamedTuple):
    """A group of near-duplicates: its number (as in groups.csv), its rows, and its pairs (row1, row2, score, known:
    whether --known-duplicates lists it, None without known duplicates)."""

    number: int
    rows: list
    pairs: list


def pair_label(known):
    if known is None:
        return "pair", ""
    return ("pair known", "known duplicate") if known else ("pair unknown", "not a known duplicate")


def group_section(group, gallery, decisions):
    rows = group.rows[:IMAGES_PER_GROUP]
    position = {row: index for index, row in enumerate(rows, 1)}
    figures = []
    for row in rows:
        css_class, caption = "image", f'<span class="score">#{position[row]}</span>'
        if decisions is not None:
            decision = decisions[row]
            css_class = f"image {decision.decision}"
            caption += f'<span class="decision {decision.decision}">{decision.decision}: {escaped(decision.reason)}'
            caption += "</span>"
        figures.append(gallery.figure(row, caption, css_class))
    more = len(group.rows) - len(rows)
    more = f'<p class="more">and {more} more images: see groups.csv</p>' if more > 0 else ""
    pairs = sorted(
        (pair for pair in group.pairs if pair[0] in position and pair[1] in position), key=lambda pair: -pair[2]
    )
    table = "".join(
        f'<tr class="{pair_label(known)[0]}"><td>#{position[first]} – #{position[second]}</td><td>{score:.4f}</td>'
        f"<td>{pair_label(known)[1]}</td></tr>"
        for first, second, score, known in pairs[:PAIRS_PER_GROUP]
    )
    hidden = len(group.pairs) - min(len(pairs), PAIRS_PER_GROUP)
    hidden = f'<p class="more">and {hidden} more pairs: see pairs.csv</p>' if hidden > 0 else ""
    if table:
        table = f'<table class="pairs"><tr><th>pair</th><th>score</th><th></th></tr>{table}</table>'
    return (
        f'<section class="group" id="group-{group.number}" data-images="{len(group.rows)}">'
        f"<h2>Group {group.number}: {len(group.rows)} images</h2>"
        f'<div class="images">{"".join(figures)}</div>{more}{table}{hidden}</section>'
    )


def missed_section(first, second, score, gallery):
    return (
        f'<section class="missed"><h2>A known duplicate pair not found (score {score:.4f})</h2>'
        f'<div class="images">{gallery.figure(first)}{gallery.figure(second)}</div></section>'
    )


def write_dedup_report(output_dir, images, groups, summary, *, decisions=None, missed=()):
    """report.html of search.py --dedup: the groups (DuplicateGroups, in the order to show), then the known pairs not
    found ((row1, row2, score)), under the summary (plain text lines); `decisions` ({row: keep.Decision}) marks
    what to keep. `images`: the CollectionImages of the database. Returns the report Written."""
    start_output(output_dir)
    gallery = Gallery(output_dir, images, "d")
    sections = [group_section(group, gallery, decisions) for group in groups]
    sections += [missed_section(*pair, gallery) for pair in missed]
    return write_pages(output_dir, "Near-duplicate groups", summary, sections, [gallery])


def query_section(number, query, matches, query_gallery, database_gallery):
    figures = [query_gallery.figure(query, '<span class="score">query</span>', "image query-image")]
    for row, score, rank in matches:
        figures.append(database_gallery.figure(row, f'<span class="score">rank {rank} · score {score:.4f}</span>'))
    heading = escaped(query_gallery.images.names[query])
    if not matches:
        heading += " (no match)"
    return (
        f'<section class="query" id="query-{number}" data-matches="{len(matches)}"><h2>{heading}</h2>'
        f'<div class="images">{"".join(figures)}</div></section>'
    )


def write_neighbours_report(output_dir, query_images, database_images, results, summary, *, title):
    """report.html of the nearest neighbours of queries: `results`, (query row, [(database row, score, rank)]) in
    the order to show, under the title and summary (plain text lines). Returns the report Written."""
    start_output(output_dir)
    query_gallery = Gallery(output_dir, query_images, "q")
    database_gallery = Gallery(output_dir, database_images, "d")
    sections = [
        query_section(number, query, matches, query_gallery, database_gallery)
        for number, (query, matches) in enumerate(results, 1)
    ]
    return write_pages(output_dir, title, summary, sections, [query_gallery, database_gallery])
