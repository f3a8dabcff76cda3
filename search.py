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
image2, score) and groups.csv (group, size, image): the groups are the connected components of the pairs.
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
from multigrain.search.descriptor_files import DescriptorCollection
from multigrain.search.nn_search import approximate_index, check_index_factory, knn_parts
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
    if args.nprobe is not None and not args.faiss_index:
        raise ValueError("--nprobe is for an approximate --faiss-index")
    if args.faiss_index and args.search == "torch":
        raise ValueError("--faiss-index searches with faiss: drop --search torch")
    if (args.faiss_index or args.search == "faiss") and importlib.util.find_spec("faiss") is None:
        flag = "--faiss-index" if args.faiss_index else "--search faiss"
        raise ValueError(f"{flag} needs faiss: pip install faiss-cpu (or the extra multigrain[faiss])")
    utils.check_device(args.device)
    if args.search == "faiss" and torch.device(args.device).type != "cpu":
        raise ValueError(f"--search faiss searches on the CPU: drop --device {args.device} (or use --search torch)")
    utils.check_writable_folder(args.output_dir, "--output-dir")
    database = DescriptorCollection(args.database, "--database")
    queries = DescriptorCollection(args.queries, "--queries") if args.queries else None
    if queries is not None and queries.dim != database.dim:
        raise ValueError(
            f"--queries {args.queries} holds {queries.dim}-d descriptors, "
            f"--database {args.database} {database.dim}-d descriptors"
        )
    neighbours = args.k + 1 if args.dedup else args.k
    if neighbours > len(database):
        what = f"-k {args.k} + the image itself" if args.dedup else f"-k {args.k}"
        raise ValueError(f"{what} is more than the {len(database)} images of --database {args.database}")
    if args.faiss_index:
        training_rows = min(args.faiss_train_size, len(database))
        try:
            check_index_factory(args.faiss_index, database.dim, training_rows, args.nprobe)
        except ValueError as e:
            raise ValueError(f"--faiss-index {args.faiss_index}: {e}") from None
    known = read_known_duplicates(args.known_duplicates, database.names) if args.known_duplicates else None
    return queries, database, known


class Searcher:
    """The k nearest database rows of query rows: exact (torch or faiss) or through an approximate index."""

    def __init__(self, database, args):
        self.database, self.args, self.index = database, args, None
        self.device = torch.device(args.device)
        if args.faiss_index:
            sample = database.sample(args.faiss_train_size)
            print(f"training the faiss index {args.faiss_index} on {len(sample)} of {len(database)} descriptors")
            try:
                self.index = approximate_index(args.faiss_index, sample, database.parts(), args.nprobe)
            except ValueError as e:
                raise utils.UsageError(f"--faiss-index {args.faiss_index}: {e}") from None

    def search(self, queries, k):
        """(scores, indices) numpy arrays, best first; an approximate index may give fewer than k (index -1)."""
        if self.index is not None:
            return self.index.search(np.ascontiguousarray(queries), k)
        use_faiss = flags.SEARCH_BACKENDS[self.args.search]
        scores, indices = knn_parts(
            torch.from_numpy(queries).to(self.device), self.database.parts(), k, self.args.chunk_size, use_faiss
        )
        return scores.cpu().numpy(), indices.cpu().numpy()


def write_neighbours(queries, database, searcher, args):
    path = Path(args.output_dir) / "neighbours.csv"
    with open_atomic(path, "neighbours") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "match", "score", "rank"])
        for offset, part in queries.parts():
            scores, indices = searcher.search(part, args.k)
            for row in range(len(part)):
                for rank, (score, index) in enumerate(zip(scores[row], indices[row]), 1):
                    if index >= 0:
                        writer.writerow([queries.names[offset + row], database.names[index], f"{score:.6f}", rank])
    print(f"the {args.k} nearest of {len(queries)} queries among {len(database)} images: {path}")


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


def deduplicate(database, searcher, known, args):
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

    order = np.lexsort((seconds, firsts, -scores))
    pairs_path = Path(args.output_dir) / "pairs.csv"
    with open_atomic(pairs_path, "pairs") as f:
        writer = csv.writer(f)
        writer.writerow(["image1", "image2", "score"])
        for index in order:
            writer.writerow([database.names[firsts[index]], database.names[seconds[index]], f"{scores[index]:.6f}"])

    graph = scipy.sparse.coo_matrix((np.ones(len(firsts)), (firsts, seconds)), shape=(len(database), len(database)))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    members = np.flatnonzero(sizes[labels] >= 2)
    # Groups are numbered in the order of their first image, and their images listed together.
    first_rows = {}
    for row in members:
        first_rows.setdefault(labels[row], row)
    numbers = {label: number for number, label in enumerate(sorted(first_rows, key=first_rows.get), 1)}
    members = sorted(members, key=lambda row: (numbers[labels[row]], row))
    groups_path = Path(args.output_dir) / "groups.csv"
    with open_atomic(groups_path, "groups") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "size", "image"])
        for row in members:
            writer.writerow([numbers[labels[row]], sizes[labels[row]], database.names[row]])
    shown = [number for number in range(1, len(numbers) + 1)][: args.print_groups]
    for number in shown:
        images = [database.names[row] for row in members if numbers[labels[row]] == number]
        print(f"group {number} ({len(images)} images): {' '.join(images)}")
    if len(numbers) > len(shown):
        print(f"... {len(numbers) - len(shown)} more groups in {groups_path}")
    selection = f"score >= {threshold:.6f}" if threshold is not None else "no threshold"
    print(
        f"{len(firsts)} pairs among the {args.k} nearest of each of {len(database)} images ({selection}): "
        f"{pairs_path}; {len(numbers)} groups of {len(members)} images: {groups_path}"
    )
    if known is not None:
        found_known = int(is_known[kept].sum())
        precision = found_known / max(len(firsts), 1)
        recall = found_known / len(known)
        print(f"against {len(known)} known duplicate pairs: precision {precision:.3f}, recall {recall:.3f}")
        return {"threshold": threshold, "pairs": len(firsts), "precision": precision, "recall": recall}
    return {"threshold": threshold, "pairs": len(firsts)}


def main(args):
    queries, database, known = check_args(args)
    os.makedirs(args.output_dir, exist_ok=True)
    searcher = Searcher(database, args)
    if args.dedup:
        return deduplicate(database, searcher, known, args)
    write_neighbours(queries, database, searcher, args)
    return None


def get_args_parser(add_help=True):
    parser = flags.script_parser("Nearest neighbours and near-duplicate groups of MultiGrain descriptors", add_help)
    parser.add_argument("--database", required=True, help="descriptors: extract.py folder, NAME.npy, or a folder")
    parser.add_argument("--queries", default=None, help="query descriptors (same forms as --database)")
    parser.add_argument("--dedup", action="store_true", help="near-duplicate pairs and groups within --database")
    parser.add_argument(
        "-k", default=10, type=flags.int_in(1), help="neighbours per query (with --dedup: per image, itself excluded)"
    )
    parser.add_argument(
        "--threshold", default=None, type=flags.float_in(-1, 1), help="--dedup: keep pairs with score >= this"
    )
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
    parser.add_argument("--nprobe", default=None, type=flags.int_in(1), help="--faiss-index IVF: lists visited")
    flags.add_device(parser, default="cpu", help="where the exact torch search runs: cpu or cuda")
    flags.add_chunk_size(parser)
    return parser


if __name__ == "__main__":
    utils.run_script(main, get_args_parser())
