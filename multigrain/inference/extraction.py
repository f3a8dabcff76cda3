"""Running a model on images of different sizes without padding.

Retrieval and finetune_p inputs keep their aspect ratio (largest side s, no crop), so the images of a
dataset differ in size. Padding them into one batch would change what GeM averages over; instead
images of identical size are stacked into one batch and every other image runs on its own.
"""

import contextlib
import time
from collections import defaultdict

import torch
import torch.utils.data

# What extract_descriptors can return for every image.
#   descriptor: the retrieval descriptor, model(x)[1] (l2n of the embedding)
#   logits:     model(x)[0]
#   pooled:     the raw GeM vector g, before any whitening (what whiten.py fits on)
EXTRACTION_OUTPUTS = ("descriptor", "logits", "pooled")

# How the CPU allocator words its out-of-memory RuntimeError (Linux, Windows); CUDA raises torch.OutOfMemoryError.
CPU_OUT_OF_MEMORY_MESSAGES = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")


class ExtractionOutOfMemoryError(MemoryError):
    """A batch of same-size images did not fit in memory: lower the batch size or the image size."""


@contextlib.contextmanager
def reporting_out_of_memory(num_images, size, device, batch_size=None):
    """Turns an allocator's out-of-memory error in the block into an ExtractionOutOfMemoryError that says
    which batch (num_images images of `size`, the batch size asked for) failed and what to lower."""
    try:
        yield
    except RuntimeError as error:
        cpu_message = any(message in str(error) for message in CPU_OUT_OF_MEMORY_MESSAGES)
        if not (isinstance(error, torch.OutOfMemoryError) or cpu_message):
            raise
        height, width = size[-2:]
        asked = f" (batch size {batch_size})" if batch_size is not None else ""
        raise ExtractionOutOfMemoryError(
            f"out of memory on {device} running a batch of {num_images} images of {height}×{width} px (H×W){asked}: "
            "lower the batch size (--batch-size, --eval-batch-size of finetune_p.py) or the image size (--input-size)"
        ) from error


class NonFiniteOutputError(FloatingPointError):
    """A model gave NaN or infinite descriptors, pooled vectors or logits: no score is computed from them."""


