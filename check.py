"""Which of these images are already in my collection: their matches among the images of an extract.py collection.

    python check.py --collection descriptors/ --images new_photos/ --threshold 0.8 --output-dir checked/
    python check.py --collection descriptors/ --images new.txt --root /data/photos --threshold 0.8 \\
        --index descriptors.index.npz --output-dir checked/

Only the images of --images are described, as the collection's were (its checkpoint, input size, multiscale,
interpolation, p and amp, read from its manifest.json), into OUTPUT_DIR/queries.npy and queries.txt. Each is
searched among the collection's images, exactly or through a faiss index that search.py --index saved; its -k
nearest with a score >= --threshold go to matches.csv (image, match, score, rank), and report.html shows them: the
images with a match first, the most similar first.
"""

import csv
import os
from pathlib import Path

import torch
from torchvision.transforms.functional import InterpolationMode

import flags
import utils
from multigrain.images.datasets import ImageList
from multigrain.images.image_lists import images_root, read_image_list
from multigrain.inference.retrieval_descriptors import retrieval_descriptors
from multigrain.search import report, saved_index
from multigrain.search.collection_images import CollectionImages, read_manifest
from multigrain.search.descriptor_files import MANIFEST, DescriptorCollection, save_features
from multigrain.search.searcher import Searcher
from multigrain.storage.input_files import file_sha256
from multigrain.storage.model_files import model_settings, open_model


@utils.usage_check
def check_args(args):
    """Refuses bad flags and inputs before any image is read; returns (the collection, its manifest, the images'
    paths and names, the checkpoint's path and ModelFile)."""
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise ValueError(f"--output-dir {args.output_dir} is not a folder")
    collection = DescriptorCollection(args.collection, "--collection")
    manifest = read_manifest(args.collection) if os.path.isdir(args.collection) else None
    if manifest is None or "extraction" not in manifest:
        raise ValueError(
            f"--collection {args.collection} is not a folder of extract.py (with its {MANIFEST}): check.py describes "
            "the new images as its manifest says the collection's were"
        )
    paths, names = read_image_list(args.images, args.root)
    checkpoint = args.checkpoint or manifest["model"]["checkpoint"]
    if not os.path.isfile(checkpoint):
        if args.checkpoint:
            raise ValueError(f"--checkpoint {checkpoint} is not a file")
        raise ValueError(
            f"{checkpoint}, the checkpoint the collection in {args.collection} was described with, is not a file: "
            "pass where it is now with --checkpoint"
        )
    if file_sha256(checkpoint) != manifest["model"]["sha256"]:
        raise ValueError(
            f"{checkpoint} is not the checkpoint the collection in {args.collection} was described with (its SHA-256 "
            f"differs from the one {MANIFEST} records): pass that one with --checkpoint"
        )
    model_file = open_model(checkpoint, model_name=args.model)
    if args.k > len(collection):
        raise ValueError(f"-k {args.k} is more than the {len(collection)} images of --collection {args.collection}")
    if args.nprobe is not None and not args.index:
        raise ValueError("--nprobe is for an --index of an IVF faiss index")
    if args.index:
        if args.search == "torch":
            raise ValueError("--index searches with faiss: drop --search torch")
        if not os.path.isfile(args.index):
            raise ValueError(f"--index {args.index} does not exist: build it with search.py --index (--faiss-index)")
        saved_index.check_index(args.index, collection, "--collection")
    return collection, manifest, paths, names, checkpoint, model_file


def describe(model_file, manifest, paths, names, args):
    """The descriptors of the images, made as those of the collection were."""
    device = torch.device(args.device)
    model = model_file.model(device, pooling_exponent=manifest["model"]["pooling_exponent"])
    extraction = manifest["extraction"]
    print(
        f"{model_file.path}: {model_settings(model)}, input size {extraction['input_size']}, "
        f"{'multiscale' if extraction['multiscale'] else 'single scale'} (the collection's); {len(names)} images"
    )
    return retrieval_descriptors(
        model,
        ImageList(paths, names),
        device,
        input_size=extraction["input_size"],
        multiscale=extraction["multiscale"],
        interpolation=InterpolationMode(extraction["interpolation"]),
        amp_dtype=getattr(torch, extraction["amp"]) if extraction["amp"] else None,
        batch_size=args.batch_size,
        num_workers=args.workers,
        print_freq=args.print_freq,
    )


