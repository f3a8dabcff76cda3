"""Evaluation of a MultiGrain checkpoint: ImageNet classification and the retrieval benchmarks.

    python evaluate.py --checkpoint checkpoint.pth --input-size 500 --dataset holidays ukbench copydays \
        --holidays-path data/holidays --holidays-rotations data/holidays/rotations.txt \
        --ukbench-path data/ukbench --copydays-path data/copydays --distractors-path data/yfcc10k

Under torchrun every process extracts a share of the images. See README.md for the datasets.
"""

import json
import math
import os

import numpy as np
import torch
import torch.utils.data
from torchvision.transforms.functional import InterpolationMode

import engine
import flags
import presets
import utils
from multigrain.evaluation import disc21, retrieval_datasets
from multigrain.evaluation.copy_detection_metrics import copy_detection_metrics
from multigrain.evaluation.retrieval_metrics import KnownPositions
from multigrain.images.datasets import ImageFolder
from multigrain.images.image_io import load_rgb
from multigrain.inference.extraction import check_finite, collate_image_list
from multigrain.inference.retrieval_descriptors import retrieval_descriptors
from multigrain.search.descriptor_files import features_files, read_features, save_features
from multigrain.search.nn_search import knn, knn_blocks, ranking_positions, top_pairs
from multigrain.storage.atomic_write import open_atomic
from multigrain.storage.model_files import model_settings, open_model
from multigrain.training import distributed

RETRIEVAL_DATASETS = ("holidays", "ukbench", "copydays", *retrieval_datasets.REVISITOP_BENCHMARKS)
DATASETS = ("imagenet-val", *RETRIEVAL_DATASETS, "disc21")
DEFAULT_NUM_DISTRACTORS = 10000  # CD10k
DISC21_MAX_RESULTS = 500000
SCORE_NORM_FACTOR = 2.0
SCORE_NORM_NEIGHBORS = 10


def dataset_path_flag(name):
    return "imagenet_path" if name == "imagenet-val" else f"{name}_path"


