import torch
from torch import nn
from torch.nn import functional as F

from .distances import distances


class MarginLoss(nn.Module):
    """Margin loss of Wu et al. with a learnable boundary beta.

    For each triplet (a, p, n): relu(D(a, p) - beta + margin) + relu(beta - D(a, n) + margin), with
    D(u, v) = sqrt(|u - v|^2 + 1e-8), summed and divided by the number of active (non-zero) terms.
    Triplets come as B x B tensors from `DistanceWeightedMiner`: row i, column j is the triplet
    (i, j, negatives[i, j]) wherever triplet_mask[i, j].
    """

    def __init__(self, beta_init: float = 1.2, margin: float = 0.2):
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(float(beta_init)))
        self.margin = margin

    def forward(self, embeddings, triplet_mask, negatives):
        distance = distances(embeddings, eps=1e-8)
        positive_terms = F.relu(distance - self.beta + self.margin)
        negative_terms = F.relu(self.beta - distance.gather(1, negatives) + self.margin)
        positive_terms = positive_terms.where(triplet_mask, 0.0)
        negative_terms = negative_terms.where(triplet_mask, 0.0)
        # Counted as integers: bool + bool would be a logical or.
        num_active = (positive_terms > 0).sum() + (negative_terms > 0).sum()
        return (positive_terms.sum() + negative_terms.sum()) / num_active.clamp(min=1)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
