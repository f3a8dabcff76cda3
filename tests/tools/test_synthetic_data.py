import argparse
import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets, transforms

from tests.scripts import run_script
from tools import synthetic_data


class NoClassesUnpickler(pickle.Unpickler):
    """Accepts plain containers, numbers and strings only: any class lookup fails."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in the ground-truth pickle")


def open_jpeg(path):
    image = Image.open(path)
    assert image.format == "JPEG", path
    image.load()
    return image


def relative_files(root):
    return sorted(str(path.relative_to(root)) for path in Path(root).rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def all_layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("all")
    return root, synthetic_data.make_all(root, seed=0)


def test_imagefolder_layout_and_counts(tmp_path):
    written = synthetic_data.make_imagefolder(
        tmp_path, num_classes=3, train_per_class=4, val_per_class=2, image_size=32, seed=0
    )
    assert [len(written["train"]), len(written["val"])] == [12, 6]
    for split, per_class in (("train", 4), ("val", 2)):
        dataset = datasets.ImageFolder(tmp_path / split)
        assert dataset.classes == ["class_000", "class_001", "class_002"]
        assert sorted(dataset.targets) == sorted([0, 1, 2] * per_class)
        for path, target in dataset.samples:
            image = open_jpeg(path)
            assert image.size == (32, 32) and image.mode == "RGB"
            assert dataset.classes[target] == Path(path).parent.name
    assert sorted(relative for relative, _ in written["train"] + written["val"]) == relative_files(tmp_path)


def test_all_writes_every_layout_deterministically(all_layouts, tmp_path):
    root, written = all_layouts
    assert set(written) == {"imagenet", "holidays", "ukbench", "copydays", "revisitop/roxford5k", "revisitop/rparis6k"}
    for folder in (
        "imagenet/train/class_009",
        "imagenet/val/class_000",
        "holidays/jpg",
        "ukbench/full",
        "copydays/original",
        "copydays/strong",
        "copydays/distractors",
        "revisitop/roxford5k/jpg",
        "revisitop/rparis6k/jpg",
    ):
        assert any((root / folder).glob("*.jpg")), folder

    again = tmp_path / "again"
    synthetic_data.make_all(again, seed=0)
    files = relative_files(root)
    assert files == relative_files(again)
    assert all((root / name).read_bytes() == (again / name).read_bytes() for name in files)

    other_seed = tmp_path / "other_seed"
    synthetic_data.make_ukbench(other_seed, num_groups=25, seed=1)
    assert (other_seed / "full/ukbench00000.jpg").read_bytes() != (root / "ukbench/full/ukbench00000.jpg").read_bytes()


def test_every_written_file_is_a_jpeg(all_layouts):
    root, _ = all_layouts
    jpegs = list(root.rglob("*.jpg"))
    assert len(jpegs) > 700
    for path in jpegs:
        assert open_jpeg(path).mode == "RGB"


def tiny_descriptor(image):
    return np.asarray(image.resize((8, 8), Image.Resampling.BILINEAR), dtype=np.float64).ravel()


def test_images_of_one_class_are_distinct_instances():
    rng = np.random.default_rng(0)
    instances = [synthetic_data.render_image(3, rng, 64) for _ in range(10)]
    pixels = [np.asarray(image, dtype=np.float64) for image in instances]
    for i in range(10):
        for j in range(i + 1, 10):
            assert np.abs(pixels[i] - pixels[j]).mean() > 20

    # A mild attacked copy is still closest to its own original among images of the same class.
    descriptors = np.stack([tiny_descriptor(image) for image in instances])
    found = 0
    for index, image in enumerate(instances):
        variant = synthetic_data.make_variant(image, rng, strength=0.3)
        assert variant.size == image.size
        found += ((descriptors - tiny_descriptor(variant)) ** 2).sum(1).argmin() == index
    assert found >= 9


def test_make_variant_rejects_bad_strength():
    image = synthetic_data.render_image(0, np.random.default_rng(0), (40, 30))
    with pytest.raises(ValueError, match="strength"):
        synthetic_data.make_variant(image, np.random.default_rng(0), strength=1.5)


def test_classes_are_learnable_from_augmented_crops(tmp_path):
    """Nearest class mean on colour and gradient statistics of training-style crops, far above chance."""
    written = synthetic_data.make_imagefolder(tmp_path, num_classes=10, train_per_class=10, val_per_class=5, seed=3)
    torch.manual_seed(0)
    augment = transforms.Compose(
        [
            transforms.RandomResizedCrop(64, scale=(0.08, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
        ]
    )

    def statistics(image):
        hsv = np.asarray(image.convert("HSV"), dtype=np.float64) / 255
        hue, weight = hsv[..., 0] * 2 * np.pi, hsv[..., 1] * hsv[..., 2]
        mean_hue = [(weight * np.cos(hue)).sum() / weight.sum(), (weight * np.sin(hue)).sum() / weight.sum()]
        grey = np.asarray(image.convert("L"), dtype=np.float64)
        gx, gy = np.diff(grey, axis=1)[:-1], np.diff(grey, axis=0)[:, :-1]
        energy = (gx**2 + gy**2).sum() + 1e-9
        orientation = [(gx**2).sum() / energy, (gy**2).sum() / energy, np.abs(gx * gy).sum() / energy]
        return np.array(mean_hue + orientation)

    def crop_statistics(items):
        features, labels = [], []
        for relative, class_id in items:
            image = Image.open(tmp_path / relative).convert("RGB")
            for _ in range(2):
                features.append(statistics(augment(image)))
                labels.append(class_id)
        return np.stack(features), np.array(labels)

    train_x, train_y = crop_statistics(written["train"])
    val_x, val_y = crop_statistics(written["val"])
    mean, std = train_x.mean(0), train_x.std(0)
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    class_means = np.stack([train_x[train_y == c].mean(0) for c in range(10)])
    predictions = ((val_x[:, None] - class_means[None]) ** 2).sum(-1).argmin(1)
    assert (predictions == val_y).mean() >= 0.8  # chance is 0.1


def test_holidays_layout(all_layouts):
    root, written = all_layouts
    root = root / "holidays"
    groups = written["holidays"]["groups"]
    names = sorted((root / "jpg").iterdir())
    assert all(re.fullmatch(r"\d{6}\.jpg", path.name) for path in names)
    assert [path.name for path in names] == sorted(name for group in groups for name in group)
    assert len(groups) == 20
    for number, group in enumerate(groups, start=1000):
        assert [name[:4] for name in group] == [str(number)] * len(group)
        assert int(group[0][:6]) % 100 == 0 and all(int(name[:6]) % 100 != 0 for name in group[1:])
    sizes = [len(group) for group in groups]
    assert set(sizes) == {2, 3}
    assert sizes[-1] == 3

    lines = (root / "rotations.txt").read_text().splitlines()
    listed = {line.split()[0]: int(line.split()[1]) for line in lines}
    assert listed == written["holidays"]["rotations"]
    assert set(listed.values()) == {90, 180, 270}
    assert all((root / "jpg" / name).is_file() for name in listed)


def test_holidays_rotation_list_restores_upright_pictures(tmp_path):
    rotated_root, upright_root = tmp_path / "rotated", tmp_path / "upright"
    rotated = synthetic_data.make_holidays(rotated_root, num_groups=6, rotated_fraction=0.5, seed=5)
    upright = synthetic_data.make_holidays(upright_root, num_groups=6, rotated_fraction=0.0, seed=5)
    assert upright["rotations"] == {} and (upright_root / "rotations.txt").read_text() == ""
    assert rotated["groups"] == upright["groups"]
    assert len(rotated["rotations"]) >= 3

    for name, degrees in rotated["rotations"].items():
        stored = open_jpeg(rotated_root / "jpg" / name)
        reference = np.asarray(open_jpeg(upright_root / "jpg" / name), dtype=np.float64)
        restored = stored.rotate(degrees, expand=True)
        assert restored.size == (reference.shape[1], reference.shape[0])
        assert np.abs(np.asarray(restored, dtype=np.float64) - reference).mean() < 5
        upside_down = np.asarray(stored.rotate(degrees + 180, expand=True), dtype=np.float64)
        assert np.abs(upside_down - reference).mean() > 15


def test_ukbench_layout(all_layouts):
    root, written = all_layouts
    names = [path.name for path in sorted((root / "ukbench/full").iterdir())]
    assert names == [f"ukbench{index:05d}.jpg" for index in range(100)] == written["ukbench"]
    assert {open_jpeg(root / "ukbench/full" / name).size for name in names} == {(80, 60)}


def test_copydays_layout(all_layouts):
    root, written = all_layouts
    root = root / "copydays"
    originals = sorted(path.name for path in (root / "original").iterdir())
    assert originals == [f"{2000 + index}00.jpg" for index in range(12)] == written["copydays"]["originals"]

    queries = sorted(path.name for path in (root / "strong").iterdir())
    assert queries == sorted(written["copydays"]["queries"])
    per_original = {}
    for name in queries:
        assert re.fullmatch(r"\d{4}(0[1-9]|[1-9]\d)\.jpg", name)
        assert f"{name[:4]}00.jpg" in originals
        per_original[name[:4]] = per_original.get(name[:4], 0) + 1
    assert len(per_original) == 12 and set(per_original.values()) <= {1, 2, 3}

    listed = (root / "distractors.txt").read_text().splitlines()
    assert listed == written["copydays"]["distractors"] and len(listed) == 40
    assert sorted(listed) == sorted(f"distractors/{path.name}" for path in (root / "distractors").iterdir())


@pytest.mark.parametrize("name", ["roxford5k", "rparis6k"])
def test_revisitop_ground_truth_structure(all_layouts, name):
    root, written = all_layouts
    root = root / "revisitop" / name
    raw = (root / f"gnd_{name}.pkl").read_bytes()
    assert raw[0] == pickle.PROTO[0] and raw[1] <= 4
    ground_truth = NoClassesUnpickler(io.BytesIO(raw)).load()
    assert ground_truth == written[f"revisitop/{name}"]
    assert set(ground_truth) == {"imlist", "qimlist", "gnd"}

    imlist, qimlist, gnd = ground_truth["imlist"], ground_truth["qimlist"], ground_truth["gnd"]
    assert len(imlist) == 40 and len(qimlist) == len(gnd) == 5
    assert not set(imlist) & set(qimlist)
    on_disk = sorted(path.name for path in (root / "jpg").iterdir())
    assert on_disk == sorted(f"{image}.jpg" for image in imlist + qimlist)

    for query, entry in zip(qimlist, gnd):
        width, height = open_jpeg(root / "jpg" / f"{query}.jpg").size
        x1, y1, x2, y2 = entry["bbx"]
        assert all(isinstance(value, float) for value in entry["bbx"])
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        easy, hard, junk = set(entry["easy"]), set(entry["hard"]), set(entry["junk"])
        assert easy and hard and junk
        assert not (easy & hard or easy & junk or hard & junk)
        assert all(isinstance(index, int) and 0 <= index < len(imlist) for index in easy | hard | junk)
        # The Easy, Medium and Hard protocols have different positives.
        assert len({frozenset(easy), frozenset(easy | hard), frozenset(hard)}) == 3


def test_bad_arguments_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--num-classes"):
        synthetic_data.make_imagefolder(tmp_path / "a", num_classes=0)
    with pytest.raises(ValueError, match="--image-size"):
        synthetic_data.make_imagefolder(tmp_path / "b", image_size=8)
    with pytest.raises(ValueError, match="--images-per-group"):
        synthetic_data.make_holidays(tmp_path / "c", images_per_group=1)
    with pytest.raises(ValueError, match="--num-database"):
        synthetic_data.make_revisitop(tmp_path / "d", num_queries=5, num_database=20)
    with pytest.raises(ValueError, match="--name"):
        synthetic_data.make_revisitop(tmp_path / "e", name="oxford5k")
    with pytest.raises(argparse.ArgumentTypeError, match="80x60"):
        synthetic_data.parse_size("80 by 60")
    assert synthetic_data.parse_size("80x60") == (80, 60) and synthetic_data.parse_size("64") == (64, 64)

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        synthetic_data.make_ukbench(tmp_path / "full")


def test_the_tool_imports_neither_torch_nor_torchvision():
    code = "import sys, tools.synthetic_data; print(sorted({'torch', 'torchvision'} & set(sys.modules)))"
    assert run_script("-c", code).stdout.strip() == "[]"


def test_command_line(tmp_path):
    output = tmp_path / "imagenet"
    command = [
        "tools/synthetic_data.py", "imagefolder", "--output", str(output), "--num-classes", "2",
        "--train-per-class", "3", "--val-per-class", "1", "--image-size", "40x32", "--seed", "7",
    ]  # fmt: skip
    result = run_script(*command, check=False)
    assert result.returncode == 0, result.stderr
    assert "6 training and 2 validation images" in result.stdout
    files = relative_files(output)
    assert len(files) == 8 and files[0] == "train/class_000/class_000_00000.jpg"
    assert open_jpeg(output / files[0]).size == (40, 32)

    result = run_script(*command, check=False)
    assert result.returncode != 0 and "not empty" in result.stderr


def dominant_hue(path):
    """Circular mean of the hue in [0, 1), weighted by saturation."""
    hsv = np.asarray(Image.open(path).convert("HSV"), dtype=np.float64) / 255
    angle = 2 * np.pi * hsv[..., 0]
    weight = hsv[..., 1]
    mean = np.arctan2((weight * np.sin(angle)).sum(), (weight * np.cos(angle)).sum())
    return (mean / (2 * np.pi)) % 1.0


def test_retrieval_pictures_come_from_the_first_num_classes(tmp_path):
    # Class 0 is the red hue family: with one class every picture is red, with all 72 many are not.
    distance_to_red = {}
    for num_classes in (1, synthetic_data.MAX_CLASSES):
        root = tmp_path / str(num_classes)
        written = synthetic_data.make_copydays(root, num_originals=6, num_distractors=6, num_classes=num_classes)
        paths = [root / "original" / name for name in written["originals"]] + [
            root / rel for rel in written["distractors"]
        ]
        distance_to_red[num_classes] = [min(hue, 1 - hue) for hue in map(dominant_hue, paths)]
    assert max(distance_to_red[1]) < 0.06, distance_to_red[1]
    assert max(distance_to_red[synthetic_data.MAX_CLASSES]) > 0.15, distance_to_red[synthetic_data.MAX_CLASSES]


def test_command_line_refuses_a_bad_class_count(tmp_path):
    output = tmp_path / "revisitop"
    command = ["tools/synthetic_data.py", "revisitop", "--output", str(output), "--num-classes", "1"]
    result = run_script(*command, check=False)
    assert result.returncode == 2
    assert "--num-classes must be between 2 and 72, got 1" in result.stderr and "Traceback" not in result.stderr
    assert not output.exists()