@utils.usage_check
def check_args(args):
    """Refuses inconsistent flags, folders and checkpoints before any process group starts; returns the
    ModelFile of --checkpoint, read once (None with --load-features). Without --input-size, the checkpoint's s* is
    used (flags.checkpoint_input_size), and said."""
    for name in args.dataset:
        path = getattr(args, dataset_path_flag(name))
        if not path:
            raise ValueError(f"--dataset {name} needs --{dataset_path_flag(name).replace('_', '-')}")
        if not os.path.isdir(path):
            raise ValueError(f"--{dataset_path_flag(name).replace('_', '-')} {path} is not a folder")
    if args.descriptor_dim is not None and args.load_features:
        raise ValueError("--descriptor-dim applies to the model: descriptors from --load-features are used as saved")
    if args.disc21_knn and args.max_results:
        raise ValueError("--disc21-knn keeps K references per query: drop --max-results (the global selection's)")
    for flag in ("score_norm_factor", "score_norm_neighbors"):
        if getattr(args, flag) is not None and not args.score_norm:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)} needs --score-norm (its normalisation)")
    disc21_search_flags = [flag for flag in ("max_results", "disc21_knn", "score_norm") if getattr(args, flag)]
    for flag in disc21_search_flags:
        if "disc21" not in args.dataset:
            raise ValueError(f"--{flag.replace('_', '-')} applies to the DISC21 search: it needs --dataset disc21")
    if args.disc21_predictions:
        if args.dataset != ["disc21"]:
            raise ValueError("--disc21-predictions scores a predictions CSV on its own: pass --dataset disc21 only")
        if args.checkpoint or args.load_features or args.save_features:
            raise ValueError(
                "--disc21-predictions needs no descriptors: drop --checkpoint, --load-features, --save-features"
            )
        if disc21_search_flags or args.descriptor_dim is not None:
            raise ValueError(
                "--disc21-predictions scores the CSV as written: drop --max-results, --disc21-knn, --score-norm, "
                "--descriptor-dim"
            )
        if not os.path.isfile(args.disc21_predictions):
            raise ValueError(f"--disc21-predictions {args.disc21_predictions} is not a file")
        return None
    if args.load_features:
        if not os.path.isdir(args.load_features):
            raise ValueError(f"--load-features {args.load_features} is not a folder")
        if "imagenet-val" in args.dataset:
            raise ValueError("--dataset imagenet-val needs the model: it cannot be evaluated from --load-features")
        if args.checkpoint or args.save_features:
            raise ValueError("--load-features evaluates saved descriptors: drop --checkpoint and --save-features")
    elif not args.checkpoint:
        raise ValueError("pass the model with --checkpoint CHECKPOINT (or saved descriptors with --load-features)")
    elif not os.path.isfile(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint} is not a file")
    if args.holidays_rotations and not os.path.isfile(args.holidays_rotations):
        raise ValueError(f"--holidays-rotations {args.holidays_rotations} is not a file")
    if args.distractors_path and not os.path.isdir(args.distractors_path):
        raise ValueError(f"--distractors-path {args.distractors_path} is not a folder")
    if args.distractors_list and not args.distractors_path:
        raise ValueError("--distractors-list needs --distractors-path (the folder its names are relative to)")
    if args.distractors_list and not os.path.isfile(args.distractors_list):
        raise ValueError(f"--distractors-list {args.distractors_list} is not a file")
    if args.num_distractors is not None and not args.distractors_path:
        raise ValueError(f"--num-distractors {args.num_distractors} needs --distractors-path (the distractor images)")
    if args.output_dir:
        utils.check_writable_folder(args.output_dir, "--output-dir")
    if args.save_features:
        utils.check_writable_folder(args.save_features, "--save-features")
    model_file = None
    if not args.load_features:
        model_file = open_model(args.checkpoint, model_name=args.model)
        utils.print_at_launch(flags.checkpoint_input_size(args, model_file))
        if args.multiscale and args.input_size < 2:
            raise ValueError(f"--multiscale needs --input-size >= 2 for its scale s/2, got {args.input_size}")
        if "imagenet-val" in args.dataset:
            classes = utils.check_image_folder(os.path.join(args.imagenet_path, "val"), "--imagenet-path")
            model_file.check_num_classes(len(classes), f"--imagenet-path {args.imagenet_path}")
    utils.check_device(args.device)
    return model_file


def read_benchmark(name, args):
    if name == "holidays":
        return retrieval_datasets.read_holidays(args.holidays_path, args.holidays_rotations)
    if name == "ukbench":
        return retrieval_datasets.read_ukbench(args.ukbench_path)
    if name == "copydays":
        return retrieval_datasets.read_copydays(
            args.copydays_path,
            args.distractors_path,
            args.distractors_list,
            DEFAULT_NUM_DISTRACTORS if args.num_distractors is None else args.num_distractors,
        )
    return retrieval_datasets.read_revisitop(getattr(args, f"{name}_path"), name)


def load_features(folder, stem, names):
    """Saved descriptors, checked to list the same images in the same order as the benchmark."""
    array_path, _ = features_files(folder, stem)
    try:
        descriptors, saved_names = read_features(array_path)
    except (ValueError, OSError) as e:
        raise utils.UsageError(f"--load-features: {e}") from e
    if saved_names != list(names):
        differences = [i for i, (saved, name) in enumerate(zip(saved_names, names)) if saved != name]
        mismatch = differences[0] if differences else min(len(saved_names), len(names))
        raise utils.UsageError(
            f"{array_path.with_suffix('.txt')} does not list the benchmark's {len(names)} images in order "
            f"({len(saved_names)} names; first difference at line {mismatch + 1})"
        )
    check_finite(descriptors, names, f"descriptors in {array_path}", zero_too=True)
    return descriptors