def main(args):
    collection, manifest, paths, names, checkpoint, model_file = check_args(args)
    descriptors = describe(model_file, manifest, paths, names, args)
    del model_file
    os.makedirs(args.output_dir, exist_ok=True)
    save_features(args.output_dir, "queries", descriptors, names)

    index = None
    if args.index:
        print(f"searching with the saved index {args.index}")
        index = saved_index.load_index(args.index, args.nprobe)
    use_faiss = flags.SEARCH_BACKENDS[args.search]
    searcher = Searcher(collection, device=args.device, use_faiss=use_faiss, chunk_size=args.chunk_size, index=index)
    scores, indices = searcher.search(descriptors, args.k)
    results = []  # (query, [(row, score, rank)])
    for query in range(len(names)):
        ranked = zip(indices[query].tolist(), scores[query].tolist())
        matches = [(row, score, rank) for rank, (row, score) in enumerate(ranked, 1) if row >= 0]
        results.append((query, [match for match in matches if match[1] >= args.threshold]))
    path = Path(args.output_dir) / "matches.csv"
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "match", "score", "rank"])
        for query, matches in results:
            writer.writerows(
                [names[query], collection.names[row], f"{score:.6f}", rank] for row, score, rank in matches
            )
    matched = sum(bool(matches) for _, matches in results)
    summary = [
        f"{matched} of the {len(names)} images of {args.images} have a match with score >= {args.threshold} among "
        f"the {len(collection)} images of the collection {args.collection}: {path}"
    ]
    print(summary[0])
    if args.report_limit:
        shown = sorted(results, key=lambda result: (not result[1], -max((m[1] for m in result[1]), default=0)))
        if len(shown) > args.report_limit:
            summary.append(f"The report shows {args.report_limit} of the {len(shown)} images: the best matches first")
        images = CollectionImages(names, images_root(args.images, args.root))
        database_images = CollectionImages.of_collection(collection, "--collection")
        written = report.write_neighbours_report(
            args.output_dir,
            images,
            database_images,
            shown[: args.report_limit],
            summary,
            title="Images already in the collection",
        )
        for notice in written.notices:
            print(f"report: {notice}")
        print(f"report: {written.path}")
    else:
        report.remove_report(args.output_dir)
    return {"matched": matched, "results": [(names[query], matches) for query, matches in results]}


def get_args_parser(add_help=True):
    parser = flags.script_parser("Which images are already in an extract.py collection: their matches in it", add_help)
    parser.add_argument("--collection", required=True, help="the collection: a folder of extract.py")
    flags.add_image_list(parser, "the images to check")
    flags.add_threshold(parser, required=True, help="a match has a score >= this (the cosine of the descriptors)")
    flags.add_neighbours(parser, default=5, help="matches kept per image at most (its nearest)")
    flags.add_output_dir(parser, "where queries.npy/.txt, matches.csv and report.html are written", required=True)
    flags.add_checkpoint(
        parser, "the collection's model, if it moved (default: the path its manifest.json records)", required=False
    )
    flags.add_saved_index(parser, "a faiss index of the collection saved by search.py --index (default: exact search)")
    flags.add_nprobe(parser, "--index of an IVF index: lists visited")
    flags.add_report_limit(parser, "images")
    flags.add_device(parser)
    flags.add_batch_size(parser)
    flags.add_workers(parser)
    flags.add_print_freq(parser)
    flags.add_search(parser)
    flags.add_chunk_size(parser)
    return parser


if __name__ == "__main__":
    utils.run_script(main, get_args_parser())
