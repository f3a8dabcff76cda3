"""Triplets mined from a batch by distance-weighted negative sampling (Wu et al. 2017, "Sampling matters
in deep embedding learning").

The miner returns fixed-shape B x B tensors instead of lists of triplets, so that nothing in a training
step waits for the device: `triplet_mask[i, j]` marks the ordered positive pairs (same instance id,
j != i) whose anchor i has a negative to draw, and `negatives[i, j]` is the negative drawn for that
pair from row i of the negative distribution.
"""

import torch
from torch import nn

from .distances import distances, squared_distances

NEGATIVE_SAMPLING_MODES = ("reference", "exact")


def reference_negative_weights(embeddings, ids, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """The negative distribution of the published MultiGrain code, computed as it computes it.

    float32, the diagonal distance set to 1, the GLOBAL max of all log-weights subtracted before exp
    (so far candidates underflow to 0), and a row whose weights are all 0 (or NaN) falling back to
    uniform over every item of another instance, ignoring the `nonzero_loss_cutoff` window.
    Returns a B x B probability matrix; a row with no item of another instance is all NaN.
    """
    x = embeddings.detach()
    n, dim = x.shape
    # As published, no clamp before the square root: a negative rounding error gives NaN weights, and the
    # rows left without weight fall back to uniform below.
    distance = torch.sqrt(squared_distances(x) + torch.eye(n, dtype=torch.float32, device=x.device))
    distance = distance.clamp(min=cutoff)
    log_weights = (2.0 - dim) * distance.log() - ((dim - 3) / 2) * torch.log(1.0 - 0.25 * distance**2)
    weights = torch.exp(log_weights - log_weights.max())
    unequal = ids[:, None] != ids[None, :]
    weights = weights * (unequal & (distance < nonzero_loss_cutoff)).float()
    weights = weights / weights.sum(dim=1, keepdim=True)
    uniform = unequal.float() / unequal.float().sum(dim=1, keepdim=True)
    return torch.where(weights.sum(dim=1, keepdim=True).isnan(), uniform, weights)


def exact_negative_log_weights(embeddings, ids, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """Log of the distribution written in the paper, normalised per row over the valid candidates.

    q(D) ∝ D^(2-d) (1 - D^2/4)^(-(d-3)/2) with D clamped below at `cutoff`, over items of another
    instance with D < `nonzero_loss_cutoff`; the distances come from a float32 matrix product, the
    weights are computed in float64 log space so nothing underflows.
    A row with no valid candidate is uniform over the items of another instance; a row without any
    item of another instance is all -inf.
    """
    dim = embeddings.shape[1]
    distance = distances(embeddings.detach()).clamp(min=cutoff).double()
    one_minus = (1.0 - 0.25 * distance**2).clamp(min=1e-12)
    log_weights = (2.0 - dim) * distance.log() - ((dim - 3) / 2) * one_minus.log()
    unequal = ids[:, None] != ids[None, :]
    valid = unequal & (distance < nonzero_loss_cutoff)
    has_valid = valid.any(dim=1, keepdim=True)
    uniform_fallback = torch.zeros_like(log_weights).masked_fill(~unequal, -torch.inf)
    log_weights = torch.where(has_valid, log_weights.masked_fill(~valid, -torch.inf), uniform_fallback)
    log_norm = log_weights.logsumexp(dim=1, keepdim=True)
    return log_weights - log_norm.masked_fill(log_norm.isinf(), 0.0)


def draw_negatives(log_probs, positive_mask, generator=None):
    """One negative per ordered positive pair, drawn from row i of `log_probs`.

    Anchor i's negatives are drawn without replacement when it has at least as many candidates as
    positives (as the published code does), with replacement otherwise. Returns (negatives,
    triplet_mask): negatives[i, j] is the negative of pair (i, j) and triplet_mask drops anchors that
    have no candidate at all.
    """
    n = log_probs.shape[0]
    candidates = torch.isfinite(log_probs)
    num_candidates = candidates.sum(dim=1, keepdim=True)
    num_positives = positive_mask.sum(dim=1, keepdim=True)
    has_candidate = num_candidates > 0

    # Gumbel-top-k: sorting log p + Gumbel noise gives a draw without replacement, in order.
    uniform = torch.rand(log_probs.shape, generator=generator, device=log_probs.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-300)))
    order = (log_probs.double() + gumbel).argsort(dim=1, descending=True)
    rank_among_positives = (positive_mask.cumsum(dim=1) - 1).clamp(min=0)
    without_replacement = order.gather(1, rank_among_positives)

    probs = torch.where(has_candidate, log_probs.double().exp(), 1.0 / n)
    with_replacement = torch.multinomial(probs, n, replacement=True, generator=generator)

    negatives = torch.where(num_positives <= num_candidates, without_replacement, with_replacement)
    return negatives, positive_mask & has_candidate


class DistanceWeightedMiner(nn.Module):
    """Mines (anchor, positive, negative) triplets from L2-normalised embeddings and instance ids.

    Instance ids are dataset indices (copies of one image under repeated augmentation), never class
    labels. `mode="reference"` reproduces the published computation (see
    `reference_negative_weights`), `mode="exact"` the distribution of the paper.
    """

    def __init__(self, cutoff=0.5, nonzero_loss_cutoff=1.4, mode="reference", generator=None):
        super().__init__()
        if mode not in NEGATIVE_SAMPLING_MODES:
            raise ValueError(f"negative sampling mode {mode!r} is not one of {NEGATIVE_SAMPLING_MODES}")
        self.cutoff = cutoff
        self.nonzero_loss_cutoff = nonzero_loss_cutoff
        self.mode = mode
        self.generator = generator

    def negative_log_probs(self, embeddings, ids):
        if self.mode == "reference":
            probs = reference_negative_weights(embeddings, ids, self.cutoff, self.nonzero_loss_cutoff)
            return probs.nan_to_num(nan=0.0).log()
        return exact_negative_log_weights(embeddings, ids, self.cutoff, self.nonzero_loss_cutoff)

    @torch.no_grad()
    def forward(self, embeddings, ids):
        """Returns (triplet_mask, negatives), both B x B; see the module docstring."""
        same = ids[:, None] == ids[None, :]
        positive_mask = same & ~torch.eye(len(ids), dtype=torch.bool, device=ids.device)
        negatives, triplet_mask = draw_negatives(
            self.negative_log_probs(embeddings, ids), positive_mask, self.generator
        )
        return triplet_mask, negatives

    def extra_repr(self) -> str:
        return f"mode={self.mode}, cutoff={self.cutoff}, nonzero_loss_cutoff={self.nonzero_loss_cutoff}"