def benchmark_descriptors(parts, model, device, args):
    """{stem: descriptors} of the image lists `parts` ({stem: ImageList}), extracted (and saved with
    --save-features) or read from --load-features."""
    distributed.print_main(", ".join(f"{stem}: {len(images)} images" for stem, images in parts.items()))
    features = {}
    for stem, images in parts.items():
        if args.load_features:
            features[stem] = load_features(args.load_features, stem, images.names)
        else:
            features[stem] = retrieval_descriptors(model, images, device, **flags.retrieval_extraction(args))
            if args.save_features and distributed.is_main_process():
                save_features(args.save_features, stem, features[stem], images.names)
    return features


def evaluate_retrieval(name, model, device, args):
    """The benchmark's scores on the main process (None elsewhere)."""
    benchmark = read_benchmark(name, args)
    parts = {name: benchmark.database}
    if benchmark.queries is not None:
        parts[f"{name}_queries"] = benchmark.queries
    features = benchmark_descriptors(parts, model, device, args)
    if not distributed.is_main_process():
        return None

    database = features[name]
    if benchmark.queries is not None:
        queries = features[f"{name}_queries"]
    else:
        queries = database[benchmark.query_indices]
    if benchmark.items is not None:
        positions = ranking_positions(
            torch.from_numpy(queries).to(device), torch.from_numpy(database), benchmark.items, args.chunk_size
        )
        rankings = [KnownPositions(zip(items.tolist(), p.tolist())) for items, p in zip(benchmark.items, positions)]
        return benchmark.score(rankings)
    search_device = torch.device("cpu") if args.search == "faiss" else device
    _, rankings = knn(
        torch.from_numpy(queries).to(search_device),
        torch.from_numpy(database),
        benchmark.num_neighbors,
        chunk_size=args.chunk_size,
        use_faiss=flags.SEARCH_BACKENDS[args.search],
    )
    return benchmark.score(rankings.cpu().numpy())


def read_disc21(args, with_training):
    ground_truth = args.disc21_ground_truth or os.path.join(args.disc21_path, "ground_truth.csv")
    try:
        return disc21.read_layout(
            args.disc21_path,
            ground_truth,
            args.disc21_query_list,
            args.disc21_reference_list,
            args.disc21_training_list,
            with_training,
        )
    except (ValueError, OSError) as error:
        raise utils.UsageError(str(error)) from error


def check_unit_vectors(descriptors, stem):
    norms = np.linalg.norm(descriptors, axis=1)
    if len(norms) and np.abs(norms - 1).max() > 1e-3:
        raise utils.UsageError(
            f"the {stem} descriptors are not unit vectors (norms {norms.min():.4g} to {norms.max():.4g})"
        )


def search_disc21(features, args, device):
    """The predictions (query indices, reference indices, scores) of the descriptor track.

    For unit descriptors the challenge's score −‖q − r‖² is 2·q·r − 2; with score normalisation it is
    2·(q·r − factor·q·t_n(q)) − 2, the same map of the normalised inner product, so the order of the pairs
    and the meaning of a threshold are those of the challenge's baseline.
    """
    for stem, descriptors in features.items():
        check_unit_vectors(descriptors, stem)
    search_device = torch.device("cpu") if args.search == "faiss" else device
    use_faiss = flags.SEARCH_BACKENDS[args.search]
    queries = torch.from_numpy(features["disc21_queries"]).to(search_device)
    references = torch.from_numpy(features["disc21_references"])
    offsets = np.zeros(len(queries))
    if args.score_norm:
        training = features["disc21_training"]
        neighbors = SCORE_NORM_NEIGHBORS if args.score_norm_neighbors is None else args.score_norm_neighbors
        factor = SCORE_NORM_FACTOR if args.score_norm_factor is None else args.score_norm_factor
        if neighbors > len(training):
            raise utils.UsageError(f"--score-norm-neighbors {neighbors} but there are {len(training)} training images")
        similarities, _ = knn(queries, torch.from_numpy(training), neighbors, args.chunk_size, use_faiss)
        offsets = -factor * similarities[:, -1].cpu().numpy().astype(np.float64)
    if args.disc21_knn:
        if args.disc21_knn > len(references):
            raise utils.UsageError(f"--disc21-knn {args.disc21_knn} but there are {len(references)} references")
        scores, rows = knn_blocks(queries, references, args.disc21_knn, args.chunk_size, use_faiss)
        scores = scores.cpu().numpy().astype(np.float64) + offsets[:, None]
        query_indices = np.repeat(np.arange(len(queries)), args.disc21_knn)
        rows, scores = rows.cpu().numpy().reshape(-1), scores.reshape(-1)
    else:
        max_results = args.max_results or DISC21_MAX_RESULTS
        query_indices, rows, scores = top_pairs(queries, references, max_results, offsets, args.chunk_size, use_faiss)
    return query_indices, rows, 2 * scores - 2