def image_name(dataset, index):
    """The file of item `index` of `dataset`: an ImageList's name, an ImageFolder's path, through Subsets."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset, index = dataset.dataset, dataset.indices[index]
    if hasattr(dataset, "names"):
        return str(dataset.names[index])
    if hasattr(dataset, "samples"):
        return str(dataset.samples[index][0])
    return f"item {index}"


def non_finite_rows(values, zero_too=False):
    """The indices of the rows of a 2-D tensor that hold a NaN or an infinity (or, if `zero_too`, only zeros)."""
    bad = (~torch.isfinite(values)).any(dim=1)
    if zero_too:
        bad |= (values == 0).all(dim=1)
    return bad.nonzero().flatten().tolist()


def non_finite_message(count, total, what, names):
    shown = ", ".join(names[:5]) + (", ..." if count > len(names[:5]) else "") if names else "on other processes"
    return (
        f"{count} of {total} images give NaN or infinite {what} ({shown}): the model's weights or its GeM "
        "exponent (pool.p, --pooling-exponent) overflow; nothing was scored"
    )


def check_finite(values, names, what, zero_too=False):
    """Raises a NonFiniteOutputError naming the images (`names`, one per row) whose row of `values` is not
    finite (or, if `zero_too`, is all zeros: a descriptor whose pooling underflowed)."""
    rows = non_finite_rows(torch.as_tensor(values), zero_too)
    if rows:
        what = f"{what} (or all-zero ones)" if zero_too else what
        raise NonFiniteOutputError(non_finite_message(len(rows), len(values), what, [str(names[i]) for i in rows[:5]]))


def collate_image_list(batch):
    """DataLoader collate_fn for (image, target) samples of different sizes: (list of images, targets)."""
    images = [sample[0] for sample in batch]
    targets = torch.as_tensor([sample[1] for sample in batch])
    return images, targets


def forward_by_size(fn, images):
    """fn applied to a list of (C, H, W) images; returns fn's output (a tensor or a tuple of tensors)
    with one row per image, in the order of `images`.

    Images of identical size go through fn as one batch; autograd flows through the result.
    """
    if not images:
        raise ValueError("forward_by_size needs at least one image")
    groups = defaultdict(list)
    for position, image in enumerate(images):
        groups[tuple(image.shape)].append(position)
    outputs, positions = [], []
    for size, group in groups.items():
        with reporting_out_of_memory(len(group), size, images[group[0]].device):
            outputs.append(fn(torch.stack([images[i] for i in group])))
        positions.extend(group)
    order = torch.empty(len(images), dtype=torch.long)
    order[torch.tensor(positions)] = torch.arange(len(images))
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts)[order.to(parts[0].device)] for parts in zip(*outputs))
    return torch.cat(outputs)[order.to(outputs[0].device)]


def _output_fn(model, output):
    if output == "descriptor":
        return lambda x: model(x)[1]
    if output == "logits":
        return lambda x: model(x)[0]
    return model.pooled


def _output_dim(model, output):
    if output == "logits":
        return model.classifier.out_features
    if output == "pooled" and model.whitening is not None:
        return model.whitening.mean.shape[0] - 1
    if output == "descriptor" and getattr(model, "descriptor_dim", None) is not None:
        return model.descriptor_dim
    return model.classifier.in_features


@torch.no_grad()
def extract_descriptors(
    model,
    dataset,
    device,
    *,
    output="descriptor",
    batch_size=32,
    num_workers=0,
    amp_dtype=None,
    print_freq=0,
    skipped=None,
):
    """One float32 row per image of `dataset`, in dataset order, on the CPU.

    `dataset` yields an image tensor, or a tuple whose first element is one (its other elements are
    ignored). Images of identical size are batched together, up to `batch_size`; at most
    4 * batch_size images wait for a batch at any time. `amp_dtype` (e.g. torch.float16) runs the
    model under autocast; GeM and whitening stay in float32. `print_freq` > 0 prints progress every
    that many images. The model is used as it is (call model.eval() first). With a `skipped` list, a
    sample that is None (an image that `SkipBadImages` could not read) is not run: its index is appended
    to the list and its row is NaN.
    """
    if output not in EXTRACTION_OUTPUTS:
        raise ValueError(f"unknown output {output!r}; valid: {', '.join(EXTRACTION_OUTPUTS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device)
    fn = _output_fn(model, output)
    result = torch.full((len(dataset), _output_dim(model, output)), float("nan"), dtype=torch.float32)
    buckets = defaultdict(list)  # image size -> [(dataset index, image)]
    pending = 0

    def flush(size):
        nonlocal pending
        items = buckets.pop(size)
        pending -= len(items)
        with reporting_out_of_memory(len(items), size, device, batch_size):
            batch = torch.stack([image for _, image in items]).to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                rows = fn(batch)
        result[[index for index, _ in items]] = rows.float().cpu()

    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    start = time.time()
    for index, sample in enumerate(loader):
        if sample is None and skipped is not None:
            skipped.append(index)
            continue
        image = sample[0] if isinstance(sample, (tuple, list)) else sample
        size = tuple(image.shape)
        buckets[size].append((index, image))
        pending += 1
        if len(buckets[size]) == batch_size:
            flush(size)
        elif pending >= 4 * batch_size:
            flush(max(buckets, key=lambda s: len(buckets[s])))
        if print_freq > 0 and (index + 1) % print_freq == 0:
            print(f"extracted {index + 1}/{len(dataset)} images ({time.time() - start:.1f} s)", flush=True)
    for size in list(buckets):
        flush(size)
    return result
