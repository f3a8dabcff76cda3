"""Benchmark 4: retrieval descriptor extraction and exact nearest-neighbour search.

    python -m benchmarks.retrieval                          # CPU: ResNet-18 at s=224, search with d=256
    python -m benchmarks.retrieval --paper --device cuda    # ResNet-50 at s=500, search with d=2048

Extraction: UKBench-like images (all 640x480) through `multigrain.inference.extraction.extract_descriptors`,
images of identical size batched by `-b` against one image at a time (`-b 1`); target ≥ 2× images/s,
with the same descriptors (the largest difference is printed). Search: `multigrain.search.nn_search.knn`,
chunked exact search of 10k queries against a 100k database, its time and its peak memory next to
the size of the full score matrix that an unchunked search would hold. Positions: what average
precision needs, the positions of each query's positives in its full ranking, from
`multigrain.search.nn_search.ranking_positions` against a full ranking by `knn` (k = database size), for
229 queries (as Copydays) with one positive each: time, peak memory and equality of the positions.
"""

import tempfile
import threading
import time

import torch
from torch.nn import functional as F

import flags
import presets
from benchmarks.timing import (
    apply_settings,
    benchmark_parser,
    describe_machine,
    format_table,
    median_ratio,
    synchronize,
    time_side_by_side,
    verdict,
)
from multigrain.evaluation.retrieval_datasets import read_ukbench
from multigrain.inference.extraction import extract_descriptors
from multigrain.model import build_model
from multigrain.search.nn_search import knn, ranking_positions
from tools.synthetic_data import make_ukbench

CPU_SETTINGS = {"model": "resnet18", "input_size": 224, "dim": 256}
PAPER_SETTINGS = {"model": "resnet50", "input_size": 500, "dim": 2048}


def benchmark_extraction(args, device):
    model = build_model(args.model, num_classes=1000).to(device).eval()
    results = {}
    with tempfile.TemporaryDirectory() as root:
        make_ukbench(root, num_groups=args.num_groups, image_size=(640, 480))
        images = read_ukbench(root).database.with_transform(presets.RetrievalPresetEval(max_size=args.input_size))

        def extractor(batch_size):
            def run():
                results[batch_size] = extract_descriptors(
                    model, images, device, batch_size=batch_size, num_workers=args.workers
                )

            return run

        candidates = {"one at a time": extractor(1), "batched": extractor(args.batch_size)}
        times = time_side_by_side(candidates, args.rounds, device=device)
    ratio = median_ratio(times["one at a time"], times["batched"])
    difference = (results[1] - results[args.batch_size]).abs().max().item()
    num_images = 4 * args.num_groups
    rows = [
        ["one at a time (-b 1)", f"{num_images / min(times['one at a time']):.1f}", "1.00", "", ""],
        [
            f"batched by size (-b {args.batch_size})",
            f"{num_images / min(times['batched']):.1f}",
            f"{ratio:.2f}",
            "≥ 2",
            verdict(ratio, 2.0, False),
        ],
    ]
    print(
        f"Extraction: {num_images} images of 640x480, {args.model} at largest side {args.input_size}, "
        f"-j {args.workers}, {args.rounds} rounds, {describe_machine(device)}"
    )
    print(format_table(["extraction", "images/s (best round)", "ratio (median)", "target", "status"], rows))
    print(f"largest difference between the descriptors of the two: {difference:.2e}")
    return {"ratio": ratio, "max_difference": difference}


class PeakMemory:
    """Peak memory above the level at entry: the CUDA allocator's on a GPU, the resident set size on the
    CPU (sampled every millisecond by a thread)."""

    def __init__(self, device):
        self.device = device
        self.peak_bytes = 0

    @staticmethod
    def _resident_bytes():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, self._resident_bytes())
            time.sleep(0.001)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = self._peak = self._resident_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._peak, self._resident_bytes()) - self._start


def benchmark_search(args, device):
    generator = torch.Generator().manual_seed(0)
    database = F.normalize(torch.randn(args.num_database, args.dim, generator=generator), dim=1)
    queries = F.normalize(torch.randn(args.num_queries, args.dim, generator=generator), dim=1).to(device)
    rows, results = [], {}
    for chunk_size in args.chunk_sizes:
        synchronize(device)
        start = time.perf_counter()
        with PeakMemory(device) as memory:
            knn(queries, database, args.k, chunk_size=chunk_size, use_faiss=False)
            synchronize(device)
        seconds = time.perf_counter() - start
        results[chunk_size] = {"seconds": seconds, "peak_bytes": memory.peak_bytes}
        rows.append(
            [str(chunk_size), f"{seconds:.1f}", f"{args.num_queries / seconds:.0f}", f"{memory.peak_bytes / 2**20:.0f}"]
        )
    full_matrix = args.num_queries * args.num_database * 4 / 2**20
    print(
        f"Search: {args.num_queries} queries, {args.num_database} database vectors, d={args.dim}, k={args.k}, "
        f"exact (torch), {describe_machine(device)}"
    )
    print(format_table(["chunk size", "seconds", "queries/s", "peak extra memory (MiB)"], rows))
    print(
        f"an unchunked search would hold the {args.num_queries}x{args.num_database} float32 scores: "
        f"{full_matrix:.0f} MiB"
    )
    return results


