"""The training and evaluation loops, taking what they use as arguments (no command line needed)."""

import itertools

import torch
from torch import nn

import utils
from multigrain.images.photometric import CropWithParams
from multigrain.inference.extraction import (
    NonFiniteOutputError,
    forward_by_size,
    image_name,
    non_finite_message,
    non_finite_rows,
)
from multigrain.training import distributed


def accuracy_counts(logits, targets, topk=(1,)):
    """Number of samples whose target is among the top-k predictions, for each k."""
    with torch.no_grad():
        maxk = min(max(topk), logits.shape[1])
        pred = logits.topk(maxk, dim=1).indices
        correct = pred.eq(targets[:, None])
        return [correct[:, : min(k, maxk)].any(dim=1).sum() for k in topk]


class NonFiniteLossCheck:
    """Watches the loss of every step of epoch `epoch` on `device` without reading it back: `check()` reads it back
    (on every process together: a collective) and raises FloatingPointError naming the first non-finite loss."""

    def __init__(self, epoch, device):
        self.epoch = epoch
        self.iteration = torch.full((), -1.0, dtype=torch.float64, device=device)  # of the first one; -1: none
        self.loss = torch.zeros((), dtype=torch.float64, device=device)

    def watch(self, loss, iteration):
        loss = loss.detach().to(torch.float64)
        first = loss.isfinite().logical_not_().logical_and_(self.iteration < 0)
        self.iteration = torch.where(first, iteration, self.iteration)
        self.loss = torch.where(first, loss, self.loss)

    def check(self):
        found = distributed.gather(torch.stack([self.iteration, self.loss])[None])  # every process's
        non_finite = [(iteration, loss) for iteration, loss in found.tolist() if iteration >= 0]
        if non_finite:
            iteration, loss = min(non_finite)
            raise FloatingPointError(
                f"non-finite loss {loss} at epoch {self.epoch}, iteration {int(iteration)}: stopping"
            )


def train_one_epoch(
    model,
    criterion,
    optimizer,
    data_loader,
    device,
    epoch,
    *,
    scaler=None,
    amp_dtype=None,
    clip_grad_norm=None,
    print_freq=10,
    first_step=0,
    metric_logger=None,
    after_step=None,
    photometric=None,
    memory_format=torch.contiguous_format,
):
    """One pass over `data_loader`, whose batches are (images, targets, instance ids).

    The images are a float batch, or a CropWithParams of uint8 crops whose photometric augmentation
    `photometric` (a PhotometricAugmentation on `device`) applies on `device`, in `memory_format`.
    `criterion` is a MultiGrainLoss; under DDP its β gradient is averaged over the processes, so that β
    stays identical on every rank. `amp_dtype` (e.g. torch.float16) turns autocast on; `scaler` is the
    gradient scaler of float16 training. Returns the epoch's averages over all processes, as
    train_<name>.

    No step reads a device value back, except those that print progress: the meters stay on the device, and
    a non-finite loss raises FloatingPointError, naming the epoch and iteration, at the next progress line,
    mid-epoch checkpoint or at the end of the epoch.

    An epoch resumed in its middle gives the number of its first step and the `metric_logger` holding
    the steps before. `after_step(steps_done, metric_logger, check_loss)` runs after every step (train.py's
    saves the training state there, after `check_loss()`, and raises to stop the run).
    """
    model.train()
    metric_logger = utils.MetricLogger() if metric_logger is None else metric_logger
    beta = criterion.margin_loss.beta
    world_size = distributed.get_world_size()
    loss_check = NonFiniteLossCheck(epoch, device)
    header = f"Epoch: [{epoch}]"
    batches = metric_logger.log_every(data_loader, print_freq, header, first=first_step, before_print=loss_check.check)
    for step, (images, targets, ids) in enumerate(batches, start=first_step):
        if isinstance(images, CropWithParams):
            images = photometric.on_device(images, device, memory_format)
        else:
            images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        ids = ids.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits, embeddings = model(images)
            losses = criterion(logits, embeddings, targets, ids)
        loss = losses["loss"]
        loss_check.watch(loss, step)

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if beta.grad is not None and world_size > 1:
            torch.distributed.all_reduce(beta.grad)
            beta.grad /= world_size
        if clip_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

        n = images.shape[0]
        metric_logger.count_images(n * world_size)
        metric_logger.update(n=n, **losses)
        if criterion.classif_weight > 0:  # λ = 0 reads no labels (images without a class have none)
            acc1, acc5 = accuracy_counts(logits, targets, topk=(1, 5))
            metric_logger.update(n=n, acc1=acc1.double() * (100.0 / n), acc5=acc5.double() * (100.0 / n))
        metric_logger.update(beta=beta, lr=optimizer.param_groups[0]["lr"])
        if after_step is not None:
            after_step(step + 1, metric_logger, loss_check.check)
    loss_check.check()
    metric_logger.synchronize_between_processes()
    return {f"train_{name}": meter.global_avg for name, meter in metric_logger.meters.items()}


@torch.no_grad()
def evaluate(model, data_loader, device, *, amp_dtype=None, print_freq=10, header="Test:"):
    """Top-1 / top-5 accuracy (%) and cross-entropy of `model` over `data_loader`, each process's share
    summed over all processes.

    The batches are (images, targets): a batch tensor, or a list of images of different sizes (as
    multigrain.inference.extraction.collate_image_list makes), whose images of equal size run together.
    """
    model.eval()
    metric_logger = utils.MetricLogger()
    correct1 = correct5 = loss_sum = 0.0
    count = non_finite = 0
    non_finite_names = []
    for batch_index, (images, targets) in enumerate(metric_logger.log_every(data_loader, print_freq, header)):
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if isinstance(images, torch.Tensor):
                logits, _ = model(images.to(device, non_blocking=True))
            else:
                logits, _ = forward_by_size(model, [image.to(device, non_blocking=True) for image in images])
        bad_rows = non_finite_rows(logits.detach().float())
        if bad_rows:
            non_finite += len(bad_rows)
            batch = list(itertools.islice(data_loader.batch_sampler, batch_index, batch_index + 1))[0]
            non_finite_names += [image_name(data_loader.dataset, batch[row]) for row in bad_rows[:5]]
        loss = nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        acc1, acc5 = accuracy_counts(logits, targets, topk=(1, 5))
        correct1 += acc1.item()
        correct5 += acc5.item()
        loss_sum += loss.item()
        count += len(targets)
    correct1, correct5, loss_sum, count, non_finite = distributed.reduce_sum(
        [correct1, correct5, loss_sum, count, non_finite]
    )
    if count == 0:
        raise ValueError(f"{header} no image to evaluate")
    if non_finite:
        raise NonFiniteOutputError(
            f"{header} " + non_finite_message(int(non_finite), int(count), "logits", non_finite_names)
        )
    metrics = {
        "acc1": 100.0 * correct1 / count,
        "acc5": 100.0 * correct5 / count,
        "loss": loss_sum / count,
        "images": int(count),
    }
    distributed.print_main(
        f"{header} Acc@1 {metrics['acc1']:.3f} Acc@5 {metrics['acc5']:.3f} loss {metrics['loss']:.4f} "
        f"on {int(count)} images"
    )
    return metrics
