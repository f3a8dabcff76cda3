"""Validation without labels, for instance-only training on a collection (train.py --data-kind collection): the model
finds edited copies of held-out images among the held-out images, scored with DISC21's copy-detection metrics.

The N held-out images, in an order drawn once from COPY_SEED: the first half are references, and each gets an edited
copy as a query (`make_copy_edit` at full strength: flip, rotation, crop, rescaling, colour, JPEG, another held-out
image pasted over part of it, emoji-like shapes, text, a new size); the next quarter get a copy too but are not
references (queries without a match, as in DISC21); the rest are references without a copy (distractors). Each copy
is drawn from the seed (COPY_SEED, its index), so the queries are the same at every epoch and in every run on the same
held-out images. The predictions are the 10 × (number of queries) best (query, reference) pairs over all queries
together, scored by the inner product of the retrieval descriptors (DISC21's global selection).
"""

import numpy as np
import torch
from torchvision.transforms.functional import InterpolationMode

from ..images.copy_edits import make_copy_edit
from ..images.datasets import ImageList, SkipBadImages
from ..images.image_io import load_rgb
from ..inference.retrieval_descriptors import retrieval_descriptors
from ..search.nn_search import top_pairs
from ..training import distributed
from .copy_detection_metrics import copy_detection_metrics

MIN_HELD_OUT = 4  # two references with a copy, one query without a match, one distractor
COPY_SEED = 2021
PREDICTIONS_PER_QUERY = 10


class EditedCopies(ImageList):
    """Item i is the edited copy (`make_copy_edit`) of image i of `paths` with `overlay_paths[i]` pasted over part of
    it, drawn from the seed (COPY_SEED, i): the same copy at every call."""

    def __init__(self, paths, names, overlay_paths, transform=None):
        super().__init__(paths, names, transform=transform)
        self.overlay_paths = [str(path) for path in overlay_paths]

    def __getitem__(self, index):
        rng = np.random.default_rng([COPY_SEED, index])
        copy = make_copy_edit(load_rgb(self.paths[index]), load_rgb(self.overlay_paths[index]), rng)
        return self.transform(copy) if self.transform is not None else copy


class CopyValidation:
    """The copy-detection validation of the held-out images `held_out` (an ImageList); with `skip_bad_images`, the
    queries and references whose image cannot be read are left out of the scores (printed), else they stop it."""

    def __init__(self, held_out, *, skip_bad_images=False):
        count = len(held_out)
        if count < MIN_HELD_OUT:
            raise ValueError(f"{count} held-out images are too few to score copy detection: at least {MIN_HELD_OUT}")
        rng = np.random.default_rng(COPY_SEED)
        order = rng.permutation(count)
        matched, unmatched, distractors = np.split(order, [count // 2, count // 2 + count // 4])
        references = sorted([*matched, *distractors])
        sources = sorted([*matched, *unmatched])
        overlays = [(source + 1 + rng.integers(count - 1)) % count for source in sources]  # another held-out image
        paths, names = held_out.paths, held_out.names
        query_names = [f"{names[source]} (copy)" for source in sources]
        self.references = ImageList([paths[i] for i in references], [names[i] for i in references])
        self.queries = EditedCopies([paths[i] for i in sources], query_names, [paths[i] for i in overlays])
        self.ground_truth = [(f"{names[i]} (copy)", names[i]) for i in sorted(matched)]
        self.skip_bad_images = skip_bad_images

    @torch.no_grad()
    def evaluate(self, model, device, *, input_size, interpolation=InterpolationMode.BILINEAR, **extraction) -> dict:
        """μAP, recall at precision 90% and recall at ranks 1 and 10 (in %), the score threshold of recall@P90 (None
        when precision 90% is not reached), and the numbers of queries and references scored, on every process.

        The descriptors are the model's retrieval descriptors at largest side `input_size` (retrieval_descriptors,
        each process extracting a share); `extraction`: batch_size, num_workers, amp_dtype, print_freq.
        """
        model.eval()
        kept = {}
        for part in ("queries", "references"):
            images = getattr(self, part)
            skipped = [] if self.skip_bad_images else None
            descriptors = retrieval_descriptors(
                model,
                SkipBadImages(images) if self.skip_bad_images else images,
                device,
                input_size=input_size,
                interpolation=interpolation,
                skipped=skipped,
                **extraction,
            )
            rows = np.setdiff1d(np.arange(len(images)), skipped or [])
            kept[part] = (torch.from_numpy(descriptors[rows]), [images.names[i] for i in rows])
        (queries, query_names), (references, reference_names) = kept["queries"], kept["references"]
        present = set(query_names) | set(reference_names)
        ground_truth = [(query, reference) for query, reference in self.ground_truth if {query, reference} <= present]
        if not ground_truth:
            raise ValueError("no held-out copy with its original is left to score: every one failed to load")
        query_rows, reference_rows, scores = top_pairs(queries, references, PREDICTIONS_PER_QUERY * len(queries))
        metrics = copy_detection_metrics(
            [query_names[i] for i in query_rows], [reference_names[i] for i in reference_rows], scores, ground_truth
        )
        threshold = metrics.pop("threshold@P90")
        results = {name: 100.0 * value for name, value in metrics.items()}
        distributed.print_main(
            f"Copy detection on the held-out images: μAP {results['muAP']:.2f} recall@P90 {results['recall@P90']:.2f} "
            f"recall@1 {results['recall@1']:.2f} ({len(queries)} queries, {len(references)} references)"
        )
        return {**results, "threshold@P90": threshold, "queries": len(queries), "references": len(references)}
