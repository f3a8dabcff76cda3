"""Seeds derived from tuples of integers, and the random states that a training step consumes.

A mid-epoch checkpoint stores each process's `random_states` so that the rest of the epoch draws what
the uninterrupted run drew; the augmentation of each sample is seeded from its own key (see
`multigrain.images.datasets.SeededItems`), so that it depends neither on the DataLoader workers nor on
where the epoch was resumed.
"""

import random

import numpy as np
import torch


def derive_seed(*keys) -> int:
    """A 63-bit seed from a tuple of non-negative integers (e.g. seed, epoch, rank)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_all(seed: int, accelerators: bool = True) -> None:
    """Seeds torch (with its CUDA generators unless not `accelerators`: 0.3 ms more), numpy and random."""
    if accelerators:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def seed_everything(*keys) -> None:
    """Seeds torch, numpy and random from a tuple of integers (e.g. seed, epoch, rank)."""
    seed_all(derive_seed(*keys))


def random_states(generator: torch.Generator) -> dict:
    """The states of torch (CPU and CUDA), numpy, random and `generator`, as tensors and plain containers
    (what torch.load(weights_only=True) reads back)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "random": random.getstate(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_random_states(states: dict, generator: torch.Generator) -> None:
    """Restores what `random_states` returned."""
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    version, internal, gauss_next = states["random"]
    random.setstate((version, tuple(internal), gauss_next))
    generator.set_state(states["generator"])
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"])
