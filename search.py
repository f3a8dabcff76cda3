"""Nearest neighbours and near-duplicates among descriptors written by extract.py or evaluate.py.

    python search.py --queries q_descriptors/ --database db_descriptors/ -k 10 --output-dir results/
    python search.py --dedup --database descriptors/ --threshold 0.8 --output-dir duplicates/
    python search.py --dedup --database descriptors/ --known-duplicates pairs.csv --precision-target 0.95 \
        --output-dir duplicates/

A descriptor input is an extract.py folder, a NAME.npy file (with its NAME.txt) or a folder with one.
The search ranks by inner product (cosine similarity for the L2-normalised descriptors of MultiGrain). It
is exact, in chunks, on --device (torch) or with faiss when installed, reading the database one shard at a
time; --faiss-index builds an approximate faiss index instead, for collections beyond exact search.

Outputs in --output-dir: neighbours.csv (query, match, score, rank), or with --dedup pairs.csv (image1,
image2, score) and groups.csv (group, size, image): the groups are the connected components of the pairs. With
--keep, keep.csv keeps one image of each group by a rule and lists the others for removal (nothing is deleted).
report.html shows the groups (largest first) or the queries with thumbnails (multigrain/search/report.py).

    python search.py --dedup --database descriptors/ --threshold 0.8 --keep largest --output-dir duplicates/
    python search.py --queries new/ --database descriptors/ --faiss-index IVF1024,Flat --index descriptors.index.npz \
        --output-dir results/

--index FILE saves the faiss index built from --database in FILE, and later searches read it from there while the
collection has not changed (multigrain/search/saved_index.py).
"""

import csv
import importlib.util
import os
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch

import flags
import utils
from multigrain.search import keep, report, saved_index
from multigrain.search.collection_images import CollectionImages, read_manifest
from multigrain.search.collection_settings import settings_differences
from multigrain.search.descriptor_files import DescriptorCollection
from multigrain.search.nn_search import check_index_factory
from multigrain.search.searcher import Searcher
from multigrain.storage.atomic_write import open_atomic
from multigrain.storage.input_files import csv_records, shown


@utils.usage_check
def check_args(args):
    """Refuses inconsistent flags and inputs before the search; returns the (queries, database) collections
    (queries None with --dedup) and the known duplicate pairs of --known-duplicates (None without)."""
    if args.dedup == bool(args.queries):
        raise ValueError("pass --queries (nearest neighbours) or --dedup (duplicates within --database), not both")
    if args.precision_target is not None and not args.known_duplicates:
        raise ValueError("--precision-target needs --known-duplicates PAIRS.csv")
    if args.precision_target is not None and args.threshold is not None:
        raise ValueError("--threshold and --precision-target both set the threshold: pass one")
    if (args.threshold is not None or args.known_duplicates) and not args.dedup:
        raise ValueError("--threshold and --known-duplicates are for --dedup")
    if args.known_duplicates and not os.path.isfile(args.known_duplicates):
        raise ValueError(f"--known-duplicates {args.known_duplicates} is not a file")
    if args.faiss_index is not None and not args.faiss_index.strip():
        raise ValueError("--faiss-index is empty: pass an index-factory string, e.g. IVF1024,PQ32 (or drop the flag)")
    if args.nprobe is not None and not (args.faiss_index or args.index):
        raise ValueError("--nprobe is for an approximate --faiss-index")
    if (args.faiss_index or args.index) and args.search == "torch":
        raise ValueError("--faiss-index searches with faiss: drop --search torch")
    if args.index and not args.faiss_index and not os.path.isfile(args.index):
        raise ValueError(f"--index {args.index} does not exist: build it with --faiss-index FACTORY")
    if (args.keep or args.keep_in) and not args.dedup:
        raise ValueError("--keep and --keep-in are for --dedup")
    if args.keep_in and not args.keep:
        raise ValueError("--keep-in needs a --keep rule to choose among the images of its folder")
    if (args.faiss_index or args.search == "faiss") and importlib.util.find_spec("faiss") is None:
        flag = "--faiss-index" if args.faiss_index else "--search faiss"
        raise ValueError(f"{flag} needs faiss: pip install faiss-cpu (or the extra multigrain[faiss])")
    utils.check_device(args.device)
    if args.search == "faiss" and torch.device(args.device).type != "cpu":
        raise ValueError(f"--search faiss searches on the CPU: drop --device {args.device} (or use --search torch)")
    utils.check_writable_folder(args.output_dir, "--output-dir")
    database = DescriptorCollection(args.database, "--database")
    queries = DescriptorCollection(args.queries, "--queries") if args.queries else None
    if queries is not None:
        check_same_settings(queries, database, args)
    if queries is not None and queries.dim != database.dim:
        raise ValueError(
            f"--queries {args.queries} holds {queries.dim}-d descriptors, "
            f"--database {args.database} {database.dim}-d descriptors"
        )
    neighbours = args.k + 1 if args.dedup else args.k
    if neighbours > len(database):
        what = f"-k {args.k} + the image itself" if args.dedup else f"-k {args.k}"
        raise ValueError(f"{what} is more than the {len(database)} images of --database {args.database}")
    if args.index and os.path.isfile(args.index):
        saved_index.check_index(args.index, database, "--database", args.faiss_index)
    if args.faiss_index:
        training_rows = min(args.faiss_train_size, len(database))
        try:
            check_index_factory(args.faiss_index, database.dim, training_rows, args.nprobe)
        except ValueError as e:
            raise ValueError(f"--faiss-index {args.faiss_index}: {e}") from None
    known = read_known_duplicates(args.known_duplicates, database.names) if args.known_duplicates else None
    images = CollectionImages.of_collection(database, "--database")
    if args.keep in ("largest", "oldest") and images.root is None:
        raise ValueError(f"--keep {args.keep} reads the image files, but {images.unreachable}: use --keep first")
    if args.keep_in:
        args.keep_in = keep.normalised_folder(args.keep_in)
        if not any(keep.in_folder(name, args.keep_in) for name in database.names):
            raise ValueError(
                f"--keep-in {args.keep_in}: no image of --database is in that folder (give it as the image names "
                f"write it, relative to the images folder, e.g. {database.names[0].rpartition('/')[0] or '.'})"
            )
    return queries, database, images, known


