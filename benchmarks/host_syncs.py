"""Counting the times the host waits for the device (a "host sync"), for the training step's benchmark and tests.

    with count_host_syncs(device) as syncs:
        ...
    syncs.count

On a GPU, torch.cuda.set_sync_debug_mode("warn") makes every synchronising CUDA call warn, and the warnings are
counted. On the CPU nothing waits, so the count is of what would wait on a GPU: reads of tensor values by the host,
aten._local_scalar_dense (what .item(), float(t) and bool(t) call) and Tensor.tolist (which reads a CPU tensor
without an aten op). Only this thread counts: DataLoader workers are other processes.
"""

import contextlib
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """The CPU count: entered, counts the reads of tensor values by the host in `count`."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self._tolist = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._tolist = tolist = torch.Tensor.tolist

        def counted_tolist(tensor):
            self.count += 1
            return tolist(tensor)

        torch.Tensor.tolist = counted_tolist
        return super().__enter__()

    def __exit__(self, *exc_info):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc_info)


class CudaSyncs:
    """The GPU count: `count` is the number of synchronising CUDA calls so far, as set_sync_debug_mode reports them."""

    def __init__(self, records):
        self.records = records

    @property
    def count(self):
        return sum("synchroniz" in str(record.message) for record in self.records)


@contextlib.contextmanager
def count_host_syncs(device):
    """Counts the host syncs made by this thread while entered, on `device` (see the module's docstring)."""
    if torch.device(device).type != "cuda":
        with HostReads() as reads:
            yield reads
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield CudaSyncs(records)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
