"""Readers of the retrieval benchmarks: INRIA Holidays, UKBench, Copydays and revisited Oxford / Paris.

Each reader checks the folder layout and returns a `RetrievalBenchmark`: the database images, the
query images (or the indices of the database images that serve as queries), how many neighbours
each query needs, and the function scoring the rankings with the official protocol. Scores are
percentages, except the UKBench N-S score (0 to 4).
"""

import hashlib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..images.datasets import ImageList, list_image_files
from ..images.image_io import BadImageError
from ..storage.safe_pickle import load_pickle
from .retrieval_metrics import copydays_map, holidays_ground_truth, holidays_map, revisitop_map, ukbench_score

REVISITOP_BENCHMARKS = ("roxford5k", "rparis6k")
UKBENCH_NAME = re.compile(r"^ukbench(\d{5})\.[^.]+$")


def _benchmark_images(paths, names, rotations=None, boxes=None):
    """The pixels as stored, without applying an EXIF orientation, as the official evaluation tools read
    them; Holidays' sideways photos are turned upright by its explicit rotation list instead."""
    return ImageList(paths, names, rotations, boxes, exif_transpose=False)


@dataclass
class RetrievalBenchmark:
    """database: the images searched. queries: separate query images, or None when the queries are
    the database images at `query_indices`. score(rankings): {metric: value} from one ranking per
    query, of which it reads either the top `num_neighbors` (from `knn`) or, when `items` is set,
    only the positions of the database indices items[i] in query i's full ranking (a
    `KnownPositions` from `ranking_positions`)."""

    name: str
    database: ImageList
    queries: ImageList | None
    query_indices: np.ndarray | None
    num_neighbors: int | None
    items: list[np.ndarray] | None
    score: Callable[[list], dict]


def _require_folder(path, what):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: folder {path} does not exist")
    return Path(path)


