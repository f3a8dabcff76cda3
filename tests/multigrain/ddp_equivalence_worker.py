"""Run under torchrun (gloo): R ranks x b images against one process on the concatenated batch.

Usage: torchrun --nproc_per_node=R -m tests.multigrain.ddp_equivalence_worker OUTPUT.pt
Each rank takes its chunk of a fixed global batch, computes the MultiGrain loss with triplets from the
gathered global batch, back-propagates through DDP and takes a few SGD steps. Rank 0 writes the first
step's loss (averaged over ranks), margin loss and gradients and every rank's beta after the steps to OUTPUT.pt.
"""

import sys

import torch
import torch.distributed as dist
from torch import nn

from multigrain.distance_weighted_miner import DistanceWeightedMiner
from multigrain.joint_loss import MultiGrainLoss
from multigrain.margin_loss import MarginLoss
from multigrain.model import l2n

GLOBAL_BATCH, REPS, IN_DIM, EMBED_DIM, CLASSES = 12, 3, 10, 6, 4


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(IN_DIM, EMBED_DIM)
        self.head = nn.Linear(EMBED_DIM, CLASSES)

    def forward(self, x):
        g = torch.relu(self.body(x)) + 0.1
        return self.head(g), l2n(g)


def global_batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(GLOBAL_BATCH // REPS).repeat_interleave(REPS)
    base = torch.randn(GLOBAL_BATCH // REPS, IN_DIM, generator=g)
    images = base[ids] + 0.3 * torch.randn(GLOBAL_BATCH, IN_DIM, generator=g)
    labels = ids % CLASSES
    return images, labels, ids


def build():
    torch.manual_seed(0)
    model = TinyNet()
    miner = DistanceWeightedMiner(mode="exact", generator=torch.Generator().manual_seed(0))
    criterion = MultiGrainLoss(0.5, miner, MarginLoss(beta_init=1.2))
    return model, criterion


def gradients(model, criterion):
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    grads["beta"] = criterion.margin_loss.beta.grad.clone()
    return grads


def main(output):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, criterion = build()
    ddp_model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(list(model.parameters()) + list(criterion.parameters()), lr=0.5)
    images, labels, ids = global_batch()
    chunk = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    result = {}
    for step in range(3):
        logits, embeddings = ddp_model(images[chunk])
        losses = criterion(logits, embeddings, labels[chunk], ids[chunk])
        optimizer.zero_grad()
        losses["loss"].backward()
        beta = criterion.margin_loss.beta
        dist.all_reduce(beta.grad)
        beta.grad /= world
        if step == 0:
            # The cross-entropy is each rank's own mean (DDP averages it); the margin loss is global.
            mean_loss = losses["loss"].detach().clone()
            dist.all_reduce(mean_loss)
            result = {
                "loss": mean_loss / world,
                "margin_loss": losses["margin_loss"].detach(),
                "grads": gradients(model, criterion),
            }
        optimizer.step()
    betas = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(betas, criterion.margin_loss.beta.detach().clone())
    result["betas"] = torch.stack(betas)
    if rank == 0:
        torch.save(result, output)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
