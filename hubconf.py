"""torch.hub entry points: MultiGrain models ready for inference (eval mode, p and whitening as stored).

    model = torch.hub.load("path/to/this/repository", "multigrain_resnet50", source="local",
                           checkpoint="https://.../whitened.pth")

`checkpoint` is a file or an http(s):// or file:// URL, downloaded once into torch.hub's cache; every file
is read by the project's safe loader (weights_only=True, or tensors only for the published files), export.py's
safetensors files too. The model carries the class names and input size s* its file stores (load_model).
"""

import multigrain as _multigrain

dependencies = ["torch", "torchvision", "numpy", "scipy", "PIL"]


def multigrain(checkpoint, architecture=None, device="cpu", check_hash=False):
    """The MultiGrainNet of `checkpoint` (any checkpoint of this project or a published MultiGrain file);
    `architecture` (a torchvision name, e.g. resnet18) is needed only for checkpoints that do not name it;
    `check_hash`: the file's SHA-256 must begin with the hex digits its name ends with (NAME-<digits>.pth)."""
    return _multigrain.load_model(checkpoint, model_name=architecture, device=device, check_hash=check_hash)


def multigrain_resnet50(checkpoint, device="cpu", check_hash=False):
    """A ResNet-50 MultiGrain model, e.g. a published one; a checkpoint of another architecture is refused."""
    return _multigrain.load_model(checkpoint, model_name="resnet50", device=device, check_hash=check_hash)


def eval_transform(input_size):
    """PIL image -> normalised tensor with largest side `input_size`, no crop: the input of the models."""
    return _multigrain.eval_transform(input_size)