def disc21_metrics(queries, references, scores, ground_truth):
    """μAP, recall@P90 and recall@1 / @10 in %, and the threshold of recall@P90 when precision 90% is reached."""
    metrics = copy_detection_metrics(queries, references, scores, ground_truth)
    threshold = metrics.pop("threshold@P90")
    results = {name: 100.0 * value for name, value in metrics.items()}
    if threshold is not None:
        results["threshold@P90"] = threshold
    return results


def evaluate_disc21(model, device, args):
    """The descriptor track's metrics on the main process (None elsewhere); the predictions are written to
    --output-dir as disc21_predictions.csv. With --disc21-predictions, that CSV is scored instead."""
    if args.disc21_predictions:
        benchmark = read_disc21(args, with_training=False)
        try:
            predictions = disc21.read_predictions(
                args.disc21_predictions, benchmark.queries.names, benchmark.references.names
            )
        except (ValueError, OSError) as error:
            raise utils.UsageError(str(error)) from error
        return disc21_metrics(*predictions, benchmark.ground_truth)
    benchmark = read_disc21(args, with_training=args.score_norm)
    parts = {"disc21_queries": benchmark.queries, "disc21_references": benchmark.references}
    if args.score_norm:
        parts["disc21_training"] = benchmark.training
    features = benchmark_descriptors(parts, model, device, args)
    if not distributed.is_main_process():
        return None
    query_indices, rows, scores = search_disc21(features, args, device)
    queries = [benchmark.queries.names[i] for i in query_indices]
    references = [benchmark.references.names[i] for i in rows]
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        disc21.write_predictions(os.path.join(args.output_dir, "disc21_predictions.csv"), queries, references, scores)
    return disc21_metrics(queries, references, scores, benchmark.ground_truth)


def evaluate_imagenet(model, device, args):
    """Top-1 / top-5 accuracy (%) on the val/ ImageFolder, each image counted once across processes."""
    interpolation = InterpolationMode(args.interpolation)
    if args.input_crop == "center":
        transform = presets.ClassificationPresetEval(crop_size=args.input_size, interpolation=interpolation)
    else:
        transform = presets.RetrievalPresetEval(max_size=args.input_size, interpolation=interpolation)
    dataset = ImageFolder(os.path.join(args.imagenet_path, "val"), transform, loader=load_rgb)
    shard = torch.utils.data.Subset(dataset, range(distributed.get_rank(), len(dataset), distributed.get_world_size()))
    loader = torch.utils.data.DataLoader(
        shard, batch_size=args.batch_size, num_workers=args.workers, collate_fn=collate_image_list
    )
    metrics = engine.evaluate(model, loader, device, amp_dtype=flags.amp_dtype(args), print_freq=args.print_freq)
    return {"acc1": metrics["acc1"], "acc5": metrics["acc5"]}


