"""Every checkpoint this project reads or writes: what it holds, safe loading, atomic writing.

A checkpoint of this project is a plain dict that says what it is:

- `kind`: "train" (train.py's training state: `model`, `criterion`, `optimizer`, `lr_scheduler`,
  `scaler`, `epoch` (the last finished one), `in_epoch` (None, or the progress within the next epoch:
  its iterations done and each process's random states and metric sums, or its `train_metrics` when
  only its validation is pending), `recipe`, `log`), "finetune_p" (finetune_p.py's model with its p*) or "whiten"
  (whiten.py's whitened model);
- `model`: the MultiGrainNet's state_dict; `args`: the arguments of the command that wrote it, with
  `args["model"]` naming the architecture; `code_version`: the git commit of the code (or "unknown");
- `source`: for finetune_p and whiten, the checkpoint they started from.

The published MultiGrain files (joint_1B_1.0.pth ..., ResNet-50) are recognised too ("published"): a
dict whose `model_state` entry has the same `features.*`, `pool.p`, `classifier.*` keys, possibly
behind a `module.` prefix, and for whitened models `whitening.pca.pca_m`, `whitening.pca.pca_P` with a
classifier of width 2049 that reads the whitened vector; so are the published appendix-E files
(senet154, pnasnet5large on timm; nasnetamobile on pretrainedmodels), told by their keys
(appendix_e_architecture).
"""

import functools
import math
import os
import subprocess
import urllib.parse

import torch
from torch import nn

from ..model import build_model, check_model_name
from ..whitening import Whitening, remove_whitening
from .atomic_write import remove_stale_temporary_files, write_atomic
from .safe_pickle import not_loaded_objects, tensors_only_pickle

# The file each script writes in its --output-dir.
FILE_NAMES = {"train": "checkpoint.pth", "finetune_p": "finetune_p.pth", "whiten": "whitened.pth"}
LOG_NAMES = {"train": "log.jsonl", "finetune_p": "finetune_p_log.jsonl", "whiten": "whiten_log.jsonl"}
SCRIPTS = {"train": "train.py", "finetune_p": "finetune_p.py", "whiten": "whiten.py"}
KIND_DESCRIPTIONS = {
    "train": "a training state of train.py",
    "finetune_p": "a p*-fine-tuned model of finetune_p.py",
    "whiten": "a whitened model of whiten.py",
    "published": "a published MultiGrain model",
    "model": "a MultiGrain model",
}
PUBLISHED_ARCHITECTURE = "resnet50"
# The beginning of keys that only the published file of each appendix-E architecture has.
PUBLISHED_APPENDIX_E_MARKERS = {
    "senet154": "features.layer0.conv3.",
    "nasnetamobile": "features.0.base_net.reduction_cell_0.",
    "pnasnet5large": "features.0.base_net.cell_stem_0.",
}
PUBLISHED_WHITENING_KEYS = {"whitening.pca.pca_m": "whitening.mean", "whitening.pca.pca_P": "whitening.projection"}


@functools.cache
def code_version() -> str:
    """The git commit of this code, with "-dirty" for uncommitted changes; "unknown" outside git."""
    folder = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if status.strip() else "")


def make_checkpoint(kind, model_state, args, **entries) -> dict:
    """The dict of a checkpoint of `kind` (see the module docstring); `args` is a dict."""
    if kind not in FILE_NAMES:
        raise ValueError(f"unknown checkpoint kind {kind!r}; valid: {', '.join(FILE_NAMES)}")
    return {"kind": kind, "model": model_state, "args": dict(args), "code_version": code_version(), **entries}


def save_checkpoint(checkpoint, path):
    """Writes `checkpoint` to `path` atomically (multigrain.storage.atomic_write): a crash leaves the previous file or
    the new one; a full disk or another write error raises a WriteError saying so."""
    write_atomic(path, lambda f: torch.save(checkpoint, f), "checkpoint")


