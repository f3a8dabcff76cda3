import os
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import presets
from multigrain.images.datasets import ImageList, RepeatedViews, collate_views, list_image_files
from multigrain.images.image_io import BadImageError, load_rgb
from sampler import DecodeOnceBatchSampler, RASampler
from tools.synthetic_data import make_imagefolder


def test_image_list_rotates_then_crops_then_transforms(tmp_path):
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)  # 30 wide, 20 high
    pixels[:5, :, 0] = 255  # red band along the top
    Image.fromarray(pixels).save(tmp_path / "a.png")
    images = ImageList(
        [tmp_path / "a.png"] * 3, ["a0", "a1", "a2"], rotations=[0, 90, 90], boxes=[None, None, (0, 0, 5, 7)]
    )
    assert images[0].size == (30, 20)
    rotated = images[1]
    assert rotated.size == (20, 30)  # expand=True keeps the whole picture
    # Counter-clockwise by 90 degrees: the top band becomes the left band.
    assert np.asarray(rotated)[:, :5, 0].min() == 255 and np.asarray(rotated)[:, 5:, 0].max() == 0
    assert images[2].size == (5, 7)
    resized = images.with_transform(lambda image: image.size)
    assert resized[1] == (20, 30) and images.transform is None
    with pytest.raises(ValueError, match="names"):
        ImageList([tmp_path / "a.png"], ["a", "b"])
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(BadImageError, match="broken.jpg"):
        ImageList([tmp_path / "broken.jpg"], ["broken.jpg"])[0]


class CountingLoader:
    def __init__(self):
        self.calls = Counter()

    def __call__(self, path):
        self.calls[path] += 1
        return load_rgb(path)


def test_views_differ_labels_and_ids_match_and_each_file_is_read_once(tmp_path):
    make_imagefolder(tmp_path, num_classes=3, train_per_class=4, val_per_class=1, image_size=40, seed=0)
    loader = CountingLoader()
    folder = torchvision.datasets.ImageFolder(tmp_path / "train", loader=loader)
    transform = presets.ClassificationPresetTrain(crop_size=32)
    dataset = RepeatedViews(folder, transform)
    assert len(dataset) == 12
    sampler = RASampler(len(dataset), reps=3, epoch_len_factor=3.0)
    data = torch.utils.data.DataLoader(
        dataset, batch_sampler=DecodeOnceBatchSampler(sampler, 6, True), collate_fn=collate_views
    )
    views = {}
    for images, labels, ids in data:
        assert images.shape == (6, 3, 32, 32)
        for image, label, index in zip(images, labels.tolist(), ids.tolist()):
            assert label == folder.targets[index]
            views.setdefault(index, []).append(image)
    assert sorted(views) == list(range(12))
    for copies in views.values():
        assert len(copies) == 3
        assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])
    assert set(loader.calls.values()) == {1} and len(loader.calls) == 12


def test_collate_views_leaves_out_bad_images():
    view = (torch.zeros(3, 2, 2), 1, 5)
    images, labels, ids = collate_views([None, [view, view]])
    assert images.shape == (2, 3, 2, 2) and labels.tolist() == [1, 1] and ids.tolist() == [5, 5]
    with pytest.raises(BadImageError, match="all 2 images"):
        collate_views([None, None])


def test_image_files_are_listed_sorted_with_torchvision_extensions_in_any_case(tmp_path):
    for name in ("b.JPG", "a.png", "c.webp", "notes.txt", "sub/d.jpeg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list_image_files(tmp_path) == ["a.png", "b.JPG", "c.webp"]
    assert list_image_files(tmp_path, recursive=True) == ["a.png", "b.JPG", "c.webp", os.path.join("sub", "d.jpeg")]


def test_a_link_loop_lists_every_file_once(tmp_path):
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    (tmp_path / "folder" / "a.jpg").write_bytes(b"")
    (tmp_path / "folder" / "sub" / "b.jpg").write_bytes(b"")
    os.symlink(".", tmp_path / "folder" / "loop")  # ln -s . folder/loop
    os.symlink("..", tmp_path / "folder" / "sub" / "up")
    assert list_image_files(tmp_path / "folder", recursive=True) == ["a.jpg", os.path.join("sub", "b.jpg")]


def test_image_list_applies_the_exif_orientation_unless_told_not_to(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the viewer turns it 90 degrees clockwise
    Image.new("RGB", (30, 20)).save(tmp_path / "sideways.jpg", exif=exif)
    assert ImageList([tmp_path / "sideways.jpg"], ["sideways.jpg"])[0].size == (20, 30)
    assert ImageList([tmp_path / "sideways.jpg"], ["sideways.jpg"], exif_transpose=False)[0].size == (30, 20)
