"""PCA whitening of the MultiGrain descriptor, folded into the classifier.

With ĝ = [g; 1] and x = l2n(ĝ), the whitened vector is e = (x − m)·P, with m the mean of x over a
set of images and P = U·diag(λ)^(-1/2) from the PCA of x. The classifier is rewritten to read e:
W' = [W | b]·(Pᵀ)⁻¹ and b' = [W | b]·m give W'e + b' = [W | b]·x = (W g + b) / (‖ĝ‖ + 1e-6), the old
logits times a positive factor of each image, so every top-k prediction is unchanged and a stored e
can be classified without its image. The retrieval descriptor is l2n(e).
"""

import torch
from torch import nn

from .model import classifier_layer, l2n

# With no shrinkage, a covariance eigenvalue below this fraction of the largest one means the
# descriptors do not span every direction (e.g. a channel that is zero on every image): its inverse
# square root would blow rounding noise up into the descriptor.
DEGENERATE_EIGENVALUE_RATIO = 1e-12


def augment_and_normalize(g: torch.Tensor) -> torch.Tensor:
    """x = l2n([g; 1]) for a batch of pooled vectors g (N, d) -> (N, d + 1)."""
    return l2n(torch.cat([g, g.new_ones(g.shape[0], 1)], dim=1))


class Whitening(nn.Module):
    """g -> e = (l2n([g; 1]) − mean)·projection, always computed in float32 (also under autocast).

    Buffers: `mean` (d + 1) and `projection` (d + 1, k), k = d + 1 for whiten.py's whitenings.
    """

    def __init__(self, mean: torch.Tensor, projection: torch.Tensor):
        super().__init__()
        if mean.dim() != 1 or projection.dim() != 2 or projection.shape[0] != mean.shape[0]:
            raise ValueError(
                "whitening needs a mean (D) and a projection (D, k), "
                f"got {tuple(mean.shape)} and {tuple(projection.shape)}"
            )
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("projection", projection.detach().float().clone())

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        # constant device types, as torch.jit.script needs: the recipe runs on CUDA and on the CPU
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return (augment_and_normalize(g.float()) - self.mean) @ self.projection

    def extra_repr(self) -> str:
        return f"{self.projection.shape[0]} -> {self.projection.shape[1]}"


def fit_whitening(pooled: torch.Tensor, shrinkage: float = 0.0):
    """The mean m and projection P of the PCA whitening of x = l2n([g; 1]), in float64.

    `pooled` holds one pooled vector g per row. The covariance C is normalised by n − 1. With
    `shrinkage` α in (0, 1), C is replaced by (1 − α)·C + α·t·I, t = trace(C) / D, before the
    eigendecomposition: the whitened covariance is then diag(λ / ((1 − α)·λ + α·t)) for the
    eigenvalues λ of C instead of the identity, but P is well conditioned whatever the number of
    images. With α = 0 (the paper's whitening), fewer than D + 1 images for D = d + 1 dimensions, or
    descriptors that do not span all D dimensions, are refused.
    """
    if not 0.0 <= shrinkage < 1.0:
        raise ValueError(f"whitening shrinkage must be in [0, 1), got {shrinkage}")
    if pooled.dim() != 2:
        raise ValueError(f"whitening needs one pooled vector per row, got shape {tuple(pooled.shape)}")
    x = augment_and_normalize(pooled.double())
    n, dim = x.shape
    if n < 2:
        raise ValueError(f"whitening needs at least 2 images, got {n}")
    if shrinkage == 0.0 and n < dim + 1:
        raise ValueError(
            f"whitening {dim}-dimensional vectors ([g; 1] for a {dim - 1}-d descriptor) needs at least "
            f"{dim + 1} images (the covariance of n centred vectors has rank n - 1 at most), got {n}: "
            "use more images, or a shrinkage > 0"
        )
    mean = x.mean(dim=0)
    centred = x - mean
    covariance = centred.T @ centred / (n - 1)
    if shrinkage > 0:
        target = covariance.trace() / dim
        identity = torch.eye(dim, dtype=covariance.dtype, device=covariance.device)
        covariance = (1 - shrinkage) * covariance + shrinkage * target * identity
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)  # largest variance first
    if not eigenvalues[-1] > eigenvalues[0] * DEGENERATE_EIGENVALUE_RATIO:
        rank = int((eigenvalues > eigenvalues[0] * DEGENERATE_EIGENVALUE_RATIO).sum())
        raise ValueError(
            f"the {n} whitening descriptors span only about {rank} of {dim} dimensions (e.g. channels that "
            "are zero on every image): a plain whitening would amplify rounding noise; use a shrinkage > 0"
        )
    return mean, eigenvectors / eigenvalues.sqrt()


