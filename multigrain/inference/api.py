"""A trained model on a list of images: descriptors, top-k classes, similarities (the API of multigrain/__init__).

Images are PIL images or image file paths of any sizes; they are resized to largest side `input_size`
without a crop (eval_transform), and images of identical size run as one batch (multigrain.inference.extraction).
`input_size` defaults to the model's own (`model.input_size`: the s* its file stores, see load_model), else 500.
"""

import os

import torch
import torch.utils.data
from PIL import Image

from ..images.image_io import load_rgb, to_rgb
from ..images.transforms import RetrievalPresetEval
from ..model import DEFAULT_INPUT_SIZE
from .extraction import extract_descriptors


def eval_transform(input_size: int):
    """PIL image -> normalised (3, H, W) tensor with max(H, W) = input_size, aspect ratio kept, no crop,
    ImageNet mean and std: the input of the retrieval evaluation and of the p* fine-tuning."""
    return RetrievalPresetEval(max_size=input_size)


class _TransformedImages(torch.utils.data.Dataset):
    """PIL images and image paths, opened (paths) and transformed as the extraction asks for them."""

    def __init__(self, images, transform):
        if isinstance(images, (str, os.PathLike, Image.Image)):
            raise TypeError("images must be a list of PIL images or image paths, not a single one")
        self.images = list(images)
        if not self.images:
            raise ValueError("no images given")
        for position, image in enumerate(self.images):
            if isinstance(image, Image.Image):
                continue
            if not isinstance(image, (str, os.PathLike)):
                raise TypeError(f"image {position} is a {type(image).__name__}, not a PIL image or a path")
            if not os.path.isfile(image):
                raise FileNotFoundError(f"image {os.fspath(image)} does not exist")
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        image = to_rgb(image) if isinstance(image, Image.Image) else load_rgb(image)
        return self.transform(image)


def _run(model, images, input_size, output, batch_size, amp_dtype):
    if input_size is None:
        input_size = getattr(model, "input_size", None) or DEFAULT_INPUT_SIZE
    device = next(model.parameters()).device
    return extract_descriptors(
        model,
        _TransformedImages(images, eval_transform(input_size)),
        device,
        output=output,
        batch_size=batch_size,
        amp_dtype=amp_dtype,
    )


def descriptors(model, images, input_size: int | None = None, *, batch_size: int = 32, amp_dtype=None) -> torch.Tensor:
    """The retrieval descriptors l2n(e) of `images`: a float32 (N, D) CPU tensor, one unit row per image,
    in order. `model` is a MultiGrainNet in eval mode (load_model), on the device to run on; `input_size`
    defaults to model.input_size, else 500; `amp_dtype` (e.g. torch.float16) runs the trunk under autocast."""
    return _run(model, images, input_size, "descriptor", batch_size, amp_dtype)


def classify(model, images, input_size: int | None = None, *, top_k: int = 5, batch_size: int = 32, amp_dtype=None):
    """The `top_k` most probable classes of each image, most probable first: (probabilities, classes), with
    probabilities an (N, top_k) tensor and classes their names, N lists of top_k strings, when the model knows
    them (`model.class_names`, which load_model sets from the file), else an (N, top_k) tensor of class indices,
    those of the training ImageFolder (sorted class folder names). `input_size` as for descriptors.

    Classifying needs the images, not their descriptors: the classifier reads the embedding (g, or e once
    whitened) whose norm the descriptor l2n(·) has lost, and through the classifier's bias that norm
    changes the ranking of the classes.
    """
    logits = _run(model, images, input_size, "logits", batch_size, amp_dtype)
    if not 1 <= top_k <= logits.shape[1]:
        raise ValueError(f"top_k must be between 1 and the {logits.shape[1]} classes of the model, got {top_k}")
    probabilities, indices = logits.softmax(dim=1).topk(top_k, dim=1)
    names = getattr(model, "class_names", None)
    if names is None:
        return probabilities, indices
    return probabilities, [[names[index] for index in row] for row in indices.tolist()]


def compare(descriptors_a, descriptors_b) -> torch.Tensor:
    """The cosine similarities of two sets of descriptors, (N, D) and (M, D) (tensors or numpy arrays):
    an (N, M) tensor; 1 is the same image, higher is more similar. Rows are l2-normalised first, so
    descriptors of any scale compare."""
    a, b = torch.as_tensor(descriptors_a).float(), torch.as_tensor(descriptors_b).float()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"compare needs two (N, D) and (M, D) descriptor arrays of one dimension D, "
            f"got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
