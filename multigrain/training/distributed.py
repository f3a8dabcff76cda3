"""The process group as seen from one process: rank, world size, sums and gathers over ranks.

Every function also works without a process group, as the single process of a world of size 1.
"""

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def print_main(*args, **kwargs):
    if is_main_process():
        print(*args, **kwargs, flush=True)


def collective_device() -> torch.device:
    """Where the tensors of a collective must be: NCCL only reduces CUDA tensors."""
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def end_process_group():
    """Ends the process group, if any, before the process exits: left to the interpreter's exit, gloo's threads may
    abort it ("terminate called without an active exception") after a run that succeeded."""
    global _host_group
    if is_initialized():
        dist.destroy_process_group()
        _host_group = (None, None)


_host_group = (None, None)  # (the default group, its gloo twin) of host_group()


def host_group():
    """A group of all the processes whose collectives take CPU tensors, so that they never wait for a device: the
    default group under gloo, else a gloo group over the same processes, made on the first call (every process
    makes it at the same point of the run)."""
    global _host_group
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    world, group = _host_group
    if world is not dist.group.WORLD:
        group = dist.new_group(backend="gloo")
        _host_group = (dist.group.WORLD, group)
    return group


def reduce_sum(values):
    """Sums a list of numbers (or 0-dim tensors) over all ranks; returns Python floats."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if is_initialized():
        t = t.to(collective_device())
        dist.all_reduce(t)
    return t.tolist()


def _all_gather(x):
    """Concatenation over ranks of tensors whose first dimension may differ; also returns the sizes."""
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(get_world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    chunks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded)
    return torch.cat([chunk[:n] for chunk, n in zip(chunks, sizes)]), sizes


class _GatherWithGradient(torch.autograd.Function):
    """all_gather along dim 0; the gradient returns to each rank's own slice.

    Every rank computes the same loss on the gathered batch, and DDP then averages the parameter
    gradients over ranks, so the slice's gradient is scaled by the world size: the averaged result is
    the gradient of one process on the concatenated batch.
    """

    @staticmethod
    def forward(ctx, x):
        gathered, sizes = _all_gather(x.detach())
        rank = dist.get_rank()
        ctx.offset, ctx.size, ctx.world_size = sum(sizes[:rank]), sizes[rank], len(sizes)
        return gathered

    @staticmethod
    def backward(ctx, grad):
        return grad.narrow(0, ctx.offset, ctx.size) * ctx.world_size


def gather_with_gradient(x: torch.Tensor) -> torch.Tensor:
    if get_world_size() == 1:
        return x
    return _GatherWithGradient.apply(x)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    if get_world_size() == 1:
        return x
    return _all_gather(x)[0]


def all_gather_object(obj) -> list:
    """Every rank's `obj` (picklable), in rank order."""
    if get_world_size() == 1:
        return [obj]
    objects = [None] * get_world_size()
    dist.all_gather_object(objects, obj)
    return objects
