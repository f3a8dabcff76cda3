"""Pairwise Euclidean distances of a batch of embeddings, the B x B matrix the losses and the miner read."""

import torch


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """‖xi‖² + ‖xj‖² − 2·xi·xj in float32, from one matrix product.

    Rounding can make an entry slightly negative (the diagonal, or two identical rows): callers decide
    how to handle it.
    """
    x = x.float()
    square = (x * x).sum(dim=1, keepdim=True)
    return square + square.t() - 2.0 * x @ x.t()


def distances(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """sqrt(max(‖xi − xj‖², 0) + eps); eps > 0 keeps the gradient finite at distance 0."""
    return (squared_distances(x).clamp(min=0) + eps).sqrt()