def format_table(results):
    rows = [(name, metric, f"{value:.2f}") for name, metrics in results.items() for metric, value in metrics.items()]
    header = ("dataset", "metric", "value")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}" for row in [header, *rows]]
    return "\n".join(lines)


def main(args):
    model_file = check_args(args)
    utils.init_distributed_mode(args)
    distributed.print_main(args)
    device = torch.device(args.device)

    model, description = None, f"descriptors from {args.load_features}"
    if args.disc21_predictions:
        description = f"predictions from {args.disc21_predictions}"
    if model_file is not None:
        model = model_file.model(device, pooling_exponent=args.pooling_exponent)
        del model_file
        if args.descriptor_dim is not None:
            if args.descriptor_dim > model.embedding_dim:
                raise utils.UsageError(
                    f"--descriptor-dim {args.descriptor_dim} exceeds the model's {model.embedding_dim}-d embedding"
                )
            model.descriptor_dim = args.descriptor_dim
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        if args.compile:
            model.features.compile()  # in place, so every output the extraction asks for runs the compiled trunk
        scales = "multiscale" if args.multiscale else "single scale"
        dims = f", descriptor: first {args.descriptor_dim} dimensions" if args.descriptor_dim else ""
        description = f"{args.checkpoint}: {model_settings(model)}, input size {args.input_size}, {scales}{dims}"
    distributed.print_main(description)

    results = {}
    for name in args.dataset:
        if name == "imagenet-val":
            results[name] = evaluate_imagenet(model, device, args)
        elif name == "disc21":
            results[name] = evaluate_disc21(model, device, args)
        else:
            results[name] = evaluate_retrieval(name, model, device, args)
    if not distributed.is_main_process():
        return None

    print(f"\n{description}\n{format_table(results)}", flush=True)
    non_finite = [
        f"{name} {metric}" for name, metrics in results.items() for metric, v in metrics.items() if not math.isfinite(v)
    ]
    if non_finite:
        raise FloatingPointError(f"non-finite results ({', '.join(non_finite)}): metrics.json is not written")
    if args.output_dir:
        record = {"description": description, "results": results, "args": vars(args)}
        with open_atomic(os.path.join(args.output_dir, "metrics.json"), "metrics") as f:
            json.dump(record, f, indent=2, allow_nan=False)
    return results


