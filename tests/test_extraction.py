import pytest
import torch
from torch import nn

from multigrain.extraction import ExtractionOutOfMemoryError, extract_descriptors

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