def read_rotations(path, image_names):
    """{file name: degrees} from lines "<file name> <degrees>"; blank lines and # comments are skipped.

    Every name must be one of `image_names` (file names without folder).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"rotation list {path} does not exist")
    known = set(image_names)
    rotations = {}
    for line_number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            degrees = float(parts[1])
        except ValueError:
            raise ValueError(f"{path} line {line_number}: expected '<file name> <degrees>', got {line!r}") from None
        if not math.isfinite(degrees):
            raise ValueError(f"{path} line {line_number}: degrees must be finite, got {parts[1]}")
        if parts[0] not in known:
            raise ValueError(f"{path} line {line_number}: {parts[0]} is not one of the benchmark's images")
        rotations[parts[0]] = degrees
    return rotations


def read_holidays(root, rotations_file=None):
    """INRIA Holidays: root/jpg/NNNNXX.jpg; the queries are the XX=00 images, ranked against all images.

    rotations_file: optional rotation list (see `read_rotations`) turning the sideways photos upright.
    """
    folder = _require_folder(os.path.join(root, "jpg"), "Holidays (--holidays-path)")
    files = list_image_files(folder)
    if not files:
        raise FileNotFoundError(f"Holidays (--holidays-path): no images in {folder}")
    rotations = read_rotations(rotations_file, files) if rotations_file else {}
    ground_truth = holidays_ground_truth(files)
    if not ground_truth:
        raise ValueError(f"Holidays (--holidays-path): no query image (NNNN00.jpg) in {folder}")
    alone = [files[query] for query, positives in ground_truth if len(positives) == 0]
    if alone:
        raise ValueError(f"Holidays (--holidays-path): the queries {alone[:5]} have no other image of their group")
    database = _benchmark_images(
        [folder / name for name in files], [f"jpg/{name}" for name in files], [rotations.get(name, 0) for name in files]
    )

    def score(rankings):
        return {"mAP": 100.0 * holidays_map(files, rankings)}

    query_indices = np.array([query for query, _ in ground_truth])
    items = [np.concatenate([[query], positives]) for query, positives in ground_truth]
    return RetrievalBenchmark("holidays", database, None, query_indices, None, items, score)


def ukbench_files(folder):
    """The image files of a UKBench folder in the order of their number NNNNN (ukbenchNNNNN.jpg), checked to
    form complete groups: the object of image NNNNN is NNNNN // 4, and each object has its 4 images."""
    files = list_image_files(folder)
    if not files:
        raise ValueError(f"UKBench (--ukbench-path): expected groups of 4 images in {folder}, found 0")
    numbers = {}
    for name in files:
        match = UKBENCH_NAME.match(name)
        if not match:
            raise ValueError(f"UKBench (--ukbench-path): {folder / name} is not named ukbenchNNNNN.jpg")
        number = int(match[1])
        if number in numbers:
            raise ValueError(f"UKBench (--ukbench-path): {numbers[number]} and {name} in {folder} have the same number")
        numbers[number] = name
    groups = {number // 4 for number in numbers}
    incomplete = sorted(group for group in groups if any(4 * group + view not in numbers for view in range(4)))
    if incomplete:
        missing = [f"ukbench{4 * g + view:05d}" for g in incomplete for view in range(4) if 4 * g + view not in numbers]
        raise ValueError(
            f"UKBench (--ukbench-path): expected groups of 4 images in {folder} (the group of ukbenchNNNNN is "
            f"NNNNN // 4); {len(incomplete)} groups are incomplete, missing {', '.join(missing[:8])}"
        )
    return [numbers[number] for number in sorted(numbers)]


def read_ukbench(root):
    """UKBench: root/full/ukbenchNNNNN.jpg (or the images directly in root), groups of 4 by number
    (`ukbench_files`).

    Every image queries the whole set, itself included.
    """
    root = _require_folder(root, "UKBench (--ukbench-path)")
    folder = root / "full" if (root / "full").is_dir() else root
    files = ukbench_files(folder)
    prefix = "full/" if folder != root else ""
    database = _benchmark_images([folder / name for name in files], [prefix + name for name in files])

    def score(rankings):
        return {"N-S": ukbench_score(rankings)}

    return RetrievalBenchmark("ukbench", database, None, np.arange(len(files)), 4, None, score)


def read_distractors(root, list_file=None, num_distractors=None):
    """(paths, names) of distractor images: the first `num_distractors` names of `list_file` (paths
    relative to root, one a line), or of all the images under root in sorted order. None takes all."""
    root = _require_folder(root, "distractors (--distractors-path)")
    if list_file:
        if not os.path.isfile(list_file):
            raise FileNotFoundError(f"distractor list (--distractors-list) {list_file} does not exist")
        names = [line.strip() for line in Path(list_file).read_text().splitlines() if line.strip()]
        source = str(list_file)
    else:
        names = list_image_files(root, recursive=True)
        source = f"the images under {root}"
    if num_distractors is not None:
        if len(names) < num_distractors:
            raise ValueError(f"--num-distractors {num_distractors} but {source} gives only {len(names)} distractors")
        names = names[:num_distractors]
    paths = [root / name for name in names]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"distractor {path} (from {source}) does not exist or is not a regular file")
    return paths, names