def covariance_error_bound(shrinkage: float) -> float:
    """The largest deviation from the identity (any entry) accepted for the whitened covariance of the fitting
    vectors. With shrinkage α its eigenvalues λ / ((1 − α)·λ + α·t) lie in [0, 1 / (1 − α)], so no entry deviates
    by more than max(1, α / (1 − α)); without shrinkage it is the identity up to rounding, which the same bound
    leaves room for. More means the fit amplified noise (e.g. images with nearly identical descriptors)."""
    return max(1.0, shrinkage / (1.0 - shrinkage)) + 0.01


def _classifier_matrix(classifier: nn.Linear) -> torch.Tensor:
    """[W | b] in float64."""
    weight = classifier.weight.detach().double()
    bias = classifier.bias.detach().double() if classifier.bias is not None else weight.new_zeros(weight.shape[0])
    return torch.cat([weight, bias[:, None]], dim=1)


def fold_whitening(model, mean: torch.Tensor, projection: torch.Tensor) -> None:
    """Adds the whitening (mean, projection) to an unwhitened MultiGrainNet, in place, and rewrites its
    classifier to read e: W' = [W | b]·(Pᵀ)⁻¹, b' = [W | b]·m, computed in float64."""
    if model.whitening is not None:
        raise ValueError("the model is already whitened: remove_whitening(model) first")
    dim = model.classifier.in_features + 1
    if projection.shape != (dim, dim) or mean.shape != (dim,):
        raise ValueError(
            f"a whitening of {dim - 1}-d pooled vectors needs a ({dim},) mean and a ({dim}, {dim}) projection, "
            f"got {tuple(mean.shape)} and {tuple(projection.shape)}"
        )
    weight_bias = _classifier_matrix(model.classifier)
    projection = projection.double().to(weight_bias.device)
    new_weight = torch.linalg.solve(projection, weight_bias.T).T
    new_bias = weight_bias @ mean.double().to(weight_bias.device)
    classifier = classifier_layer(dim, weight_bias.shape[0]).to(model.classifier.weight.device)
    with torch.no_grad():
        classifier.weight.copy_(new_weight)
        classifier.bias.copy_(new_bias)
    model.classifier = classifier
    model.whitening = Whitening(mean, projection).to(classifier.weight.device)


def remove_whitening(model) -> None:
    """Undoes fold_whitening in place: [W | b] = W'·Pᵀ, computed in float64 (P must be square)."""
    if model.whitening is None:
        return
    projection = model.whitening.projection.double()
    if projection.shape[0] != projection.shape[1]:
        raise ValueError(
            f"cannot remove a whitening with a non-square projection {tuple(projection.shape)}: "
            "the original classifier is not recoverable"
        )
    weight_bias = model.classifier.weight.detach().double() @ projection.T
    classifier = classifier_layer(weight_bias.shape[1] - 1, weight_bias.shape[0]).to(model.classifier.weight.device)
    with torch.no_grad():
        classifier.weight.copy_(weight_bias[:, :-1])
        classifier.bias.copy_(weight_bias[:, -1])
    model.classifier = classifier
    model.whitening = None
