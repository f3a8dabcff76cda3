import pytest
import torch
from torch import nn
from torch.nn import functional as F

from multigrain.inference.extraction import (
    EXTRACTION_OUTPUTS,
    ExtractionOutOfMemoryError,
    extract_descriptors,
    forward_by_size,
)
from multigrain.model import MultiGrainNet


def tiny_model(num_classes=6, p=3.0, seed=0):
    torch.manual_seed(seed)
    features = nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 16, 3, stride=2), nn.ReLU()
    )
    model = MultiGrainNet(features, nn.Linear(16, num_classes), p=p)
    with torch.no_grad():
        model.classifier.weight.mul_(20)  # logits that depend visibly on p
        model.features[1].running_mean.uniform_(-0.2, 0.2)
        model.features[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def mixed_size_images(count=7, seed=0):
    sizes = [(20, 28), (28, 20), (20, 28), (24, 24), (28, 20), (20, 28), (17, 31)]
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(3, *sizes[i % len(sizes)], generator=generator) for i in range(count)]


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, images, targets):
        self.images, self.targets = images, targets

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], int(self.targets[index])


def one_at_a_time(model, images):
    outputs = [model(image[None]) for image in images]
    return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])


def test_mixed_size_batch_equals_one_image_at_a_time():
    model = tiny_model()
    images = mixed_size_images()
    with torch.no_grad():
        logits, descriptors = forward_by_size(model, images)
        single_logits, single_descriptors = one_at_a_time(model, images)
    torch.testing.assert_close(logits, single_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(descriptors, single_descriptors, rtol=1e-5, atol=1e-6)


def test_mixed_size_batch_gradient_of_p_equals_one_image_at_a_time():
    model = tiny_model()
    model.pool.make_p_learnable()
    images = mixed_size_images()
    targets = torch.arange(len(images)) % 6
    loss = F.cross_entropy(forward_by_size(model, images)[0], targets)
    (batch_grad,) = torch.autograd.grad(loss, model.pool.p)
    single_grads = [
        torch.autograd.grad(F.cross_entropy(model(image[None])[0], target[None]), model.pool.p)[0]
        for image, target in zip(images, targets)
    ]
    torch.testing.assert_close(batch_grad, torch.stack(single_grads).mean(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("output", EXTRACTION_OUTPUTS)
def test_extraction_keeps_dataset_order_whatever_the_batching(output):
    model = tiny_model()
    images = mixed_size_images(count=15, seed=1)
    dataset = ListDataset(images, [0] * len(images))
    with torch.no_grad():
        expected = {
            "descriptor": lambda x: model(x)[1],
            "logits": lambda x: model(x)[0],
            "pooled": model.pooled,
        }[output]
        reference = torch.cat([expected(image[None]) for image in images])
    for batch_size in (1, 2, 32):  # 2: buckets overflow, the largest one is flushed early
        rows = extract_descriptors(model, dataset, "cpu", output=output, batch_size=batch_size)
        assert rows.dtype == torch.float32 and rows.shape == reference.shape
        torch.testing.assert_close(rows, reference, rtol=1e-5, atol=1e-5)


def test_extraction_of_an_empty_dataset_has_the_output_width():
    model = tiny_model()
    rows = extract_descriptors(model, ListDataset([], []), "cpu", output="logits")
    assert rows.shape == (0, 6)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


class AllocatesTooMuch(nn.Module):
    """A model whose forward asks the device's allocator for 4 PiB per image."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(8, 2)

    def forward(self, images):
        workspace = images.new_empty(len(images), 2**50)
        return self.classifier(workspace[:, :8]), workspace[:, :8]


@pytest.mark.parametrize("device", DEVICES)
def test_out_of_memory_names_the_image_size_and_the_batch(device):
    images = [torch.zeros(3, 20, 30) for _ in range(3)]
    with pytest.raises(ExtractionOutOfMemoryError) as error:
        extract_descriptors(AllocatesTooMuch().to(device), images, device, batch_size=3)
    message = str(error.value)
    assert f"out of memory on {device} running a batch of 3 images of 20×30 px (H×W) (batch size 3)" in message
    assert "--batch-size" in message and "--input-size" in message
    assert isinstance(error.value, MemoryError) and isinstance(error.value.__cause__, RuntimeError)


class Fails(AllocatesTooMuch):
    """The same model, failing for another reason."""

    def forward(self, images):
        raise RuntimeError("not a memory problem")


def test_other_errors_pass_unchanged():
    with pytest.raises(RuntimeError, match="not a memory problem"):
        extract_descriptors(Fails(), [torch.zeros(3, 20, 30)], "cpu")


def test_out_of_memory_of_a_mixed_size_batch_names_the_group():
    images = [torch.zeros(3, 20, 30), torch.zeros(3, 30, 20), torch.zeros(3, 20, 30)]
    with pytest.raises(ExtractionOutOfMemoryError, match="a batch of 2 images of 20×30 px"):
        forward_by_size(AllocatesTooMuch(), images)
