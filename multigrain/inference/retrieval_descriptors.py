"""The retrieval descriptors of an image list as evaluate.py and extract.py compute them: under torchrun every
process extracts a share of the images; with multiscale, the normalised mean of three scales."""

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.utils.data
from torchvision.transforms.functional import InterpolationMode

from ..images.transforms import RetrievalPresetEval
from ..model import l2n
from ..training import distributed
from .extraction import check_finite, extract_descriptors

MULTISCALE_FACTORS = (1.0, 1 / math.sqrt(2), 0.5)


def extract_sharded(
    model, images, device, *, batch_size=32, num_workers=0, amp_dtype=None, print_freq=0, skipped=None
) -> np.ndarray:
    """The descriptors of `images` (an ImageList) in order, on every process: process `rank` extracts
    images rank, rank + world size, ... (extract_descriptors, with its batch_size, num_workers and amp_dtype),
    and the main process prints its progress every `print_freq` batches (0: never).

    With a `skipped` list, the images yielded as None (SkipBadImages) get NaN rows and their indices are
    appended to it, on every process. Any other non-finite or all-zero descriptor raises NonFiniteOutputError.
    """
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    shard = torch.utils.data.Subset(images, range(rank, len(images), world_size))
    local_skipped = [] if skipped is not None else None
    local = extract_descriptors(
        model,
        shard,
        device,
        batch_size=batch_size,
        num_workers=num_workers,
        amp_dtype=amp_dtype,
        print_freq=print_freq * batch_size if distributed.is_main_process() else 0,
        skipped=local_skipped,
    ).numpy()
    if world_size == 1:
        descriptors = local
        if skipped is not None:
            skipped.extend(local_skipped)
    else:
        shards = [None] * world_size
        dist.all_gather_object(shards, (local, local_skipped))
        descriptors = np.empty((len(images), local.shape[1]), dtype=np.float32)
        for shard_rank, (shard_descriptors, shard_skipped) in enumerate(shards):
            descriptors[shard_rank::world_size] = shard_descriptors
            if skipped is not None:
                skipped.extend(shard_rank + world_size * index for index in shard_skipped)
        if skipped is not None:
            skipped.sort()
    if skipped:
        kept = np.setdiff1d(np.arange(len(images)), skipped)
        check_finite(descriptors[kept], [images.names[i] for i in kept], "descriptors", zero_too=True)
    else:
        check_finite(descriptors, images.names, "descriptors", zero_too=True)
    return descriptors


def retrieval_descriptors(
    model,
    images,
    device,
    *,
    input_size,
    multiscale=False,
    interpolation=InterpolationMode.BILINEAR,
    skipped=None,
    **extraction,
) -> np.ndarray:
    """The descriptors of `images` (an ImageList) at largest side `input_size`, no crop; with `multiscale`, the
    normalised mean of the descriptors at largest sides s, s/√2 and s/2. `skipped`: see extract_sharded (an image
    unreadable at one scale is unreadable at all); `extraction`: the other keyword arguments of extract_sharded
    (batch_size, num_workers, amp_dtype, print_freq)."""
    factors = MULTISCALE_FACTORS if multiscale else (1.0,)
    total = None
    for factor in factors:
        transform = RetrievalPresetEval(max_size=round(input_size * factor), interpolation=interpolation)
        scale_skipped = [] if skipped is not None else None
        descriptors = extract_sharded(
            model, images.with_transform(transform), device, skipped=scale_skipped, **extraction
        )
        if skipped is not None and factor == factors[0]:
            skipped.extend(scale_skipped)
        total = descriptors if total is None else total + descriptors
    if multiscale:
        total = l2n(torch.from_numpy(total)).numpy()
    return total
