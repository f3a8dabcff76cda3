import pytest
import torch
from torch.nn import functional as F

from multigrain.distance_weighted_miner import DistanceWeightedMiner
from multigrain.margin_loss import MarginLoss


def brute_force_margin_loss(embeddings, triplets, beta, margin):
    """The formula of the paper, one triplet at a time."""
    terms, active = [], 0
    for a, p, n in triplets:
        d_ap = torch.sqrt(((embeddings[p] - embeddings[a]) ** 2).sum() + 1e-8)
        d_an = torch.sqrt(((embeddings[n] - embeddings[a]) ** 2).sum() + 1e-8)
        pos = torch.clamp(d_ap - beta + margin, min=0)
        neg = torch.clamp(beta - d_an + margin, min=0)
        active += int(pos.item() > 0) + int(neg.item() > 0)
        terms.append(pos + neg)
    return torch.stack(terms).sum() / max(active, 1)


def batch(seed=0, num_instances=5, reps=3, dim=8):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_instances, dim, generator=g)
    x = centres.repeat_interleave(reps, 0) + 0.7 * torch.randn(num_instances * reps, dim, generator=g)
    return F.normalize(x, dim=1), torch.arange(num_instances).repeat_interleave(reps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_value_and_gradients(seed):
    embeddings, ids = batch(seed)
    mask, negatives = DistanceWeightedMiner(mode="exact", generator=torch.Generator().manual_seed(seed))(
        embeddings, ids
    )
    triplets = [(a, p, negatives[a, p].item()) for a, p in mask.nonzero().tolist()]

    ours_embeddings = embeddings.clone().requires_grad_()
    loss_module = MarginLoss(beta_init=1.0, margin=0.2)
    loss = loss_module(ours_embeddings, mask, negatives)
    loss.backward()

    ref_embeddings = embeddings.clone().requires_grad_()
    ref_beta = torch.tensor(1.0, requires_grad=True)
    expected = brute_force_margin_loss(ref_embeddings, triplets, ref_beta, 0.2)
    expected.backward()

    assert loss.item() > 0
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_embeddings.grad, ref_embeddings.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_module.beta.grad, ref_beta.grad, rtol=1e-5, atol=1e-6)


def test_normaliser_counts_both_terms_of_a_triplet():
    # One triplet where the positive is too far AND the negative too close: 2 active terms.
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 1] = True
    negatives = torch.full((3, 3), 2)
    loss = MarginLoss(beta_init=1.4, margin=0.2)(embeddings, mask, negatives)
    d = 2**0.5
    pos, neg = d - 1.4 + 0.2, 1.4 - d + 0.2
    assert pos > 0 and neg > 0
    assert loss.item() == pytest.approx((pos + neg) / 2, rel=1e-5)


def test_beta_is_a_learnable_parameter():
    loss = MarginLoss(beta_init=1.2)
    assert [name for name, _ in loss.named_parameters()] == ["beta"]
    assert loss.beta.item() == pytest.approx(1.2)