def benchmark_positions(args, device):
    generator = torch.Generator().manual_seed(1)
    database = F.normalize(torch.randn(args.num_database, args.dim, generator=generator), dim=1)
    queries = F.normalize(torch.randn(args.num_ap_queries, args.dim, generator=generator), dim=1).to(device)
    positives = torch.randint(args.num_database, (args.num_ap_queries, 1), generator=generator)
    chunk_size = args.chunk_sizes[0]
    outputs, results = {}, {}

    def full_ranking():
        _, ranking = knn(queries, database, args.num_database, chunk_size=chunk_size, use_faiss=False)
        outputs["full ranking"] = (ranking.cpu() == positives).int().argmax(dim=1).numpy()

    def positions():
        found = ranking_positions(queries, database, positives.numpy(), chunk_size=chunk_size)
        outputs["positions"] = [int(p[0]) for p in found]

    for name, run in (("full ranking", full_ranking), ("positions", positions)):
        synchronize(device)
        start = time.perf_counter()
        with PeakMemory(device) as memory:
            run()
            synchronize(device)
        results[name] = {"seconds": time.perf_counter() - start, "peak_bytes": memory.peak_bytes}
    same = outputs["full ranking"].tolist() == outputs["positions"]
    memory_ratio = results["full ranking"]["peak_bytes"] / max(results["positions"]["peak_bytes"], 1)
    rows = [
        [name, f"{result['seconds']:.1f}", f"{result['peak_bytes'] / 2**20:.0f}"] for name, result in results.items()
    ]
    print(
        f"Positions of the positives: {args.num_ap_queries} queries, {args.num_database} database vectors, "
        f"d={args.dim}, chunk size {chunk_size}, {describe_machine(device)}"
    )
    print(format_table(["method", "seconds", "peak extra memory (MiB)"], rows))
    print(f"same positions: {'yes' if same else 'NO'}; full ranking / positions peak memory: {memory_ratio:.1f}x")
    results["same"] = same
    return results


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    apply_settings(args, CPU_SETTINGS, PAPER_SETTINGS)
    device = torch.device(args.device)
    results = {}
    if args.part in ("extraction", "all"):
        results["extraction"] = benchmark_extraction(args, device)
    if args.part in ("search", "all"):
        results["search"] = benchmark_search(args, device)
    if args.part in ("positions", "all"):
        results["positions"] = benchmark_positions(args, device)
    return results


def get_args_parser(add_help=True):
    parser = benchmark_parser(
        "Retrieval extraction (batched by size against one at a time) and chunked exact search",
        add_help,
        CPU_SETTINGS,
        PAPER_SETTINGS,
    )
    parser.add_argument(
        "--part", default="all", choices=["extraction", "search", "positions", "all"], help="which benchmark to run"
    )
    parser.add_argument("--model", default=None, help="torchvision model of the extraction")
    parser.add_argument(
        "--input-size", default=None, type=flags.int_in(1), help="s: images are resized to largest side s"
    )
    parser.add_argument("--num-groups", default=12, type=flags.int_in(1), help="UKBench groups of 4 images to extract")
    parser.add_argument(
        "-b",
        "--batch-size",
        default=16,
        type=flags.int_in(2),
        help="images of identical size per batch (at least 2: compared with one at a time)",
    )
    parser.add_argument("-j", "--workers", default=2, type=flags.int_in(0), help="DataLoader workers of the extraction")
    parser.add_argument("--rounds", default=3, type=flags.int_in(1), help="timed extractions of each kind")
    parser.add_argument("--num-queries", default=10000, type=flags.int_in(1), help="queries of the search")
    parser.add_argument("--num-database", default=100000, type=flags.int_in(1), help="database vectors of the search")
    parser.add_argument("--dim", default=None, type=flags.int_in(1), help="descriptor dimension of the search")
    parser.add_argument("-k", default=100, type=flags.int_in(1), help="neighbours per query")
    parser.add_argument(
        "--num-ap-queries", default=229, type=flags.int_in(1), help="queries of the positions benchmark"
    )
    parser.add_argument(
        "--chunk-sizes",
        default=[4096],
        nargs="+",
        type=flags.int_in(1),
        help="chunk sizes of the search to time (evaluate.py's --chunk-size)",
    )
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