def check_same_settings(queries, database, args):
    """Refuses the descriptors of two extract.py collections made by other models or with other settings."""
    manifests = [read_manifest(collection.arrays[0].parent) for collection in (queries, database)]
    if all(manifest is not None and "extraction" in manifest for manifest in manifests):
        for field, (query_value, database_value) in settings_differences(*manifests):
            raise ValueError(
                f"--queries {args.queries} was extracted with {field} = {query_value}, --database {args.database} "
                f"with {database_value}: descriptors compare only when made by the same model and settings"
            )


def make_searcher(database, args):
    """The Searcher of --database: exact, or through the faiss index of --faiss-index, built (and saved in --index)
    or read from --index."""
    index = None
    if args.index and os.path.isfile(args.index):
        print(f"searching with the saved index {args.index}")
        index = saved_index.load_index(args.index, args.nprobe)
    elif args.faiss_index:
        print(f"training the faiss index {args.faiss_index} on {min(args.faiss_train_size, len(database))} of "
              f"{len(database)} descriptors")  # fmt: skip
        try:
            index = saved_index.build_index(database, args.faiss_index, args.faiss_train_size, args.nprobe)
        except ValueError as e:
            raise utils.UsageError(f"--faiss-index {args.faiss_index}: {e}") from None
        if args.index:
            saved_index.save_index(args.index, index, args.faiss_index, database)
            print(f"saved the index in {args.index}: later searches of the same collection read it")
    use_faiss = flags.SEARCH_BACKENDS[args.search]
    return Searcher(database, device=args.device, use_faiss=use_faiss, chunk_size=args.chunk_size, index=index)


def write_neighbours(queries, database, images, searcher, args):
    path = Path(args.output_dir) / "neighbours.csv"
    reported = []  # the report's (query, [(row, score, rank)])
    with open_atomic(path, "neighbours") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "match", "score", "rank"])
        for offset, part in queries.parts():
            scores, indices = searcher.search(part, args.k)
            for row in range(len(part)):
                matches = []
                for rank, (score, index) in enumerate(zip(scores[row], indices[row]), 1):
                    if index >= 0:
                        writer.writerow([queries.names[offset + row], database.names[index], f"{score:.6f}", rank])
                        matches.append((int(index), float(score), rank))
                if len(reported) < args.report_limit:
                    reported.append((offset + row, matches))
    print(f"the {args.k} nearest of {len(queries)} queries among {len(database)} images: {path}")
    if args.report_limit:
        summary = [f"The {args.k} nearest of {len(queries)} queries among the {len(database)} images of --database."]
        if len(queries) > len(reported):
            summary.append(f"The report shows the first {len(reported)} queries: {path.name} lists them all.")
        query_images = CollectionImages.of_collection(queries, "--queries")
        print_report(
            report.write_neighbours_report(
                args.output_dir, query_images, images, reported, summary, title="Nearest neighbours"
            )
        )
    else:
        report.remove_report(args.output_dir)