def get_args_parser(add_help=True):
    parser = flags.script_parser("MultiGrain evaluation: ImageNet top-1/top-5 and retrieval benchmarks", add_help)
    parser.add_argument("--dataset", nargs="+", required=True, choices=DATASETS, help="benchmarks to evaluate")
    flags.add_checkpoint(parser, "the model to evaluate", required=False)
    flags.add_input_size(
        parser, help="s: retrieval images are resized to largest side s; classification see --input-crop"
    )
    parser.add_argument(
        "--input-crop",
        default="center",
        choices=["center", "none"],
        help="classification input: center: shorter side to 256/224·s and a center crop of s; "
        "none: largest side s, no crop",
    )
    flags.add_pooling_exponent(parser)
    flags.add_multiscale(parser)
    flags.add_interpolation(parser)
    parser.add_argument("--imagenet-path", default=None, help="folder with the val/ ImageFolder (imagenet-val)")
    parser.add_argument("--holidays-path", default=None, help="INRIA Holidays folder with jpg/")
    parser.add_argument(
        "--holidays-rotations",
        default=None,
        help="rotation list of Holidays: lines '<file name> <degrees>', applied with PIL rotate(degrees, expand=True)",
    )
    parser.add_argument("--ukbench-path", default=None, help="UKBench folder with full/ (or the images)")
    parser.add_argument("--copydays-path", default=None, help="Copydays folder with original/ and strong/")
    parser.add_argument(
        "--distractors-path",
        default=None,
        help="Copydays distractors: folder of images (or the root of --distractors-list)",
    )
    parser.add_argument(
        "--distractors-list",
        default=None,
        help="distractor images, one path relative to --distractors-path a line (default: all images under it, sorted)",
    )
    parser.add_argument(
        "--num-distractors",
        default=None,
        type=flags.int_in(0),
        help=f"take the first N distractors (default: {DEFAULT_NUM_DISTRACTORS}, CD10k); fewer available is an error",
    )
    parser.add_argument("--roxford5k-path", default=None, help="ROxford5k folder with jpg/ and gnd_roxford5k.pkl")
    parser.add_argument("--rparis6k-path", default=None, help="RParis6k folder with jpg/ and gnd_rparis6k.pkl")
    parser.add_argument(
        "--disc21-path",
        default=None,
        help="DISC21 layout: image folders queries/ (Q00000.jpg...), references/ (R000000...), training/ (T000000...)",
    )
    parser.add_argument(
        "--disc21-ground-truth",
        default=None,
        help="DISC21 ground-truth CSV query_id,reference_id (default: DISC21_PATH/ground_truth.csv)",
    )
    parser.add_argument("--disc21-query-list", default=None, help="DISC21 query ids, one a line (default: all)")
    parser.add_argument("--disc21-reference-list", default=None, help="DISC21 reference ids (default: all)")
    parser.add_argument("--disc21-training-list", default=None, help="DISC21 training ids (default: all)")
    parser.add_argument(
        "--max-results",
        default=None,
        type=flags.int_in(1),
        help=f"DISC21: the predictions are the best pairs over all queries together, this many "
        f"(default: {DISC21_MAX_RESULTS}, the challenge's)",
    )
    parser.add_argument(
        "--disc21-knn",
        default=None,
        type=flags.int_in(1),
        help="DISC21: predict each query's K nearest references instead of the global --max-results",
    )
    parser.add_argument(
        "--score-norm",
        action="store_true",
        help="DISC21: subtract factor x the query's similarity to its n-th nearest training image from its scores",
    )
    parser.add_argument(
        "--score-norm-factor",
        default=None,
        type=flags.float_in(0),
        help=f"DISC21 score normalisation: factor (default: {SCORE_NORM_FACTOR}, the baseline's)",
    )
    parser.add_argument(
        "--score-norm-neighbors",
        default=None,
        type=flags.int_in(1),
        help=f"DISC21 score normalisation: n (default: {SCORE_NORM_NEIGHBORS}, the baseline's)",
    )
    parser.add_argument(
        "--disc21-predictions",
        default=None,
        help="score this predictions CSV (query_id,reference_id,score) instead of a model's descriptors",
    )
    parser.add_argument(
        "--descriptor-dim",
        default=None,
        type=flags.int_in(1),
        help="retrieval descriptor: l2n of the first D components of the (whitened) embedding; "
        "the classifier still reads all of it",
    )
    parser.add_argument(
        "--save-features",
        default=None,
        help="write each retrieval benchmark's descriptors (NAME.npy, float32) and image names (NAME.txt) here; "
        "NAME_queries.* for separate queries",
    )
    parser.add_argument(
        "--load-features", default=None, help="evaluate descriptors written by --save-features instead of a model"
    )
    flags.add_search(parser)
    flags.add_chunk_size(
        parser, help="queries and database rows scored at a time by the torch search and the AP benchmarks' ranking"
    )
    flags.add_device(parser)
    flags.add_batch_size(parser)
    flags.add_workers(parser)
    flags.add_amp(parser)
    flags.add_channels_last(parser)
    flags.add_compile(
        parser, help="torch.compile the model's trunk (a second image size compiles once more, then sizes are dynamic)"
    )
    flags.add_print_freq(parser)
    flags.add_output_dir(parser, "where metrics.json is written")
    flags.add_dist_url(parser)
    return parser


if __name__ == "__main__":
    utils.run_script(main, get_args_parser())
