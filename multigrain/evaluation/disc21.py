"""The DISC21 (Image Similarity Challenge 2021) layout, its ground truth and its predictions CSV.

A layout root holds the image folders queries/ (Q00000.jpg, ...), references/ (R000000.jpg, ...) and
training/ (T000000.jpg, ...); the official folders can be linked there. List files (one image id a
line, e.g. Q00003) select a subset, such as the dev 25k queries or the subset-1 lists; without one,
every image of the folder is used, in name order. The ground truth is a CSV `query_id,reference_id`
(header optional; an empty reference_id means the query has no match). The predictions CSV is
`query_id,reference_id,score` with a header, higher score = more similar.
"""

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..images.datasets import ImageList
from ..storage.atomic_write import open_atomic
from ..storage.input_files import csv_records, read_lines, shown

KINDS = {"queries": "Q", "references": "R", "training": "T"}
GROUND_TRUTH_HEADER = ["query_id", "reference_id"]
PREDICTIONS_HEADER = ["query_id", "reference_id", "score"]


@dataclass
class Disc21:
    """The images of each kind (ImageList named by image id) and the ground-truth pairs (query id,
    reference id) of the queries that have a match."""

    queries: ImageList
    references: ImageList
    training: ImageList | None
    ground_truth: list


def _id_pattern(kind):
    return re.compile(rf"{KINDS[kind]}\d+")


def read_id_list(path, kind):
    """The image ids of a list file, one a line (blank lines skipped), each checked to name a `kind` image."""
    pattern, ids, seen = _id_pattern(kind), [], {}
    for line_number, line in enumerate(read_lines(path), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if not pattern.fullmatch(image_id):
            raise ValueError(
                f"{path} line {line_number}: {shown(image_id)!r} is not a {kind} image id ({KINDS[kind]}NNN)"
            )
        if image_id in seen:
            raise ValueError(f"{path} line {line_number}: {image_id} was already listed on line {seen[image_id]}")
        seen[image_id] = line_number
        ids.append(image_id)
    if not ids:
        raise ValueError(f"{path} lists no image")
    return ids


def folder_ids(root, kind):
    """The ids of the `kind` images in the layout under root (files <letter><digits>.jpg), in name order."""
    folder = Path(root) / kind
    if not folder.is_dir():
        raise FileNotFoundError(f"DISC21 (--disc21-path): folder {folder} does not exist")
    pattern = _id_pattern(kind)
    ids = sorted(
        entry.name[:-4]
        for entry in os.scandir(folder)
        if entry.name.endswith(".jpg") and pattern.fullmatch(entry.name[:-4]) and entry.is_file()
    )
    if not ids:
        raise FileNotFoundError(f"DISC21 (--disc21-path): no {KINDS[kind]}NNN.jpg image in {folder}")
    return ids


def read_images(root, kind, known_ids, list_file=None):
    """The `kind` images evaluated, named by id: those of `list_file`, or all of `known_ids` (the folder's)."""
    ids = known_ids
    if list_file:
        ids = read_id_list(list_file, kind)
        known = set(known_ids)
        for image_id in ids:
            if image_id not in known:
                raise FileNotFoundError(f"{list_file}: image {image_id} has no file in {Path(root) / kind}")
    return ImageList([Path(root) / kind / f"{image_id}.jpg" for image_id in ids], ids, exif_transpose=False)


def _csv_rows(path, header):
    """(line number, fields) of a CSV file, skipping blank lines and a first line equal to `header`."""
    for line_number, fields in csv_records(path):
        if not fields or fields == [""]:
            continue
        if line_number == 1 and [field.strip() for field in fields] == header:
            continue
        yield line_number, [field.strip() for field in fields]


def read_ground_truth(path, query_ids, reference_ids, known_query_ids, known_reference_ids):
    """The (query id, reference id) pairs of a ground-truth CSV whose query is evaluated and whose reference is
    not empty.

    Every image named must be in the layout (`known_*_ids`); rows of queries not evaluated (outside
    `query_ids`, e.g. a ground truth of all queries against a subset list) are skipped, but the reference
    of an evaluated query must be evaluated (`reference_ids`), or the pair could never be found.
    """
    queries, references = set(query_ids), set(reference_ids)
    known_queries, known_references = set(known_query_ids), set(known_reference_ids)
    pairs, seen = [], {}
    for line_number, fields in _csv_rows(path, GROUND_TRUTH_HEADER):
        where = f"{path} line {line_number}"
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'query_id,reference_id', got {shown(','.join(fields))!r}")
        query, reference = fields
        if query not in known_queries:
            raise ValueError(f"{where}: query {shown(query)!r} is not an image of the layout's queries/")
        if reference and reference not in known_references:
            raise ValueError(f"{where}: reference {shown(reference)!r} is not an image of the layout's references/")
        if (query, reference) in seen:
            raise ValueError(f"{where}: the pair ({query}, {reference}) was already on line {seen[query, reference]}")
        seen[query, reference] = line_number
        if query not in queries or not reference:
            continue
        if reference not in references:
            raise ValueError(f"{where}: reference {reference} of query {query} is not among the references evaluated")
        pairs.append((query, reference))
    if not pairs:
        raise ValueError(f"{path}: no query evaluated has a reference: the copy-detection metrics are undefined")
    return pairs


def read_layout(root, ground_truth, query_list=None, reference_list=None, training_list=None, with_training=False):
    """The images evaluated and the ground truth of a DISC21 layout; the training images only `with_training`."""
    known = {kind: folder_ids(root, kind) for kind in ("queries", "references")}
    queries = read_images(root, "queries", known["queries"], query_list)
    references = read_images(root, "references", known["references"], reference_list)
    training = read_images(root, "training", folder_ids(root, "training"), training_list) if with_training else None
    pairs = read_ground_truth(ground_truth, queries.names, references.names, known["queries"], known["references"])
    return Disc21(queries, references, training, pairs)


def write_predictions(path, queries, references, scores):
    """The predictions CSV, scores written exactly (shortest repr of the float64), so that scoring the file
    gives the metrics of the predictions in memory."""
    with open_atomic(path, "predictions") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTIONS_HEADER)
        for query, reference, score in zip(queries, references, scores):
            writer.writerow([query, reference, repr(float(score))])


def read_predictions(path, query_ids, reference_ids):
    """(queries, references, scores) of a predictions CSV, every id checked against the images evaluated;
    a pair predicted twice is refused."""
    known_queries, known_references = set(query_ids), set(reference_ids)
    queries, references, scores, seen = [], [], [], {}
    for line_number, fields in _csv_rows(path, PREDICTIONS_HEADER):
        where = f"{path} line {line_number}"
        if len(fields) != 3:
            raise ValueError(f"{where}: expected 'query_id,reference_id,score', got {shown(','.join(fields))!r}")
        query, reference, text = fields
        try:
            score = float(text)
        except ValueError:
            raise ValueError(f"{where}: score {shown(text)!r} is not a number") from None
        if not math.isfinite(score):
            raise ValueError(f"{where}: score {shown(text)!r} is not finite")
        if query not in known_queries:
            raise ValueError(
                f"{where}: query {shown(query)!r} is not one of the {len(known_queries)} queries evaluated"
            )
        if reference not in known_references:
            raise ValueError(
                f"{where}: reference {shown(reference)!r} is not one of the {len(known_references)} references"
            )
        if (query, reference) in seen:
            raise ValueError(
                f"{where}: the pair ({query}, {reference}) was already predicted on line {seen[query, reference]}"
            )
        seen[query, reference] = line_number
        queries.append(query)
        references.append(reference)
        scores.append(score)
    return queries, references, scores