def nearest_pairs(database, searcher, args):
    """(first, second, score) arrays of the pairs (first < second) among each image's k nearest others."""
    firsts, seconds, pair_scores = [], [], []
    for offset, part in database.parts():
        scores, indices = searcher.search(part, args.k + 1)
        own = np.arange(offset, offset + len(part))[:, None]
        # Drop the image itself, or the last neighbour when identical descriptors ranked before it.
        is_self = indices == own
        keep = ~is_self
        keep[~is_self.any(axis=1), -1] = False
        keep &= indices >= 0
        rows = np.broadcast_to(own, indices.shape)[keep]
        firsts.append(np.minimum(rows, indices[keep]))
        seconds.append(np.maximum(rows, indices[keep]))
        pair_scores.append(scores[keep])
    firsts, seconds, scores = (np.concatenate(parts) for parts in (firsts, seconds, pair_scores))
    pairs, position = np.unique(np.stack([firsts, seconds], axis=1), axis=0, return_index=True)
    return pairs[:, 0], pairs[:, 1], scores[position]


def read_known_duplicates(path, names):
    """The set of (first, second) row pairs, first < second, of a CSV with columns image1, image2."""
    rows = {name: row for row, name in enumerate(names)}
    records = csv_records(path)
    _, header = next(records, (1, []))
    if not {"image1", "image2"} <= set(header):
        raise ValueError(f"--known-duplicates {path} needs the columns image1,image2 (a header line)")
    columns = header.index("image1"), header.index("image2")
    known = set()
    for line, fields in records:
        if not fields:
            continue
        if len(fields) != len(header):
            raise ValueError(
                f"--known-duplicates {path} line {line}: {len(fields)} fields, the header has {len(header)}"
            )
        pair = [fields[column] for column in columns]
        for name in pair:
            if name not in rows:
                raise ValueError(f"--known-duplicates {path} line {line}: {shown(name)} is not in --database")
        first, second = sorted(rows[name] for name in pair)
        if first != second:
            known.add((first, second))
    if not known:
        raise ValueError(f"--known-duplicates {path} lists no pair")
    return known


