"""Repeated-augmentation samplers: each image drawn comes `reps` times in a row, its copies in one global batch.

`RASampler` yields dataset indices, one per copy: every copy is a separate sample, whose file is read
and decoded on its own. `DecodeOnceBatchSampler` yields the same samples as (index, copies) pairs, so
that `multigrain.images.datasets.RepeatedViews` decodes each image once and draws the transform `copies`
times on it (train.py --ra-decode-once):

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

from multigrain.training import distributed
from multigrain.training.seeding import derive_seed


class RASampler(torch.utils.data.Sampler):
    """Repeated-augmentation sampler: every image is drawn ``reps`` times in a row.

    Each epoch has exactly ``ceil(epoch_len_factor * dataset_size / num_replicas)`` samples
    per rank, hence ``num_replicas`` times that in all (copies included), and never zero for
    a non-empty dataset. With ``epoch_len_factor == reps`` (and ``reps * dataset_size``
    divisible by ``num_replicas``) an epoch shows every image exactly ``reps`` times; the
    paper's recipe uses ``epoch_len_factor = 2.0`` with ``reps = 3``.

    The global order of an epoch is a permutation of the dataset seeded with
    ``seed + epoch`` (the same on every rank), each index repeated ``reps`` times
    consecutively; further permutations from the same generator are appended while the
    epoch needs more samples. Rank ``r`` takes positions ``r, r + R, r + 2R, ...`` of that
    list, so the copies of an image go to different ranks while the rank-local batches of
    one step still form a contiguous block of the global list. Call ``set_epoch`` every
    epoch, distributed or not.
    """

    def __init__(
        self,
        dataset_size: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        reps: int = 3,
        epoch_len_factor: float = 1.0,
    ):
        if num_replicas is None:
            num_replicas = distributed.get_world_size()
        if rank is None:
            rank = distributed.get_rank()
        if dataset_size < 1:
            raise ValueError(f"dataset_size must be at least 1, got {dataset_size}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be at least 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if reps < 1:
            raise ValueError(f"reps must be at least 1, got {reps}")
        if not epoch_len_factor > 0:
            raise ValueError(f"epoch_len_factor must be positive, got {epoch_len_factor}")

        self.dataset_size = dataset_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.reps = reps
        self.epoch_len_factor = epoch_len_factor
        self.epoch = 0
        self.num_samples = math.ceil(epoch_len_factor * dataset_size / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def global_order(self) -> torch.Tensor:
        """The epoch's ``total_size`` indices, copies included, before the split across ranks."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        num_orders = math.ceil(self.total_size / (self.reps * self.dataset_size))
        orders = []
        for _ in range(num_orders):
            if self.shuffle:
                orders.append(torch.randperm(self.dataset_size, generator=generator))
            else:
                orders.append(torch.arange(self.dataset_size))
        return torch.cat(orders).repeat_interleave(self.reps)[: self.total_size]

    def __iter__(self):
        return iter(self.global_order()[self.rank :: self.num_replicas].tolist())


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


class SeededBatches(torch.utils.data.Sampler):
    """The batches of `batch_sampler` from step `first_step` on, each item as (seed, item) for
    `multigrain.images.datasets.SeededItems`: the seed of item i of step s is derived from (*key, s, i).

    A resumed epoch skips its first steps here, from the indices alone, without loading their images.
    """

    def __init__(self, batch_sampler, key, first_step=0):
        if not 0 <= first_step <= len(batch_sampler):
            raise ValueError(f"first_step must be in [0, {len(batch_sampler)}], got {first_step}")
        self.batch_sampler = batch_sampler
        self.key = tuple(key)
        self.first_step = first_step

    def __len__(self) -> int:
        return len(self.batch_sampler) - self.first_step

    def __iter__(self):
        for step, batch in enumerate(self.batch_sampler):
            if step >= self.first_step:
                yield [(derive_seed(*self.key, step, i), item) for i, item in enumerate(batch)]
