"""The GPU computations against the same ones on the CPU. Marked `cuda`: skipped without a CUDA device
(tests/conftest.py), run alone by `pytest -m cuda`."""

import math

import pytest
import torch
from torch.nn import functional as F

from multigrain.distance_weighted_miner import DistanceWeightedMiner
from multigrain.gem import GeM
from multigrain.inference.extraction import extract_descriptors
from multigrain.joint_loss import MultiGrainLoss
from multigrain.margin_loss import MarginLoss
from multigrain.model import build_model

pytestmark = pytest.mark.cuda


def clustered_batch(num_instances=8, reps=3, dim=128, spread=0.6, seed=0):
    """Unit embeddings where the copies of one instance are close to each other, and their ids."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_instances, dim, generator=g)
    x = centres.repeat_interleave(reps, 0) + spread * torch.randn(num_instances * reps, dim, generator=g)
    return F.normalize(x, dim=1), torch.arange(num_instances).repeat_interleave(reps)


@pytest.mark.parametrize("p", [1.0, 3.0, math.inf])
def test_gem_under_float16_autocast_matches_the_cpu(p):
    x = (torch.rand(4, 64, 7, 7, generator=torch.Generator().manual_seed(0)) * 60).half()  # 60^3 overflows float16
    with torch.autocast("cuda", dtype=torch.float16):
        out = GeM(p).cuda()(x.cuda())
    assert out.dtype == torch.float32 and out.isfinite().all()
    torch.testing.assert_close(out.cpu(), GeM(p)(x.float()), rtol=1e-5, atol=1e-4)


def test_learnable_gem_exponent_gradient_under_float16_autocast_matches_the_cpu():
    x = (torch.rand(4, 64, 7, 7, generator=torch.Generator().manual_seed(1)) * 3 + 0.1).half()
    expected = GeM(3.0)
    expected.make_p_learnable()
    expected(x.float()).sum().backward()
    pool = GeM(3.0).cuda()
    pool.make_p_learnable()
    with torch.autocast("cuda", dtype=torch.float16):
        out = pool(x.cuda())
    out.sum().backward()
    assert pool.p.grad.is_cuda
    torch.testing.assert_close(pool.p.grad.cpu(), expected.p.grad, rtol=1e-4, atol=1e-4)


def test_margin_loss_value_and_gradients_on_cuda_match_the_cpu():
    embeddings, ids = clustered_batch()
    mask, negatives = DistanceWeightedMiner(mode="exact", generator=torch.Generator().manual_seed(0))(embeddings, ids)
    results = []
    for device in ("cpu", "cuda"):
        x = embeddings.to(device).requires_grad_()
        margin_loss = MarginLoss().to(device)
        loss = margin_loss(x, mask.to(device), negatives.to(device))
        loss.backward()
        results.append([loss.detach().cpu(), x.grad.cpu(), margin_loss.beta.grad.cpu()])
    assert results[0][0] > 0
    for on_cuda, on_cpu in zip(results[1], results[0]):
        torch.testing.assert_close(on_cuda, on_cpu, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["reference", "exact"])
def test_negative_distribution_on_cuda_matches_the_cpu_and_draws_follow_it(mode):
    # reps = 2: every anchor has one positive, so each draw is one sample from its row.
    embeddings, ids = clustered_batch(num_instances=8, reps=2, dim=16, seed=3)
    probs = DistanceWeightedMiner(mode=mode).negative_log_probs(embeddings, ids).exp()
    embeddings, ids = embeddings.cuda(), ids.cuda()
    miner = DistanceWeightedMiner(mode=mode, generator=torch.Generator("cuda").manual_seed(0))
    torch.testing.assert_close(miner.negative_log_probs(embeddings, ids).exp().cpu(), probs, rtol=1e-4, atol=1e-6)

    expected_mask = (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool, device="cuda")
    anchors, positives = expected_mask.nonzero(as_tuple=True)
    ones = torch.ones(len(anchors), device="cuda")
    draws = 4000
    counts = torch.zeros(len(ids), len(ids), device="cuda")
    for _ in range(draws):
        mask, negatives = miner(embeddings, ids)
        assert mask.is_cuda and negatives.is_cuda
        counts.index_put_((anchors, negatives[anchors, positives]), ones, accumulate=True)
    assert torch.equal(mask, expected_mask)
    assert (counts[ids[:, None] == ids[None, :]] == 0).all()  # never a negative of the anchor's own instance
    # binomial standard error <= 0.008 for 4000 draws: 5 sigma
    assert (counts.cpu() / draws - probs.float()).abs().max() < 0.04


@pytest.mark.parametrize("mode", ["reference", "exact"])
def test_sampling_and_margin_loss_never_wait_for_the_device(mode):
    """At the paper's size (B = 510, d = 2048), forward and backward: no host synchronisation at all."""
    embeddings, ids = clustered_batch(num_instances=170, reps=3, dim=2048)
    x, ids = embeddings.cuda().requires_grad_(), ids.cuda()
    miner = DistanceWeightedMiner(mode=mode, generator=torch.Generator("cuda").manual_seed(0))
    margin_loss = MarginLoss().cuda()

    def step():
        margin_loss(x, *miner(x, ids)).backward()

    step()  # the first call loads the kernels and fills the allocator's cache
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.grad.isfinite().all() and x.grad.abs().sum() > 0


def test_joint_loss_under_float16_autocast_on_cuda_is_float32():
    embeddings, ids = clustered_batch(seed=2)
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(len(ids), 10, generator=generator).half()
    labels = torch.randint(10, (len(ids),), generator=generator)
    miner = DistanceWeightedMiner(generator=torch.Generator("cuda").manual_seed(0))
    criterion = MultiGrainLoss(0.5, miner, MarginLoss()).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        losses = criterion(logits.cuda(), embeddings.half().cuda(), labels.cuda(), ids.cuda())
    assert set(losses) == {"loss", "classif_loss", "margin_loss"}
    assert all(value.dtype == torch.float32 and value.isfinite() for value in losses.values())
    torch.testing.assert_close(losses["classif_loss"].cpu(), F.cross_entropy(logits.float(), labels))


@pytest.mark.parametrize("channels_last", [False, True])
def test_float16_extraction_on_cuda_matches_float32_on_the_cpu(channels_last):
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10).eval()
    generator = torch.Generator().manual_seed(0)
    sizes = [(64, 48), (48, 64), (64, 48), (56, 56), (64, 48)]
    images = [torch.randn(3, height, width, generator=generator) for height, width in sizes]
    expected = extract_descriptors(model, images, "cpu", batch_size=2)
    model.cuda()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    descriptors = extract_descriptors(model, images, "cuda", batch_size=2, amp_dtype=torch.float16)
    assert descriptors.dtype == torch.float32 and descriptors.device.type == "cpu"
    assert (descriptors * expected).sum(dim=1).min() > 0.9999  # cosine similarity of unit vectors
