"""Benchmark 6: the DISC21 descriptor-track search, the best --max-results pairs over all queries together.

    python -m benchmarks.disc21_search                                  # 10k and 100k references, d = 256
    python -m benchmarks.disc21_search --num-references 10000 100000 1000000

On random unit descriptors, for each reference count: `multigrain.search.nn_search.top_pairs` (exact, with faiss
when installed, or torch) next to a plain faiss flat search (IndexFlatL2, a fixed k = ⌈max_results / nq⌉
per query, then the best max_results of those pairs, which can miss pairs of queries with many close
references). Time (interleaved rounds, median ratio to faiss flat) and peak memory above the level at
entry; the references themselves are allocated before. The ratios to faiss flat are medians over rounds,
of wall-clock times and of the process's CPU times (robust to other processes' load on a shared machine).
Target: within 1.5× of faiss flat's time, memory independent of the reference count beyond the chunk.
"""

import time

import numpy as np
import torch

import flags
from benchmarks.retrieval import PeakMemory
from benchmarks.timing import (
    benchmark_parser,
    describe_machine,
    format_table,
    median_ratio,
    time_side_by_side,
    verdict,
)
from multigrain.search.nn_search import top_pairs


def unit_descriptors(rng, num, dim):
    x = rng.standard_normal((num, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def faiss_flat(queries, references, max_results):
    """faiss's exhaustive L2 search with a fixed k per query, then the best max_results pairs of all."""
    import faiss

    k = min(len(references), -(-max_results // len(queries)))
    index = faiss.IndexFlatL2(references.shape[1])
    index.add(references)
    distances, rows = index.search(queries, k)
    best = np.argsort(distances.reshape(-1), kind="stable")[:max_results]
    return best // k, rows.reshape(-1)[best], -distances.reshape(-1)[best]


def with_cpu_time(fn, seconds):
    """fn, appending the CPU time of the process during each call to `seconds`: on a shared machine the
    wall-clock time also counts the other processes' load."""

    def timed():
        start = time.process_time()
        fn()
        seconds.append(time.process_time() - start)

    return timed


def compare(queries, references, args):
    """Times (wall and CPU, per round) and peak extra memory of top_pairs and faiss flat on one reference set."""
    use_faiss = {"faiss": True, "torch": False}[args.search]
    candidates = {
        f"top_pairs ({args.search})": lambda: top_pairs(
            queries, references, args.max_results, chunk_size=args.chunk_size, use_faiss=use_faiss
        ),
        "faiss flat": lambda: faiss_flat(queries, references, args.max_results),
    }
    cpu_times = {name: [] for name in candidates}
    times = time_side_by_side(
        {name: with_cpu_time(fn, cpu_times[name]) for name, fn in candidates.items()}, args.rounds, warmup=1
    )
    memory = {}
    for name, fn in candidates.items():
        with PeakMemory(torch.device("cpu")) as peak:
            fn()
        memory[name] = peak.peak_bytes
    return {
        name: {"seconds": times[name], "cpu_seconds": cpu_times[name], "peak_bytes": memory[name]}
        for name in candidates
    }


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    queries = unit_descriptors(rng, args.num_queries, args.dim)
    rows, results = [], {}
    for num_references in args.num_references:
        measured = compare(queries, unit_descriptors(rng, num_references, args.dim), args)
        ours, flat = measured.values()
        ratio = median_ratio(ours["seconds"], flat["seconds"])
        cpu_ratio = median_ratio(ours["cpu_seconds"], flat["cpu_seconds"])
        results[num_references] = {**measured, "ratio": ratio, "cpu_ratio": cpu_ratio}
        for name, result in measured.items():
            baseline = name == "faiss flat"
            rows.append(
                [
                    f"{num_references:,}",
                    name,
                    f"{min(result['seconds']):.2f}",
                    f"{min(result['cpu_seconds']):.2f}",
                    f"{result['peak_bytes'] / 2**20:.0f}",
                    "1.00 / 1.00" if baseline else f"{ratio:.2f} / {cpu_ratio:.2f}",
                    "" if baseline else verdict(ratio, 1.5, True),
                ]
            )
    print(
        f"DISC21 search: {args.num_queries} queries, d = {args.dim}, max_results {args.max_results}, "
        f"{args.rounds} rounds, {describe_machine('cpu')}"
    )
    header = ["references", "method", "wall s (best)", "CPU s (best)", "peak extra MiB", "/ faiss: wall, CPU", "≤ 1.5×"]
    print(format_table(header, rows))
    return results


def get_args_parser(add_help=True):
    parser = benchmark_parser("DISC21 global top max-results search against faiss flat", add_help=add_help)
    parser.add_argument(
        "--num-references", nargs="+", default=[10000, 100000], type=flags.int_in(1), help="reference counts"
    )
    parser.add_argument("--num-queries", default=1000, type=flags.int_in(1), help="number of queries")
    parser.add_argument("--dim", default=256, type=flags.int_in(1), help="descriptor dimension")
    parser.add_argument("--max-results", default=10000, type=flags.int_in(1), help="pairs kept over all queries")
    parser.add_argument("--chunk-size", default=4096, type=flags.int_in(1), help="top_pairs's chunk size")
    parser.add_argument("--search", default="faiss", choices=["faiss", "torch"], help="top_pairs's search")
    parser.add_argument("--rounds", default=3, type=flags.int_in(1), help="interleaved timing rounds")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
