"""Reading model weights from checkpoints without executing code.

Two layouts are read: this project's checkpoints (a dict whose `model` entry is the state_dict, with
`args["model"]` naming the architecture) and the published MultiGrain files (joint_1B_1.0.pth ...,
ResNet-50): a dict whose `model_state` entry has the same `features.*`, `pool.p`, `classifier.*`
keys, possibly behind a `module.` prefix, and for whitened models `whitening.pca.pca_m`,
`whitening.pca.pca_P` with a classifier of width 2049 that reads the whitened vector.
"""

import os
import pickle
import types

import torch
from torch import nn

from .model import build_model
from .whitening import Whitening

PUBLISHED_ARCHITECTURE = "resnet50"
PUBLISHED_WHITENING_KEYS = {"whitening.pca.pca_m": "whitening.mean", "whitening.pca.pca_P": "whitening.projection"}

# The only functions the restricted loader calls: they rebuild tensors from the file's storages.
_TENSOR_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
}


class _NotLoaded:
    """Stands for an object of any other class: built from nothing, its state is ignored."""

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass

    def __repr__(self):
        return f"<not loaded: {self.qualified_name}>"


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _TENSOR_GLOBALS:
            return super().find_class(module, name)
        return type(str(name), (_NotLoaded,), {"qualified_name": f"{module}.{name}"})


def _load_tensors_only(file, **kwargs):
    return _TensorsOnlyUnpickler(file, **kwargs).load()


_tensors_only_pickle = types.ModuleType("tensors_only_pickle")
_tensors_only_pickle.Unpickler = _TensorsOnlyUnpickler
_tensors_only_pickle.load = _load_tensors_only


def _not_loaded_objects(value):
    """The qualified names of the _NotLoaded objects inside nested dicts, lists and tuples."""
    if isinstance(value, _NotLoaded):
        return [value.qualified_name]
    if isinstance(value, dict):
        value = list(value.keys()) + list(value.values())
    if isinstance(value, (list, tuple)):
        return [name for item in value for name in _not_loaded_objects(item)]
    return []


def _load_published_checkpoint(path):
    """A published MultiGrain file that weights_only refuses: they pickled
    `optimizer_state=optimizer.state_dict`, a bound method. Only the classes and functions that rebuild
    tensors are imported and called; every other object of the file is replaced by an inert stand-in,
    and the entries holding one are dropped. The `model_state` entry must hold tensors only."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tensors_only_pickle)
    if not isinstance(checkpoint, dict) or "model_state" not in checkpoint:
        raise ValueError("it is not a published MultiGrain file (a dict with a 'model_state' entry)")
    kept = {}
    for key, value in checkpoint.items():
        skipped = sorted(set(_not_loaded_objects(value)))
        if skipped and key == "model_state":
            raise ValueError(f"its 'model_state' entry holds objects other than tensors ({', '.join(skipped)})")
        if skipped:
            print(f"{path}: ignoring entry {key!r}, which holds objects ({', '.join(skipped)})")
        else:
            kept[key] = value
    return kept


def load_checkpoint(path):
    """A checkpoint file read with weights_only=True (plain containers and tensors only).

    Published MultiGrain files that weights_only refuses are read again with a loader that builds
    tensors and containers only and drops the entries holding anything else (_load_published_checkpoint).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        weights_only_error = e
    try:
        return _load_published_checkpoint(path)
    except Exception as e:
        conversion = f"torch.save({{'model': torch.load({str(path)!r}, weights_only=False)['model_state']}}, 'new.pth')"
        raise RuntimeError(
            f"cannot load checkpoint {path} safely: weights_only=True failed ({weights_only_error}); reading it "
            f"as a published MultiGrain file failed too: {e}. If you trust the file, convert it once, e.g. for a "
            f"published MultiGrain file: {conversion}"
        ) from None


def is_published(checkpoint) -> bool:
    return isinstance(checkpoint, dict) and "model_state" in checkpoint and "model" not in checkpoint


def model_state_dict(checkpoint, path="checkpoint"):
    """The model's state_dict of a training checkpoint (key `model`) or of a published MultiGrain file
    (key `model_state`), without a DDP `module.` prefix, with the whitening keys of this project."""
    if isinstance(checkpoint, dict) and "model" in checkpoint:
        state = checkpoint["model"]
    elif is_published(checkpoint):
        state = checkpoint["model_state"]
    else:
        keys = list(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is neither a checkpoint of this project nor a published MultiGrain file "
            f"(no 'model' or 'model_state' entry; found {keys})"
        )
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{path}: the model entry is not a state_dict of tensors")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    state = {PUBLISHED_WHITENING_KEYS.get(key, key): value for key, value in state.items()}
    for key in ("pool.p", "classifier.weight"):
        if key not in state:
            raise ValueError(f"{path} has no {key!r} in its model state_dict: not a MultiGrain model")
    state["pool.p"] = state["pool.p"].reshape(())
    return state


def architecture_name(checkpoint, path="checkpoint", model_name=None) -> str:
    """The architecture of a checkpoint: its `args["model"]` (resnet50 for the published files, which
    do not name it); `model_name` names it for checkpoints that do not, and must agree with it otherwise."""
    stored_name = (checkpoint.get("args") or {}).get("model")
    if model_name and stored_name and model_name != stored_name:
        raise ValueError(f"{path} holds a {stored_name} model, but --model is {model_name}")
    name = model_name or stored_name or (PUBLISHED_ARCHITECTURE if is_published(checkpoint) else None)
    if name is None:
        raise ValueError(f"{path} does not name its architecture: pass --model")
    return name


def model_from_checkpoint(checkpoint, path="checkpoint", *, model_name=None, device="cpu"):
    """The MultiGrainNet of a loaded checkpoint (see load_model)."""
    name = architecture_name(checkpoint, path, model_name)
    state = model_state_dict(checkpoint, path)
    num_classes, classifier_width = state["classifier.weight"].shape
    model = build_model(name, num_classes=num_classes, pooling_exponent=float(state["pool.p"]))
    if ("whitening.mean" in state) != ("whitening.projection" in state):
        raise ValueError(f"{path} has only one of whitening.mean and whitening.projection")
    if "whitening.mean" in state:
        model.whitening = Whitening(state["whitening.mean"], state["whitening.projection"])
        model.classifier = nn.Linear(classifier_width, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit --model {name}: {e}") from None
    return model.to(device).eval()


def load_model(path, *, model_name=None, device="cpu"):
    """The MultiGrainNet stored in `path`, in eval mode, with its pooling exponent and whitening as stored.

    The architecture is the checkpoint's `args["model"]` (resnet50 for the published files, which do
    not name it); `model_name` names it for checkpoints that do not, and must agree with it otherwise.
    The number of classes is read from the classifier.
    """
    return model_from_checkpoint(load_checkpoint(path), path, model_name=model_name, device=device)