def _load_published_checkpoint(path):
    """A published MultiGrain file that weights_only refuses: they pickled
    `optimizer_state=optimizer.state_dict`, a bound method. Only the classes and functions that rebuild
    tensors are imported and called; every other object of the file is replaced by an inert stand-in,
    and the entries holding one are dropped. The `model_state` entry must hold tensors only."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=tensors_only_pickle)
    if not isinstance(checkpoint, dict) or "model_state" not in checkpoint:
        raise ValueError("it is not a published MultiGrain file (a dict with a 'model_state' entry)")
    kept = {}
    for key, value in checkpoint.items():
        skipped = sorted(set(not_loaded_objects(value)))
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
        raise RuntimeError(
            f"cannot load checkpoint {path} safely: weights_only=True failed ({weights_only_error}); reading it "
            f"as a published MultiGrain file failed too: {e}. It holds objects other than tensors, and loading "
            "those would run whatever code the file names. Only a file you trust may be converted to a plain "
            "state_dict: check where it came from (download it again from its publisher and compare its "
            "sha256sum with the published checksum)"
        ) from None


def checkpoint_kind(checkpoint) -> str:
    """ "train", "finetune_p", "whiten", "published", or "model" for a dict with a `model` state_dict
    that says nothing more (written by hand or by an earlier version, which wrote no `kind`)."""
    if not isinstance(checkpoint, dict):
        return "unknown"
    if "kind" in checkpoint:
        return checkpoint["kind"]
    if "model_state" in checkpoint and "model" not in checkpoint:
        return "published"
    for kind, marker in (("train", "optimizer"), ("finetune_p", "finetune_p"), ("whiten", "whitening")):
        if marker in checkpoint and "model" in checkpoint:
            return kind
    return "model" if "model" in checkpoint else "unknown"


def describe(checkpoint, path) -> str:
    """E.g. "runs/a/checkpoint.pth (a training state of train.py, after epoch 3)"."""
    kind = checkpoint_kind(checkpoint)
    text = KIND_DESCRIPTIONS.get(kind, "not a MultiGrain checkpoint")
    in_epoch = checkpoint.get("in_epoch") if kind == "train" else None
    if in_epoch:
        pending = ", validation pending" if "train_metrics" in in_epoch else ""
        text += f", in epoch {in_epoch['epoch']} after iteration {in_epoch['step']} of {in_epoch['steps']}{pending}"
    elif kind == "train" and "epoch" in checkpoint:
        text += f", after epoch {checkpoint['epoch']}"
    return f"{path} ({text})"


def check_output_dir(folder, kind):
    """Refuses a --output-dir that holds the checkpoint file of another script; removes the temporary files
    of interrupted writes there (remove_stale_temporary_files)."""
    remove_stale_temporary_files(folder)
    for other_kind, name in FILE_NAMES.items():
        path = os.path.join(folder, name)
        if other_kind != kind and os.path.exists(path):
            raise ValueError(
                f"--output-dir {folder} holds {name}, the output of {SCRIPTS[other_kind]}: "
                "give this run its own --output-dir"
            )


def model_state_dict(checkpoint, path="checkpoint"):
    """The model's state_dict of a checkpoint of this project (key `model`) or of a published MultiGrain
    file (key `model_state`), without a DDP `module.` prefix, with the whitening keys of this project."""
    if isinstance(checkpoint, dict) and "model" in checkpoint:
        state = checkpoint["model"]
    elif checkpoint_kind(checkpoint) == "published":
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
    p = float(state["pool.p"])
    if math.isnan(p) or p <= 0:
        raise ValueError(f"{path}: its GeM exponent pool.p is {p}; it must be positive (inf: max pooling)")
    non_finite = [
        key
        for key, value in state.items()
        if key != "pool.p" and value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if non_finite:
        raise ValueError(
            f"{path}: {len(non_finite)} tensors of its model hold NaN or infinite values: {', '.join(non_finite[:5])}"
        )
    return state


def check_num_classes(checkpoint, path, classes, data_flag):
    """Refuses a model whose classifier has another number of classes than the dataset's `classes`."""
    num_classes = model_state_dict(checkpoint, path)["classifier.weight"].shape[0]
    if num_classes != len(classes):
        raise ValueError(f"{path} classifies {num_classes} classes, {data_flag} has {len(classes)}")