def _file_digest(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def benchmark_copies(paths, benchmark_paths):
    """The files of `paths` that are one of `benchmark_paths` (the same file, through links too) or a
    byte-identical copy of one. Only files of a size that a benchmark file has are read."""
    identities = {(stat.st_dev, stat.st_ino) for stat in map(os.stat, benchmark_paths)}
    by_size = {}
    for path in benchmark_paths:
        by_size.setdefault(os.path.getsize(path), []).append(path)
    digests = {}
    copies = []
    for path in paths:
        stat = os.stat(path)
        if (stat.st_dev, stat.st_ino) in identities:
            copies.append(path)
        elif stat.st_size in by_size:
            if stat.st_size not in digests:
                digests[stat.st_size] = {_file_digest(other) for other in by_size[stat.st_size]}
            if _file_digest(path) in digests[stat.st_size]:
                copies.append(path)
    return copies


def read_copydays(root, distractors_root=None, distractors_list=None, num_distractors=None):
    """Copydays: root/original/NNNN00.jpg and the "strong" attacks root/strong/NNNNXX.jpg.

    The strong images query the originals plus the distractors (CD10k: 10k distractors); the one
    positive of a query is the original sharing its first 4 characters.
    """
    originals_folder = _require_folder(os.path.join(root, "original"), "Copydays (--copydays-path)")
    queries_folder = _require_folder(os.path.join(root, "strong"), "Copydays (--copydays-path)")
    originals, query_files = list_image_files(originals_folder), list_image_files(queries_folder)
    if not originals or not query_files:
        raise FileNotFoundError(f"Copydays (--copydays-path): no images in {originals_folder} or {queries_folder}")
    original_index = {name[:4]: index for index, name in enumerate(originals)}
    if len(original_index) != len(originals):
        raise ValueError(f"Copydays: two originals in {originals_folder} share their first 4 characters")
    missing = [name for name in query_files if name[:4] not in original_index]
    if missing:
        raise ValueError(f"Copydays: no original in {originals_folder} for the strong images {missing[:5]}")

    paths = [originals_folder / name for name in originals]
    names = [f"original/{name}" for name in originals]
    if distractors_root is not None:
        distractor_paths, distractor_names = read_distractors(distractors_root, distractors_list, num_distractors)
        benchmark_paths = paths + [queries_folder / name for name in query_files]
        copies = benchmark_copies(distractor_paths, benchmark_paths)
        if copies:
            raise ValueError(
                f"{len(copies)} distractors (--distractors-path {distractors_root}) are Copydays images, e.g. "
                f"{', '.join(map(str, copies[:3]))}: point --distractors-path at the distractor images only, "
                "or name them with --distractors-list"
            )
        paths += distractor_paths
        names += distractor_names
    elif distractors_list is not None:
        raise ValueError("--distractors-list needs --distractors-path (the folder its names are relative to)")
    database = _benchmark_images(paths, names)
    queries = _benchmark_images(
        [queries_folder / name for name in query_files], [f"strong/{name}" for name in query_files]
    )
    positives = np.array([original_index[name[:4]] for name in query_files])

    def score(rankings):
        return {"mAP": 100.0 * copydays_map(rankings, positives)}

    items = [np.array([positive]) for positive in positives]
    return RetrievalBenchmark("copydays", database, queries, None, None, items, score)


def _indices(values, query, key):
    """A gnd entry's database indices as integers; refuses values that are not whole numbers."""
    values = np.asarray(values).reshape(-1)
    if values.size == 0:
        return values.astype(np.int64)
    if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.all(values == np.floor(values))):
        raise ValueError(f"{query}: '{key}' holds values that are not whole database indices: {values[:5].tolist()}")
    return values.astype(np.int64)


def _box(values, query):
    box = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(box) != 4 or not np.all(np.isfinite(box)):
        raise ValueError(
            f"{query}: 'bbx' is not a box (x1, y1, x2, y2) of finite numbers: {np.asarray(values).tolist()}"
        )
    x1, y1, x2, y2 = box
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"{query}: 'bbx' {box.tolist()} is inverted or has zero area (needs x1 < x2 and y1 < y2)")
    return tuple(float(v) for v in box)


