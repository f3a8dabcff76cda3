import pytest
import torch
from torch.nn import functional as F

from multigrain.distance_weighted_miner import DistanceWeightedMiner
from multigrain.joint_loss import MultiGrainLoss
from multigrain.margin_loss import MarginLoss
from tests.multigrain.test_margin_loss import batch


class ExplodingMiner(torch.nn.Module):
    def forward(self, *args):
        raise AssertionError("the miner must not run when λ = 1")


def test_lambda_one_never_samples():
    embeddings, ids = batch()
    logits = torch.randn(len(ids), 4, requires_grad=True)
    labels = torch.randint(0, 4, (len(ids),))
    criterion = MultiGrainLoss(1.0, ExplodingMiner(), MarginLoss())
    losses = criterion(logits, embeddings, labels, ids)
    assert "margin_loss" not in losses
    torch.testing.assert_close(losses["loss"], F.cross_entropy(logits, labels))


def test_joint_loss_combines_the_two_terms():
    embeddings, ids = batch(seed=5)
    logits = torch.randn(len(ids), 4)
    labels = torch.randint(0, 4, (len(ids),))
    miner = DistanceWeightedMiner(mode="exact", generator=torch.Generator().manual_seed(3))
    losses = MultiGrainLoss(0.3, miner, MarginLoss())(logits, embeddings, labels, ids)
    assert losses["margin_loss"].item() > 0
    expected = 0.3 * F.cross_entropy(logits, labels) + 0.7 * losses["margin_loss"]
    torch.testing.assert_close(losses["loss"], expected)


def test_joint_loss_runs_in_float32_under_autocast():
    embeddings, ids = batch(seed=6)
    logits = torch.randn(len(ids), 4)
    labels = torch.randint(0, 4, (len(ids),))
    miner = DistanceWeightedMiner(generator=torch.Generator().manual_seed(3))
    criterion = MultiGrainLoss(0.5, miner, MarginLoss())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = criterion(logits.bfloat16(), embeddings.bfloat16(), labels, ids)
    assert all(v.dtype == torch.float32 for v in losses.values())


def test_lambda_out_of_range():
    with pytest.raises(ValueError, match="1.5"):
        MultiGrainLoss(1.5, ExplodingMiner(), MarginLoss())


def test_lambda_zero_reads_no_labels():
    embeddings, ids = batch(seed=7)
    logits = torch.randn(len(ids), 0)  # a model without classes
    labels = torch.full((len(ids),), -1)  # images without a class
    miner = DistanceWeightedMiner(mode="exact", generator=torch.Generator().manual_seed(3))
    losses = MultiGrainLoss(0.0, miner, MarginLoss())(logits, embeddings, labels, ids)
    assert set(losses) == {"loss", "margin_loss"} and losses["loss"].item() > 0
    assert torch.equal(losses["loss"], losses["margin_loss"])
