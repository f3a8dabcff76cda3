import math

import torch

from multigrain import distributed


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
