import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from multigrain.distance_weighted_miner import (
    DistanceWeightedMiner,
    exact_negative_log_weights,
    reference_negative_weights,
)


def clustered_batch(num_instances=6, reps=3, dim=16, spread=0.35, seed=0):
    """Unit embeddings where the copies of one instance are close to each other."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_instances, dim, generator=g)
    x = centres.repeat_interleave(reps, 0) + spread * torch.randn(num_instances * reps, dim, generator=g)
    return F.normalize(x, dim=1), torch.arange(num_instances).repeat_interleave(reps)


@pytest.mark.parametrize("mode", ["reference", "exact"])
def test_positives_share_the_instance_and_negatives_do_not(mode):
    embeddings, ids = clustered_batch()
    miner = DistanceWeightedMiner(mode=mode, generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        mask, negatives = miner(embeddings, ids)
        anchors, positives = mask.nonzero(as_tuple=True)
        expected = (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool)
        assert torch.equal(mask, expected)  # every ordered positive pair, nothing else
        assert len(anchors) == 6 * 3 * 2
        assert (ids[anchors] == ids[positives]).all() and (anchors != positives).all()
        assert (ids[negatives[anchors, positives]] != ids[anchors]).all()


@pytest.mark.parametrize("mode", ["reference", "exact"])
def test_draws_follow_the_weights(mode):
    # reps = 2: every anchor has one positive, so each draw is one sample from its row.
    embeddings, ids = clustered_batch(num_instances=8, reps=2, dim=6, spread=0.6, seed=3)
    miner = DistanceWeightedMiner(mode=mode, generator=torch.Generator().manual_seed(0))
    probs = miner.negative_log_probs(embeddings, ids).exp()
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(ids), dtype=probs.dtype))
    draws = 4000
    counts = torch.zeros(len(ids), len(ids))
    for _ in range(draws):
        mask, negatives = miner(embeddings, ids)
        anchors, positives = mask.nonzero(as_tuple=True)
        counts[anchors, negatives[anchors, positives]] += 1
    empirical = counts / draws
    # binomial standard error <= 0.008 for 4000 draws: 5 sigma
    assert (empirical - probs.float()).abs().max() < 0.04
    assert (probs > 0.05).sum() > len(ids)  # the rows really are spread over several candidates


def test_negatives_are_drawn_without_replacement_when_possible():
    embeddings, ids = clustered_batch(num_instances=5, reps=3, dim=6, spread=0.6, seed=4)
    miner = DistanceWeightedMiner(mode="exact", generator=torch.Generator().manual_seed(0))
    log_probs = miner.negative_log_probs(embeddings, ids)
    for _ in range(200):
        mask, negatives = miner(embeddings, ids)
        for i in range(len(ids)):
            drawn = negatives[i, mask[i]]
            if torch.isfinite(log_probs[i]).sum() >= len(drawn):
                assert len(set(drawn.tolist())) == len(drawn)


def transcription_of_published_weights(embeddings, ids, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """The published computation, one step at a time in float32 numpy, loops over rows."""
    x = embeddings.numpy().astype(np.float32)
    n, dim = x.shape
    square = (x**2).sum(axis=1, keepdims=True)
    distance_square = square + square.T - 2.0 * x @ x.T
    distance = np.sqrt(distance_square + np.eye(n, dtype=np.float32))
    distance = np.maximum(distance, np.float32(cutoff))
    log_weights = (2.0 - dim) * np.log(distance) - ((dim - 3) / 2) * np.log(1.0 - 0.25 * distance**2)
    log_weights = log_weights.astype(np.float32)
    weights = np.exp(log_weights - log_weights.max())
    labels = ids.numpy()
    unequal = labels[:, None] != labels[None, :]
    weights = weights * (unequal & (distance < nonzero_loss_cutoff)).astype(np.float32)
    probs = np.zeros((n, n))
    for i in range(n):
        row = weights[i] / weights[i].sum() if weights[i].sum() > 0 else np.full(n, np.nan)
        if np.isnan(row.sum()):
            row = unequal[i].astype(float) / unequal[i].sum()
        probs[i] = row
    return probs


def mixed_batch_2048(seed=0):
    """d = 2048: instances 0 and 1 lie about 0.5 apart, the others about 0.9-1.0 from everything. Rows of
    instances 0 and 1 keep weight after the global max; the other rows underflow completely, also
    those of instance 5, whose copies are far apart and 0.8 from a candidate, so that a per-row max
    would have kept weight."""
    g = torch.Generator().manual_seed(seed)
    dim = 2048

    def nudge(v, amount):
        return F.normalize(v + amount * F.normalize(torch.randn(dim, generator=g), dim=0), dim=0)

    shared = F.normalize(torch.randn(dim, generator=g), dim=0)
    centres = [nudge(shared, 0.8) for _ in range(4)]
    centres.insert(1, nudge(centres[0], 0.55))
    copies = [nudge(c, 0.03) for c in centres for _ in range(2)]
    copies += [nudge(centres[2], 1.07), nudge(centres[3], 1.07)]  # about 0.8 from instance 2 and 3
    return torch.stack(copies), torch.arange(6).repeat_interleave(2)


@pytest.mark.parametrize("case", ["d16", "d128", "d2048-mixed"])
def test_reference_equals_step_by_step_transcription(case):
    if case == "d2048-mixed":
        embeddings, ids = mixed_batch_2048()
    else:
        dim = int(case[1:])
        embeddings, ids = clustered_batch(num_instances=6, reps=3, dim=dim, spread=0.35, seed=dim)
    ours = reference_negative_weights(embeddings, ids).double().numpy()
    theirs = transcription_of_published_weights(embeddings, ids)
    # float32 log-weights of magnitude ~1400 at d = 2048: the matrix products' rounding (numpy vs
    # torch) moves the probabilities by ~1e-3 there.
    atol = 1e-6
    if case == "d2048-mixed":
        atol = 2e-3
        uniform_rows = [np.allclose(row[row > 0], row[row > 0][0]) and (row > 0).sum() == 10 for row in theirs]
        assert any(uniform_rows) and not all(uniform_rows)  # both paths of the published code are exercised
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=atol)
    miner = DistanceWeightedMiner(mode="reference")
    np.testing.assert_allclose(miner.negative_log_probs(embeddings, ids).exp().numpy(), theirs, rtol=1e-4, atol=atol)


def unit(dim, *components):
    v = torch.zeros(dim)
    for axis, value in components:
        v[axis] = value
    return v


def at_distance(dim, axis, distance):
    """A unit vector at the given distance from e0, in the plane of e0 and e_axis."""
    theta = 2 * math.asin(distance / 2)
    return unit(dim, (0, math.cos(theta)), (axis, math.sin(theta)))


def test_reference_and_exact_differ_where_the_published_code_underflows():
    dim = 2048
    rows = [
        unit(dim, (0, 1.0)),  # 0: the anchor
        at_distance(dim, 1, 0.3),  # 1: its copy (same instance)
        at_distance(dim, 2, 1.0),  # 2: nearest valid negative
        at_distance(dim, 3, 1.3),  # 3: farther valid negative
        at_distance(dim, 4, 1.45),  # 4: outside the 1.4 window
        unit(dim, (10, 1.0)),  # 5, 6: another instance with a close pair of copies,
        unit(dim, (10, math.cos(0.2)), (11, math.sin(0.2))),  # which sets the global max
    ]
    embeddings = torch.stack(rows)
    ids = torch.tensor([0, 0, 1, 2, 3, 4, 4])
    reference = reference_negative_weights(embeddings, ids)[0]
    exact = exact_negative_log_weights(embeddings, ids)[0].exp()
    # The published code: every candidate of row 0 underflows to 0 after the global max, so the row
    # falls back to uniform over all 5 other-instance items, the one beyond 1.4 included.
    torch.testing.assert_close(reference, torch.tensor([0, 0, 0.2, 0.2, 0.2, 0.2, 0.2]))
    # The paper's distribution at d = 2048: all but nothing on the nearest valid negative.
    assert exact[2] > 1 - 1e-12
    assert exact[4] == 0 and exact[5] == 0 and exact[6] == 0 and exact[1] == 0


@pytest.mark.parametrize("mode", ["reference", "exact"])
def test_degenerate_batches_give_no_nan(mode):
    from multigrain.margin_loss import MarginLoss

    dim = 32
    e = F.normalize(torch.randn(4, dim), dim=1)
    cases = {
        "one instance": (e, torch.zeros(4, dtype=torch.long)),
        "exact duplicates": (torch.cat([e[:2], e[:2]]), torch.tensor([0, 1, 0, 1])),
        "duplicates across instances": (e[:1].repeat(4, 1), torch.tensor([0, 0, 1, 1])),
        "antipodal (distance 2)": (torch.stack([e[0], e[0], -e[0], -e[0]]), torch.tensor([0, 0, 1, 1])),
        "no positives": (e, torch.arange(4)),
    }
    miner = DistanceWeightedMiner(mode=mode, generator=torch.Generator().manual_seed(0))
    for name, (embeddings, ids) in cases.items():
        embeddings = embeddings.clone().requires_grad_()
        mask, negatives = miner(embeddings, ids)
        if name in ("one instance", "no positives"):
            assert not mask.any(), name
        else:
            anchors, positives = mask.nonzero(as_tuple=True)
            assert len(anchors) > 0, name
            assert (ids[negatives[anchors, positives]] != ids[anchors]).all(), name
        margin = MarginLoss()
        loss = margin(embeddings, mask, negatives)
        loss.backward()
        assert torch.isfinite(loss), name
        assert torch.isfinite(embeddings.grad).all() and torch.isfinite(margin.beta.grad), name
        if not mask.any():
            assert loss.item() == 0.0, name


def test_unknown_mode():
    with pytest.raises(ValueError, match="bogus"):
        DistanceWeightedMiner(mode="bogus")
