"""Reading model weights from checkpoints without executing code."""
import os

import torch

from .model import build_model


def load_checkpoint(path):
    """A checkpoint file read with weights_only=True (plain containers and tensors only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot load checkpoint {path} safely (weights_only=True): {e}") from None


def model_state_dict(checkpoint, path="checkpoint"):
    """The model's state_dict of a training checkpoint (key `model`), without a DDP `module.` prefix."""
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        keys = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a checkpoint of this project (no 'model' entry; found {keys})")
    state = checkpoint["model"]
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def load_model(path, *, model_name=None, device="cpu"):
    """The MultiGrainNet stored in `path`, in eval mode, with its pooling exponent as stored.

    The architecture is the checkpoint's `args["model"]`; `model_name` names it for checkpoints that do
    not, and must agree with it otherwise. The number of classes is read from the classifier.
    """
    checkpoint = load_checkpoint(path)
    state = model_state_dict(checkpoint, path)
    stored_name = (checkpoint.get("args") or {}).get("model")
    if model_name and stored_name and model_name != stored_name:
        raise ValueError(f"{path} holds a {stored_name} model, but --model is {model_name}")
    name = model_name or stored_name
    if name is None:
        raise ValueError(f"{path} does not name its architecture: pass --model")
    model = build_model(name, num_classes=state["classifier.weight"].shape[0], pooling_exponent=float(state["pool.p"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit --model {name} (stored: {stored_name}): {e}") from None
    return model.to(device).eval()
