"""The training transform of --augmentation copy-detection, on real JPEG files."""

import numpy as np
import pytest
import torch

from multigrain.images import copy_augmentation, copy_edits
from multigrain.images.datasets import ImageList, SeededItems
from multigrain.images.image_io import load_rgb
from tests.multigrain.images.test_copy_edits import rng, write_pictures


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_pictures(tmp_path_factory.mktemp("copy_augmentation"))


def test_the_training_transform_applies_every_edit_and_is_seeded_per_sample(files, monkeypatch):
    others = ImageList(files[1:], ["b", "c"])
    transform = copy_augmentation.CopyDetectionAugmentation(48, other_images=others)
    samples = SeededItems(ImageList(files, ["a", "b", "c"], transform=transform))
    first = samples[(123, 0)]
    assert first.shape == (3, 48, 48) and torch.isfinite(first).all()
    torch.rand(5), np.random.rand(3)  # other draws in between change nothing: the sample has its own seed
    assert torch.equal(samples[(123, 0)], first)
    assert not torch.equal(samples[(124, 0)], first)

    image = load_rgb(files[0])
    calls = []

    def recorded(name, edit):
        return lambda *args, **kwargs: calls.append(name) or edit(*args, **kwargs)

    for name in copy_augmentation.EDIT_PROBABILITIES:
        monkeypatch.setattr(copy_edits, name, recorded(name, getattr(copy_edits, name)))
    every_edit = list(copy_augmentation.EDIT_PROBABILITIES)
    monkeypatch.setattr(copy_augmentation, "EDIT_PROBABILITIES", dict.fromkeys(every_edit, 1.0))
    assert transform.edit(image, rng()).size == (48, 48) and calls == every_edit
    calls.clear()
    without_others = copy_augmentation.CopyDetectionAugmentation(48)
    assert without_others.edit(image, rng()).size == (48, 48)
    assert calls == [name for name in every_edit if not name.startswith("paste")]  # nothing to paste