def _check_revisitop_ground_truth(ground_truth, path):
    """The ground truth's entries checked (keys, whole indices within the database, a proper box, easy or hard
    positives for every query); returns the query boxes, each error naming the query."""
    if not isinstance(ground_truth, dict) or not {"imlist", "qimlist", "gnd"} <= set(ground_truth):
        raise ValueError(f"{path} is not a revisitop ground truth (needs the keys imlist, qimlist, gnd)")
    if len(ground_truth["gnd"]) != len(ground_truth["qimlist"]):
        raise ValueError(f"{path}: {len(ground_truth['gnd'])} gnd entries for {len(ground_truth['qimlist'])} queries")
    num_database = len(ground_truth["imlist"])
    boxes = []
    for index, (entry, name) in enumerate(zip(ground_truth["gnd"], ground_truth["qimlist"])):
        query = f"{path}: query {index} ({name})"
        if not isinstance(entry, dict) or not {"bbx", "easy", "hard", "junk"} <= set(entry):
            raise ValueError(f"{query}: gnd[{index}] needs the keys bbx, easy, hard, junk")
        boxes.append(_box(entry["bbx"], query))
        indices = {key: _indices(entry[key], query, key) for key in ("easy", "hard", "junk")}
        for key, values in indices.items():
            if values.size and (values.min() < 0 or values.max() >= num_database):
                raise ValueError(f"{query}: '{key}' has indices outside the {num_database} database images")
        if not (indices["easy"].size or indices["hard"].size):
            raise ValueError(f"{query}: no easy or hard positive, so no mAP can be computed for it")
    for key in ("easy", "hard"):
        if not any(np.asarray(entry[key]).size for entry in ground_truth["gnd"]):
            raise ValueError(f"{path}: no query has a '{key}' positive: the {key.capitalize()} mAP would be undefined")
    return boxes


def _check_boxes_inside(paths, boxes, ground_truth_path):
    """Refuses a query box that does not overlap its image (the crop would be black)."""
    for index, (path, (x1, y1, x2, y2)) in enumerate(zip(paths, boxes)):
        try:
            with Image.open(path) as image:
                width, height = image.size
        except OSError as e:
            raise BadImageError(f"cannot read image {path}: {e}") from e
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            raise ValueError(
                f"{ground_truth_path}: query {index} ({os.path.basename(path)}): 'bbx' {[x1, y1, x2, y2]} lies "
                f"outside its {width}×{height} image"
            )


def read_revisitop(root, name):
    """Revisited Oxford / Paris: root/jpg/<name>.jpg and root/gnd_<benchmark>.pkl (imlist, qimlist, gnd).

    The queries are cropped to their box `bbx` before the transform. Scores are the Easy, Medium
    and Hard mAP and mean precisions at 1, 5 and 10.
    """
    if name not in REVISITOP_BENCHMARKS:
        raise ValueError(f"unknown revisitop benchmark {name!r}; choose from {', '.join(REVISITOP_BENCHMARKS)}")
    root = _require_folder(root, f"{name} (--{name}-path)")
    ground_truth_path = root / f"gnd_{name}.pkl"
    if not ground_truth_path.is_file():
        raise FileNotFoundError(f"{name} (--{name}-path): ground truth {ground_truth_path} does not exist")
    ground_truth = load_pickle(ground_truth_path)
    boxes = _check_revisitop_ground_truth(ground_truth, ground_truth_path)

    def images(image_names, boxes=None):
        names = [f"jpg/{image_name}.jpg" for image_name in image_names]
        paths = [root / image_name for image_name in names]
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"{name}: image {path} (listed in {ground_truth_path}) does not exist")
        return _benchmark_images(paths, names, boxes=boxes)

    gnd = ground_truth["gnd"]
    database = images(ground_truth["imlist"])
    queries = images(ground_truth["qimlist"], boxes)
    _check_boxes_inside(queries.paths, boxes, ground_truth_path)

    def score(rankings):
        results = {}
        for protocol, metrics in revisitop_map(rankings, gnd).items():
            for metric, value in metrics.items():
                results[f"{protocol[0].upper()} {metric}"] = 100.0 * value
        return results

    items = [
        np.concatenate([np.asarray(g[key], dtype=np.int64).reshape(-1) for key in ("easy", "hard", "junk")])
        for g in gnd
    ]
    return RetrievalBenchmark(name, database, queries, None, None, items, score)