def source_of(checkpoint, path) -> dict:
    """The `source` entry of a model made from the checkpoint in `path`."""
    return {"path": os.path.abspath(path), "kind": checkpoint_kind(checkpoint)}


def appendix_e_architecture(checkpoint):
    """The appendix-E architecture of a published file, told by its keys (senet154, pnasnet5large,
    nasnetamobile: multigrain.timm_backbones); None for the others."""
    keys = [key.removeprefix("module.") for key in checkpoint["model_state"]]
    for name, marker in PUBLISHED_APPENDIX_E_MARKERS.items():
        if any(key.startswith(marker) for key in keys):
            return name
    return None


def architecture_name(checkpoint, path="checkpoint", model_name=None) -> str:
    """The architecture of a checkpoint: its `args["model"]` (for the published files, which do not name
    it, the appendix-E architecture their keys tell, else resnet50); `model_name` names it for checkpoints
    that do not, and must agree with it otherwise."""
    stored_name = (checkpoint.get("args") or {}).get("model")
    published = checkpoint_kind(checkpoint) == "published"
    if published:
        stored_name = appendix_e_architecture(checkpoint)
    if model_name and stored_name and model_name != stored_name:
        raise ValueError(f"{path} holds a {stored_name} model, but --model is {model_name}")
    name = model_name or stored_name or (PUBLISHED_ARCHITECTURE if published else None)
    if name is None:
        raise ValueError(f"{path} does not name its architecture: pass --model")
    check_model_name(name)
    return name


def model_from_checkpoint(checkpoint, path="checkpoint", *, model_name=None, device="cpu", unwhitened=False):
    """The MultiGrainNet of a loaded checkpoint, in eval mode, with its pooling exponent and whitening
    as stored; `unwhitened` gives the model before whitening (the classifier reads g again)."""
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
    if unwhitened:
        remove_whitening(model)
    return model.to(device).eval()


def checkpoint_file(path_or_url) -> str:
    """The local file of a checkpoint: `path_or_url` itself, or for an http://, https:// or file:// URL the
    file it is downloaded to, once, in torch.hub's cache (<torch.hub.get_dir()>/checkpoints/<file name>).
    Nothing is read here: load_checkpoint reads the file safely."""
    path_or_url = os.fspath(path_or_url)
    if "://" not in path_or_url:
        return path_or_url
    url = urllib.parse.urlparse(path_or_url)
    name = os.path.basename(url.path)
    if url.scheme not in ("http", "https", "file") or not name:
        raise ValueError(f"checkpoint URL {path_or_url} is not an http(s):// or file:// URL of a file")
    path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            torch.hub.download_url_to_file(path_or_url, path, progress=False)
        except OSError as e:
            raise OSError(f"cannot download checkpoint {path_or_url}: {e}") from e
    return path


def load_model(path_or_url, *, model_name=None, device="cpu"):
    """The MultiGrainNet stored in a checkpoint file or URL (see checkpoint_file): any checkpoint of this
    project or a published file, in eval mode, with its pooling exponent and whitening as stored.

    The architecture is the checkpoint's `args["model"]` (resnet50 for the published files, which do
    not name it); `model_name` names it for checkpoints that do not, and must agree with it otherwise.
    The number of classes is read from the classifier.
    """
    path = checkpoint_file(path_or_url)
    return model_from_checkpoint(load_checkpoint(path), path, model_name=model_name, device=device)
