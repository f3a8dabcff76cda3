import json
from collections import Counter

import pytest
import torch
import torchvision

import presets
import train
from multigrain.image_io import BadImageError, load_rgb
from repeated_views import DecodeOnceBatchSampler, RepeatedViews, collate_views
from sampler import RASampler
from synthetic_data import make_imagefolder


def expand(batch):
    return [index for index, copies in batch for _ in range(copies)]


def ra_batches(dataset_size, num_replicas, rank, batch_size, drop_last, **kwargs):
    sampler = RASampler(dataset_size, num_replicas=num_replicas, rank=rank, **kwargs)
    indices = list(sampler)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return batches[:-1] if drop_last and len(batches[-1]) < batch_size else batches


def decode_once_batches(dataset_size, num_replicas, rank, batch_size, drop_last, **kwargs):
    sampler = RASampler(dataset_size, num_replicas=num_replicas, rank=rank, **kwargs)
    return list(DecodeOnceBatchSampler(sampler, batch_size, drop_last))


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("batch_size", [6, 7, 64])
def test_single_process_batches_equal_the_ra_sampler_batches(batch_size, drop_last):
    kwargs = dict(reps=3, epoch_len_factor=2.0, seed=3)
    expected = ra_batches(25, 1, 0, batch_size, drop_last, **kwargs)
    batches = decode_once_batches(25, 1, 0, batch_size, drop_last, **kwargs)
    assert [expand(batch) for batch in batches] == expected
    assert len(DecodeOnceBatchSampler(RASampler(25, **kwargs), batch_size, drop_last)) == len(expected)


@pytest.mark.parametrize("num_replicas", [2, 3])
@pytest.mark.parametrize("batch_size", [6, 5])
def test_every_global_batch_holds_the_samples_of_the_ra_sampler(num_replicas, batch_size):
    kwargs = dict(reps=3, epoch_len_factor=3.0, seed=1)
    per_rank = [decode_once_batches(20, num_replicas, r, batch_size, False, **kwargs) for r in range(num_replicas)]
    reference = [ra_batches(20, num_replicas, r, batch_size, False, **kwargs) for r in range(num_replicas)]
    assert [len(batches) for batches in per_rank] == [len(batches) for batches in reference]
    for step in range(len(reference[0])):
        ours = Counter(i for batches in per_rank for i in expand(batches[step]))
        theirs = Counter(i for batches in reference for i in batches[step])
        assert ours == theirs
        assert len({len(expand(batches[step])) for batches in per_rank}) == 1
    # epoch_len_factor == reps: every image exactly reps times in the epoch.
    epoch = Counter(i for batches in per_rank for batch in batches for i in expand(batch))
    assert epoch == {index: 3 for index in range(20)}


def test_copies_of_an_image_stay_together_when_batches_hold_whole_groups():
    per_rank = [decode_once_batches(12, 2, r, 6, True, reps=3, epoch_len_factor=3.0) for r in range(2)]
    pairs = [pair for batches in per_rank for batch in batches for pair in batch]
    assert sorted(index for index, _ in pairs) == list(range(12))
    assert all(copies == 3 for _, copies in pairs)


def test_set_epoch_changes_the_order():
    batch_sampler = DecodeOnceBatchSampler(RASampler(30, reps=3, epoch_len_factor=3.0), 9, True)
    first = list(batch_sampler)
    batch_sampler.set_epoch(1)
    assert list(batch_sampler) != first


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="RASampler"):
        DecodeOnceBatchSampler(torch.utils.data.SequentialSampler(range(4)), 2, True)
    with pytest.raises(ValueError, match="batch_size"):
        DecodeOnceBatchSampler(RASampler(4), 0, True)


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


def test_train_py_with_decode_once_and_channels_last(tmp_path):
    make_imagefolder(tmp_path / "data", num_classes=3, train_per_class=8, val_per_class=3, image_size=32, seed=1)
    flags = [
        "--data-path",
        str(tmp_path / "data"),
        "--output-dir",
        str(tmp_path / "run"),
        "--model",
        "resnet18",
        "--device",
        "cpu",
        "-j",
        "0",
        "--print-freq",
        "1000",
        "--train-crop-size",
        "32",
        "--val-resize-size",
        "36",
        "--val-crop-size",
        "32",
        "-b",
        "6",
        "--epochs",
        "1",
        "--lr",
        "0.01",
        "--ra-decode-once",
        "--channels-last",
    ]
    metrics = train.main(train.get_args_parser().parse_args(flags))
    assert metrics["images"] == 9
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "train_margin_loss" in record and record["train_margin_loss"] > 0
    weight = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["model"]["features.conv1.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last)

    refused = train.get_args_parser().parse_args([*flags, "--no-ra-sampler", "--classif-weight", "1"])
    with pytest.raises(ValueError, match="--ra-decode-once"):
        train.check_args(refused)
