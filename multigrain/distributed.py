import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherWithGradient(torch.autograd.Function):
    """all_gather along dim 0; the gradient returns to each rank's own slice.

    Every rank computes the same loss on the gathered batch, and DDP then averages the parameter
    gradients over ranks, so the slice's gradient is scaled by the world size: the averaged result is
    the gradient of one process on the concatenated batch.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.rank, ctx.world_size, ctx.size = dist.get_rank(), dist.get_world_size(), x.shape[0]
        chunks = [torch.empty_like(x) for _ in range(ctx.world_size)]
        dist.all_gather(chunks, x.contiguous())
        return torch.cat(chunks)

    @staticmethod
    def backward(ctx, grad):
        return grad.narrow(0, ctx.rank * ctx.size, ctx.size) * ctx.world_size


def gather_with_gradient(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    return _GatherWithGradient.apply(x)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    if world_size() == 1:
        return x
    chunks = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(chunks, x.contiguous())
    return torch.cat(chunks)
