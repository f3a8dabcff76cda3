"""The copy-detection validation of held-out images: its queries, references and ground truth, and its scores."""

import numpy as np
import pytest
import torch

from multigrain.evaluation.copy_validation import CopyValidation
from multigrain.images.datasets import ImageList
from multigrain.images.image_io import BadImageError
from multigrain.model import build_model
from tools.synthetic_data import render_image


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Ten synthetic pictures of 32×24 px written as JPEG files."""
    folder = tmp_path_factory.mktemp("held_out")
    rng = np.random.default_rng(1)
    names = [f"image_{index}.jpg" for index in range(10)]
    for index, name in enumerate(names):
        render_image(index % 10, rng, (32, 24)).save(folder / name, "JPEG", quality=90)
    return ImageList([folder / name for name in names], names)


def test_half_get_a_copy_with_their_original_a_quarter_a_copy_without_and_the_rest_are_distractors(held_out):
    validation = CopyValidation(held_out)
    queries, references = validation.queries, validation.references
    assert (len(queries), len(references), len(validation.ground_truth)) == (5 + 2, 5 + 3, 5)
    assert set(references.names) | {name.removesuffix(" (copy)") for name in queries.names} == set(held_out.names)
    for query, reference in validation.ground_truth:
        assert query == f"{reference} (copy)" and query in queries.names and reference in references.names
    unmatched = [name for name in queries.names if name.removesuffix(" (copy)") not in references.names]
    assert len(unmatched) == 2
    for index, (source, overlay) in enumerate(zip(queries.paths, queries.overlay_paths)):
        assert source != overlay  # another held-out image is pasted over the copy
        first, again = np.asarray(queries[index]), np.asarray(queries[index])
        assert np.array_equal(first, again)  # the same copy at every epoch
    assert not np.array_equal(np.asarray(queries[0]), np.asarray(CopyValidation(held_out).queries[1]))

    with pytest.raises(ValueError, match="3 held-out images are too few to score copy detection: at least 4"):
        CopyValidation(ImageList(held_out.paths[:3], held_out.names[:3]))


def test_the_scores_and_a_bad_held_out_image(held_out, tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=0)
    metrics = CopyValidation(held_out).evaluate(model, torch.device("cpu"), input_size=32)
    assert (metrics["queries"], metrics["references"]) == (7, 8)
    for name in ("muAP", "recall@P90", "recall@1", "recall@10"):
        assert 0.0 <= metrics[name] <= 100.0
    assert metrics["recall@10"] == 100.0  # every query is among the 10 × 7 best pairs of 8 references
    assert not model.training

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    damaged = ImageList([broken, *held_out.paths[1:]], ["broken.jpg", *held_out.names[1:]])
    with pytest.raises(BadImageError, match="broken.jpg"):
        CopyValidation(damaged).evaluate(model, torch.device("cpu"), input_size=32)
    skipping = CopyValidation(damaged, skip_bad_images=True)
    skipped = skipping.evaluate(model, torch.device("cpu"), input_size=32)
    readable = [
        str(broken) not in (path, overlay)
        for path, overlay in zip(skipping.queries.paths, skipping.queries.overlay_paths)
    ]
    assert sum(readable) < 7  # the copy of the broken image, or one with it pasted over, is left out
    assert skipped["queries"] == sum(readable) and skipped["references"] == 8 - (
        "broken.jpg" in skipping.references.names
    )