def threshold_for_precision(scores, is_known, target):
    """(threshold, best precision): the lowest threshold whose pairs (score >= threshold) have a precision
    >= target against the known pairs, which gives the highest recall; None if no threshold reaches it."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    true_positives = np.cumsum(is_known[order])
    counts = np.arange(1, len(scores) + 1)
    # Cut only between different scores: pairs with equal scores are all in or all out.
    last_of_ties = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    precisions = np.where(last_of_ties, true_positives / counts, 0.0)
    reaching = np.flatnonzero(precisions >= target)
    threshold = float(sorted_scores[reaching[-1]]) if len(reaching) else None
    return threshold, float(precisions.max(initial=0.0))


def deduplicate(database, images, searcher, known, args):
    firsts, seconds, scores = nearest_pairs(database, searcher, args)
    is_known = None
    if known is not None:
        is_known = np.array([(int(a), int(b)) in known for a, b in zip(firsts, seconds)], dtype=bool)
    threshold = args.threshold
    if args.precision_target is not None:
        threshold, best = threshold_for_precision(scores, is_known, args.precision_target)
        if threshold is None:
            raise utils.UsageError(
                f"no threshold reaches --precision-target {args.precision_target} on the pairs among the {args.k} "
                f"nearest of each image (the best precision is {best:.3f})"
            )
        print(f"threshold {threshold:.6f}: the lowest with precision >= {args.precision_target} on the known pairs")
    kept = scores >= threshold if threshold is not None else np.ones(len(scores), dtype=bool)
    firsts, seconds, scores = firsts[kept], seconds[kept], scores[kept]
    pair_known = is_known[kept] if known is not None else None

    order = np.lexsort((seconds, firsts, -scores))
    pairs_path = Path(args.output_dir) / "pairs.csv"
    with open_atomic(pairs_path, "pairs") as f:
        writer = csv.writer(f)
        writer.writerow(["image1", "image2", "score"])
        for index in order:
            writer.writerow([database.names[firsts[index]], database.names[seconds[index]], f"{scores[index]:.6f}"])

    groups, labels = duplicate_groups(len(database), firsts, seconds)
    members = sum(len(rows) for _, rows in groups)
    groups_path = Path(args.output_dir) / "groups.csv"
    with open_atomic(groups_path, "groups") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "size", "image"])
        for number, rows in groups:
            writer.writerows([number, len(rows), database.names[row]] for row in rows)
    for number, rows in groups[: args.print_groups]:
        print(f"group {number} ({len(rows)} images): {' '.join(database.names[row] for row in rows)}")
    if len(groups) > args.print_groups:
        print(f"... {len(groups) - args.print_groups} more groups in {groups_path}")
    selection = f"score >= {threshold:.6f}" if threshold is not None else "no threshold"
    summary = [
        f"{len(firsts)} pairs among the {args.k} nearest of each of {len(database)} images ({selection}): "
        f"{pairs_path}; {len(groups)} groups of {members} images: {groups_path}"
    ]
    print(summary[0])
    result = {"threshold": threshold, "pairs": len(firsts)}
    missed = []
    if known is not None:
        found_known = int(pair_known.sum())
        precision = found_known / max(len(firsts), 1)
        recall = found_known / len(known)
        summary.append(f"against {len(known)} known duplicate pairs: precision {precision:.3f}, recall {recall:.3f}")
        print(summary[-1])
        result.update(precision=precision, recall=recall)
        missed = missed_pairs(database, known, firsts, seconds)
        summary.append(f"{found_known} known pairs found (marked known), {len(missed)} not found (listed last)")
    decisions = None
    keep_path = Path(args.output_dir) / "keep.csv"
    if args.keep:
        decisions = write_keep_list(keep_path, groups, images, args)
        removed = sum(decision.decision == "remove" for decision in decisions.values())
        summary.append(
            f"keep list (--keep {args.keep}): one image kept in each group, {removed} listed for removal in "
            f"{keep_path}; nothing was deleted"
        )
        print(summary[-1])
    elif keep_path.exists():
        keep_path.unlink()  # an earlier run's list, of other groups
    if args.report_limit:
        largest = sorted(groups, key=lambda group: (-len(group[1]), group[0]))[: args.report_limit]
        if len(groups) > len(largest):
            summary.append(f"The report shows the {len(largest)} largest of the {len(groups)} groups: see groups.csv")
        if len(missed) > args.report_limit:
            summary.append(f"It shows {args.report_limit} of the {len(missed)} known pairs not found")
        written = report.write_dedup_report(
            args.output_dir,
            images,
            report_groups(largest, labels, firsts, seconds, scores, pair_known),
            summary,
            decisions=decisions,
            missed=missed[: args.report_limit],
        )
        print_report(written)
    else:
        report.remove_report(args.output_dir)
    return result


def print_report(written):
    """What report.html says of its images (none reachable, some gone or changed), then where it is."""
    for notice in written.notices:
        print(f"report: {notice}")
    print(f"report: {written.path}")


def duplicate_groups(num_rows, firsts, seconds):
    """([(number, rows)], component label of each row): the connected components of the pairs that hold two images
    or more, numbered in the order of their first image, their rows in order."""
    graph = scipy.sparse.coo_matrix((np.ones(len(firsts)), (firsts, seconds)), shape=(num_rows, num_rows))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    rows_of, label_of = {}, labels.tolist()
    for row in np.flatnonzero(sizes[labels] >= 2).tolist():
        rows_of.setdefault(label_of[row], []).append(row)
    return list(enumerate(rows_of.values(), 1)), labels


def report_groups(groups, labels, firsts, seconds, scores, pair_known):
    """The DuplicateGroups of `groups` ((number, rows) pairs), with their pairs."""
    number_of = {labels[rows[0]]: number for number, rows in groups}
    pairs = {number: [] for number, _ in groups}
    for index in np.flatnonzero(np.isin(labels[firsts], list(number_of))).tolist():
        known = bool(pair_known[index]) if pair_known is not None else None
        pair = (int(firsts[index]), int(seconds[index]), float(scores[index]), known)
        pairs[number_of[labels[firsts[index]]]].append(pair)
    return [report.DuplicateGroup(number, rows, pairs[number]) for number, rows in groups]


def missed_pairs(database, known, firsts, seconds):
    """The known pairs not found, (row1, row2, score), most similar first."""
    missed = np.array(sorted(known - set(zip(firsts.tolist(), seconds.tolist()))), dtype=np.int64).reshape(-1, 2)
    rows = np.unique(missed)
    descriptors = np.empty((len(rows), database.dim), dtype=np.float64)
    for offset, part in database.parts():
        inside = (rows >= offset) & (rows < offset + len(part))
        descriptors[inside] = part[rows[inside] - offset]
    first, second = (descriptors[np.searchsorted(rows, missed[:, column])] for column in (0, 1))
    scores = np.einsum("pd,pd->p", first, second).astype(np.float32)  # as the search scores pairs
    order = np.lexsort((missed[:, 1], missed[:, 0], -scores))
    return [(int(missed[i, 0]), int(missed[i, 1]), float(scores[i])) for i in order]


def write_keep_list(path, groups, images, args):
    """keep.csv of --keep and --keep-in; returns {row: keep.Decision}."""
    rows = [row for _, group_rows in groups for row in group_rows]
    facts = images.facts(rows, pixels=args.keep == "largest") if args.keep != "first" else None
    decisions = keep.decide(groups, images.names, args.keep, facts, args.keep_in)
    keep.write_decisions(path, decisions, images.names)
    return {decision.row: decision for decision in decisions}


def main(args):
    queries, database, images, known = check_args(args)
    os.makedirs(args.output_dir, exist_ok=True)
    searcher = make_searcher(database, args)
    if args.dedup:
        return deduplicate(database, images, searcher, known, args)
    write_neighbours(queries, database, images, searcher, args)
    return None


def get_args_parser(add_help=True):
    parser = flags.script_parser("Nearest neighbours and near-duplicate groups of MultiGrain descriptors", add_help)
    parser.add_argument("--database", required=True, help="descriptors: extract.py folder, NAME.npy, or a folder")
    parser.add_argument("--queries", default=None, help="query descriptors (same forms as --database)")
    parser.add_argument("--dedup", action="store_true", help="near-duplicate pairs and groups within --database")
    flags.add_neighbours(parser, default=10, help="neighbours per query (with --dedup: per image, itself excluded)")
    flags.add_threshold(parser, help="--dedup: keep pairs with score >= this")
    parser.add_argument(
        "--known-duplicates", default=None, help="--dedup: CSV of known duplicate pairs (columns image1,image2)"
    )
    parser.add_argument(
        "--precision-target",
        default=None,
        type=flags.float_in(0, 1, low_open=True),
        help="--dedup: the lowest threshold whose pairs reach this precision on --known-duplicates",
    )
    flags.add_output_dir(parser, "where neighbours.csv or pairs.csv and groups.csv are written", required=True)
    parser.add_argument("--print-groups", default=10, type=flags.int_in(0), help="--dedup: groups printed")
    flags.add_search(parser)
    parser.add_argument(
        "--faiss-index",
        default=None,
        help='approximate search: a faiss index-factory string, e.g. "IVF1024,PQ32" or "HNSW32"',
    )
    parser.add_argument(
        "--faiss-train-size",
        default=100000,
        type=flags.int_in(1),
        help="--faiss-index: database descriptors drawn to train it",
    )
    flags.add_nprobe(parser, "--faiss-index IVF: lists visited")
    flags.add_saved_index(
        parser,
        "a saved faiss index of --database: read when FILE exists (refused if the collection changed since), else "
        "built with --faiss-index and saved there",
    )
    parser.add_argument(
        "--keep",
        default=None,
        choices=keep.RULES,
        help="--dedup: keep one image of each group by this rule; keep.csv lists the others for removal",
    )
    parser.add_argument(
        "--keep-in",
        default=None,
        metavar="FOLDER",
        help="--dedup --keep: keep an image of this folder (as the image names write it) when a group has one",
    )
    flags.add_report_limit(parser, "groups (largest first) or queries")
    flags.add_device(parser, default="cpu", help="where the exact torch search runs: cpu or cuda")
    flags.add_chunk_size(parser)
    return parser


if __name__ == "__main__":
    utils.run_script(main, get_args_parser())
