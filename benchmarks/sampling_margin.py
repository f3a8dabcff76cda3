"""Benchmark 2: distance-weighted sampling + margin loss (forward and backward) at B = 512, d = 2048, the
project's vectorised implementation against a per-anchor loop.

    python -m benchmarks.sampling_margin                  # CPU
    python -m benchmarks.sampling_margin --device cuda

The baseline below is the way the reference implementations mine triplets: the weights are computed on
the device, copied to the host (a device sync), and a Python loop draws each anchor's negatives with
numpy; the margin loss then runs on the lists of (anchor, positive, negative) indices. It lives here,
as the baseline, and not in the library. Target: the vectorised version ≥ 20× faster on the CPU.
"""

import argparse

import numpy as np
import torch
from torch.nn import functional as F

import flags
from benchmarks.timing import benchmark_parser, describe_machine, format_table, median_ratio, time_side_by_side, verdict
from multigrain.distance_weighted_miner import NEGATIVE_SAMPLING_MODES, DistanceWeightedMiner
from multigrain.distances import squared_distances
from multigrain.margin_loss import MarginLoss


def make_embeddings(batch_size, dim, reps, device, seed=0):
    """L2-normalised embeddings of batch_size / reps instances, `reps` noisy copies each, and their ids.

    The copies of an instance are about 0.5 apart and other instances about 1.2, inside the sampling
    window [0.5, 1.4] as in training (independent random directions would all be √2 apart).
    """
    generator = torch.Generator().manual_seed(seed)
    ids = torch.arange(batch_size) // reps
    common = F.normalize(torch.randn(dim, generator=generator), dim=0)
    instances = F.normalize(torch.randn(int(ids[-1]) + 1, dim, generator=generator), dim=1)
    noise = torch.randn(batch_size, dim, generator=generator) / dim**0.5
    embeddings = F.normalize(0.55 * common + 0.8 * instances[ids] + 0.35 * noise, dim=1)
    return embeddings.to(device).requires_grad_(), ids.to(device)


def per_anchor_loop(embeddings, ids, margin_loss, rng, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """Margin loss on triplets mined anchor by anchor on the host: the baseline."""
    x = embeddings.detach()
    n, dim = x.shape
    distance = torch.sqrt(squared_distances(x) + torch.eye(n, device=x.device)).clamp(min=cutoff)
    log_weights = (2.0 - dim) * distance.log() - ((dim - 3) / 2) * torch.log(1.0 - 0.25 * distance**2)
    weights = torch.exp(log_weights - log_weights.max())
    unequal = ids[:, None] != ids[None, :]
    weights = (weights * (unequal & (distance < nonzero_loss_cutoff))).cpu().numpy()
    ids_host = ids.cpu().numpy()

    anchors, positives, negatives = [], [], []
    for i in range(n):
        same = np.flatnonzero(ids_host == ids_host[i])
        row_positives = same[same != i]
        others = ids_host != ids_host[i]
        if len(row_positives) == 0 or not others.any():
            continue
        total = weights[i].sum()
        probs = weights[i] / total if total > 0 else others / others.sum()
        replace = np.count_nonzero(probs) < len(row_positives)
        negatives.extend(rng.choice(n, len(row_positives), replace=replace, p=probs).tolist())
        anchors.extend([i] * len(row_positives))
        positives.extend(row_positives.tolist())

    device = embeddings.device
    anchor, positive, negative = (
        embeddings[torch.tensor(rows, device=device)] for rows in (anchors, positives, negatives)
    )
    positive_distance = torch.sqrt(((anchor - positive) ** 2).sum(dim=1) + 1e-8)
    negative_distance = torch.sqrt(((anchor - negative) ** 2).sum(dim=1) + 1e-8)
    beta = margin_loss.beta
    positive_terms = F.relu(positive_distance - beta + margin_loss.margin)
    negative_terms = F.relu(beta - negative_distance + margin_loss.margin)
    num_active = (positive_terms > 0).sum() + (negative_terms > 0).sum()
    return (positive_terms.sum() + negative_terms.sum()) / num_active.clamp(min=1)


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < args.reps:
        raise ValueError(f"need 2 <= --reps <= --batch-size, got --reps {args.reps} and --batch-size {args.batch_size}")
    device = torch.device(args.device)
    embeddings, ids = make_embeddings(args.batch_size, args.dim, args.reps, device)
    margin_loss = MarginLoss().to(device)
    miner = DistanceWeightedMiner(mode=args.negative_sampling)
    rng = np.random.default_rng(0)

    def backward(loss):
        embeddings.grad = None
        margin_loss.beta.grad = None
        loss.backward()

    def vectorised():
        backward(margin_loss(embeddings, *miner(embeddings, ids)))

    def sampling_only():
        miner(embeddings, ids)

    triplets = miner(embeddings, ids)

    def margin_only():
        backward(margin_loss(embeddings, *triplets))

    def loop():
        backward(per_anchor_loop(embeddings, ids, margin_loss, rng))

    def gram_matrix():
        embeddings.detach() @ embeddings.detach().t()

    candidates = {"vectorised": vectorised, "per-anchor loop": loop}
    if args.breakdown:
        candidates.update(
            {
                "  vectorised sampling only": sampling_only,
                "  vectorised margin loss only": margin_only,
                "  B x B Gram matrix alone": gram_matrix,
            }
        )
    times = time_side_by_side(candidates, args.rounds, device=device)
    ratio = median_ratio(times["per-anchor loop"], times["vectorised"])
    rows = [[name, f"{1000 * np.median(values):.2f}", "", "", ""] for name, values in times.items()]
    rows[0][2:] = [f"{ratio:.2f}", f"≥ {args.target:g}", verdict(ratio, args.target, False)]
    print(
        f"Sampling + margin loss, forward and backward: B={args.batch_size}, d={args.dim}, reps={args.reps}, "
        f"{args.negative_sampling} sampling, median of {args.rounds} rounds, {describe_machine(device)}"
    )
    print(format_table(["implementation", "ms/call (median)", "speed-up over the loop", "target", "status"], rows))
    if args.breakdown:
        bound = median_ratio(times["per-anchor loop"], times["  B x B Gram matrix alone"])
        print(
            f"Both implementations need the B x B distances (the loop for its weights): no implementation can be "
            f"more than loop / Gram matrix = {bound:.1f}x faster than the loop here."
        )
    return {"ratio": ratio, "times": times}


def get_args_parser(add_help=True):
    parser = benchmark_parser("Vectorised sampling + margin loss against a per-anchor loop", add_help)
    parser.add_argument(
        "-b", "--batch-size", default=512, type=flags.int_in(1), help="B: embeddings in the (global) batch"
    )
    parser.add_argument("--dim", default=2048, type=flags.int_in(1), help="d: embedding dimension")
    parser.add_argument("--reps", default=3, type=flags.int_in(2), help="copies of each instance in the batch")
    parser.add_argument(
        "--negative-sampling", default="reference", choices=NEGATIVE_SAMPLING_MODES, help="negative sampling mode"
    )
    parser.add_argument("--rounds", default=15, type=flags.int_in(1), help="timed calls of each implementation")
    parser.add_argument(
        "--breakdown",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the sampling and the margin loss alone",
    )
    parser.add_argument(
        "--target",
        default=20.0,
        type=flags.float_in(0, low_open=True),
        help="speed-up the vectorised version should reach",
    )
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
