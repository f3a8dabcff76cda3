"""Repeated augmentation that reads and decodes each image once per batch instead of once per copy.

With `RASampler` and a dataset holding the random transform, every copy of an image is a separate
sample: the file is read and the JPEG decoded `reps` times. Here a batch sampler hands the dataset
(index, copies) pairs and `RepeatedViews` decodes the image once and draws the transform `copies`
times on it. The samples of an epoch and of every global batch are those of `RASampler`: every copy
of every image is present, and the copies of an image sit in the same global batch.

    sampler = RASampler(len(dataset), reps=3, epoch_len_factor=2.0)
    loader = DataLoader(
        RepeatedViews(ImageFolder(root), transform),
        batch_sampler=DecodeOnceBatchSampler(sampler, batch_size=64, drop_last=True),
        collate_fn=collate_views,
        num_workers=8,
    )
"""

import math

import torch
import torch.utils.data

from multigrain.image_io import BadImageError
from sampler import RASampler


class DecodeOnceBatchSampler(torch.utils.data.Sampler):
    """Batches of (index, copies) pairs holding the samples of an `RASampler` epoch.

    Step s covers the positions [s·R·b, (s+1)·R·b) of the sampler's global order (R ranks, b samples
    per rank and step), as R ranks iterating the `RASampler` with batch size b do. RASampler gives
    rank r every R-th position of that block; here rank r takes the contiguous slice
    [s·R·b + r·b, s·R·b + (r+1)·b) instead, whose consecutive copies of one index become one
    (index, copies) pair. So under decode-once the copies of an image are produced by one worker of
    one rank from one decoded picture (they share that rank's BatchNorm statistics); only an image
    whose copies straddle two batches or two ranks is decoded once on each side. The last step of an
    epoch holds fewer than b samples per rank unless `drop_last`. Call `set_epoch` every epoch.
    """

    def __init__(self, sampler: RASampler, batch_size: int, drop_last: bool):
        if not isinstance(sampler, RASampler):
            raise ValueError(f"DecodeOnceBatchSampler needs an RASampler, got {type(sampler).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.sampler.num_samples // self.batch_size
        return math.ceil(self.sampler.num_samples / self.batch_size)

    def __iter__(self):
        order = self.sampler.global_order()
        num_replicas, per_rank = self.sampler.num_replicas, self.sampler.num_samples
        for step in range(len(self)):
            size = min(self.batch_size, per_rank - step * self.batch_size)
            start = step * num_replicas * self.batch_size + self.sampler.rank * size
            indices, copies = torch.unique_consecutive(order[start : start + size], return_counts=True)
            yield list(zip(indices.tolist(), copies.tolist()))


class RepeatedViews(torch.utils.data.Dataset):
    """Indexed by (index, copies): reads item `index` of `dataset` once, returns `copies` samples.

    `dataset[index]` gives (image, label) with the image not yet transformed (e.g. an ImageFolder
    without transform). Each of the `copies` samples is (transform(image), label, index), from its own
    random draw of `transform`; the index is the instance id of the margin loss.
    """

    def __init__(self, dataset, transform):
        self.dataset = dataset
        self.transform = transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, copies = item
        image, label = self.dataset[index]
        return [(self.transform(image), label, index) for _ in range(copies)]


def collate_views(batch):
    """default_collate of the samples of a batch of `RepeatedViews` items.

    An item that is None (an image that `utils.SkipBadImages` could not read) contributes nothing.
    """
    samples = [sample for views in batch if views is not None for sample in views]
    if not samples:
        raise BadImageError(f"all {len(batch)} images of a batch failed to load (see the messages above)")
    return torch.utils.data.default_collate(samples)
