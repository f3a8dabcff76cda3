"""Benchmark 6: search.py's search, exact and approximate, against faiss.

    python -m benchmarks.search                                   # 100k x 256, 1000 queries
    python -m benchmarks.search --num-database 20000 --dim 2048 --faiss-index IVF256,PQ64

Exact: `multigrain.search.nn_search.knn` (torch, chunked; and with faiss choosing the candidates, as search.py's
default) against a raw faiss IndexFlatIP on the same data, side by side in interleaved rounds: seconds and
peak memory above the data. Approximate: an index from a faiss index-factory string (as `search.py
--faiss-index`), trained on the database, at several nprobe: recall@k of its top k against the exact top
k, how often it ranks first the database row that a query is a near copy of, and its speed-up over
faiss flat. The database is clustered (Gaussian blobs) as real descriptors are; on uniform random vectors
no approximate index does well.
"""

import time

import numpy as np
import torch

import flags
from benchmarks.retrieval import PeakMemory
from benchmarks.timing import benchmark_parser, describe_machine, format_table, median_ratio, time_side_by_side
from multigrain.search.nn_search import approximate_index, knn


def make_descriptors(num_database, num_queries, dim, num_clusters, seed=0):
    """L2-normalised float32 database rows drawn around random cluster centres, and queries that are near
    copies of random database rows (returned too): each query has one true match and its cluster around it."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, dim)).astype(np.float32)

    def normalised(rows):
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    database = normalised(centres[rng.integers(num_clusters, size=num_database)])
    database = normalised(database + rng.standard_normal((num_database, dim), np.float32) / np.sqrt(dim))
    sources = rng.integers(num_database, size=num_queries)
    noise = 0.3 * rng.standard_normal((num_queries, dim), np.float32) / np.sqrt(dim)
    return database, normalised(database[sources] + noise), sources


def benchmark_exact(faiss, database, queries, args):
    results = {}

    def candidate(name, search):
        def run():
            results[name] = search()

        return run

    def faiss_flat():
        index = faiss.IndexFlatIP(database.shape[1])
        index.add(database)
        return index.search(queries, args.k)

    candidates = {
        "faiss IndexFlatIP": candidate("faiss IndexFlatIP", faiss_flat),
        "knn, torch": candidate("knn, torch", lambda: knn(queries, database, args.k, args.chunk_size, False)),
        "knn, faiss + rescoring": candidate("knn, faiss + rescoring", lambda: knn(queries, database, args.k)),
    }
    times = time_side_by_side(candidates, args.rounds, warmup=0)
    memory = {}
    for name, run in candidates.items():
        with PeakMemory(torch.device("cpu")) as peak:
            run()
        memory[name] = peak.peak_bytes
    reference = results["faiss IndexFlatIP"][1]
    rows = []
    for name in candidates:
        same = (results[name][1] == reference).mean()
        rows.append(
            [
                name,
                f"{min(times[name]):.2f}",
                f"{median_ratio(times[name], times['faiss IndexFlatIP']):.2f}",
                f"{memory[name] / 2**20:.0f}",
                f"{same:.4f}",
            ]
        )
    print(
        f"Exact search: {len(queries)} queries, {len(database)} x {database.shape[1]} database, k = {args.k}, "
        f"chunk size {args.chunk_size}, {args.rounds} rounds, {describe_machine('cpu')}, faiss {faiss.__version__}"
    )
    print(
        format_table(
            ["search", "seconds (best)", "time / faiss flat (median)", "peak extra MiB", "same top-k as faiss"], rows
        )
    )
    return {"times": times, "memory": memory, "exact": reference}


def benchmark_approximate(faiss, database, queries, sources, exact, flat_seconds, args):
    start = time.perf_counter()
    index = approximate_index(args.faiss_index, database[: args.train_size], [(0, database)])
    build_seconds = time.perf_counter() - start
    rows, results = [], {}
    for nprobe in args.nprobe:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        seconds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            _, found = index.search(queries, args.k)
            seconds.append(time.perf_counter() - start)
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, exact)])
        match_at_1 = np.mean(found[:, 0] == sources)
        speedup = flat_seconds / min(seconds)
        results[nprobe] = {"recall": recall, "match_at_1": match_at_1, "speedup": speedup}
        rows.append([str(nprobe), f"{min(seconds):.3f}", f"{speedup:.1f}", f"{recall:.3f}", f"{match_at_1:.3f}"])
    print(
        f"Approximate search: faiss {args.faiss_index} trained on {min(args.train_size, len(database))} rows and "
        f"filled in {build_seconds:.1f} s; speed-up over faiss flat ({flat_seconds:.2f} s)"
    )
    exact_at_1 = np.mean(exact[:, 0] == sources)
    print(
        format_table(["nprobe", "seconds (best)", "speed-up", f"recall@{args.k}", "copied row first"], rows)
        + f"\n(exact search: copied row first for {exact_at_1:.3f} of the queries)"
    )
    return results


def main(args):
    import faiss

    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    database, queries, sources = make_descriptors(args.num_database, args.num_queries, args.dim, args.num_clusters)
    exact = benchmark_exact(faiss, database, queries, args)
    flat_seconds = min(exact["times"]["faiss IndexFlatIP"])
    approximate = benchmark_approximate(faiss, database, queries, sources, exact["exact"], flat_seconds, args)
    return {"exact": exact, "approximate": approximate}


def get_args_parser(add_help=True):
    parser = benchmark_parser("search.py's exact and approximate search against faiss flat", add_help)
    parser.add_argument("--num-database", default=100000, type=flags.int_in(1), help="database vectors")
    parser.add_argument("--num-queries", default=1000, type=flags.int_in(1), help="queries")
    parser.add_argument("--dim", default=256, type=flags.int_in(1), help="descriptor dimension")
    parser.add_argument("--num-clusters", default=1000, type=flags.int_in(1), help="clusters of the synthetic data")
    parser.add_argument("-k", default=10, type=flags.int_in(1), help="neighbours per query")
    parser.add_argument("--chunk-size", default=4096, type=flags.int_in(1), help="knn's chunk size")
    parser.add_argument("--rounds", default=3, type=flags.int_in(1), help="timed searches of each kind")
    parser.add_argument("--faiss-index", default="IVF1024,PQ32", help="faiss index-factory string (approximate)")
    parser.add_argument("--train-size", default=50000, type=flags.int_in(1), help="database rows that train it")
    parser.add_argument("--nprobe", default=[1, 8, 32], nargs="+", type=flags.int_in(1), help="IVF lists visited")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
