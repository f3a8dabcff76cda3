import torch
from torch import nn

from .training import distributed


class MultiGrainLoss(nn.Module):
    """L = λ·CE(logits, labels) + (1 − λ)·margin loss on distance-weighted triplets.

    The triplets are mined from the GLOBAL batch: under DDP the embeddings and instance ids of every
    rank are gathered first. With λ = 1 neither the miner nor the margin loss runs; with λ = 0 the cross-entropy
    does not (the labels are not read: images without a class have none).
    Returns a dict with `loss`, `classif_loss` when λ > 0 and `margin_loss` when λ < 1.
    """

    def __init__(self, classif_weight, miner, margin_loss, label_smoothing=0.0):
        super().__init__()
        if not 0.0 <= classif_weight <= 1.0:
            raise ValueError(f"classification weight λ must be in [0, 1], got {classif_weight}")
        self.classif_weight = classif_weight
        self.miner = miner
        self.margin_loss = margin_loss
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits, embeddings, labels, instance_ids):
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self._losses(logits.float(), embeddings.float(), labels, instance_ids)

    def _losses(self, logits, embeddings, labels, instance_ids):
        losses = {}
        if self.classif_weight > 0.0:
            losses["classif_loss"] = self.cross_entropy(logits, labels)
        if self.classif_weight == 1.0:
            losses["loss"] = losses["classif_loss"]
            return losses
        embeddings = distributed.gather_with_gradient(embeddings)
        instance_ids = distributed.gather(instance_ids)
        triplet_mask, negatives = self.miner(embeddings, instance_ids)
        margin_loss = self.margin_loss(embeddings, triplet_mask, negatives)
        losses["margin_loss"] = margin_loss
        losses["loss"] = margin_loss
        if self.classif_weight > 0.0:
            losses["loss"] = self.classif_weight * losses["classif_loss"] + (1.0 - self.classif_weight) * margin_loss
        return losses
