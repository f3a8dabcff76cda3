"""Every checkpoint this project reads or writes: what it holds, safe loading, atomic writing.

A checkpoint of this project is a plain dict that says what it is:

- `kind`: "train" (train.py's training state: `model`, `criterion`, `optimizer`, `lr_scheduler`,
  `scaler`, `epoch` (the last finished one), `in_epoch` (None, or the progress within the next epoch:
  its iterations done and each process's random states and metric sums, or its `train_metrics` when
  only its validation is pending), `recipe`, `log`), "finetune_p" (finetune_p.py's model with its p*) or "whiten"
  (whiten.py's whitened model);
- `model`: the MultiGrainNet's state_dict; `args`: the arguments of the command that wrote it, with
  `args["model"]` naming the architecture; `code_version`: the git commit of the code (or "unknown");
- `source`: for finetune_p and whiten, the checkpoint they started from;
- what the model file says about its use (multigrain.storage.model_files): `class_names`, the classifier's classes
  in index order (train.py's ImageFolder classes, carried over by finetune_p and whiten), and for finetune_p and
  whiten `input_size`, the test resolution s* they were made for. Files written before these entries have none.

The published MultiGrain files (joint_1B_1.0.pth ..., ResNet-50) are recognised too ("published"): a
dict whose `model_state` entry has the same `features.*`, `pool.p`, `classifier.*` keys, possibly
behind a `module.` prefix, and for whitened models `whitening.pca.pca_m`, `whitening.pca.pca_P` with a
classifier of width 2049 that reads the whitened vector; so are the published appendix-E files
(senet154, pnasnet5large on timm; nasnetamobile on pretrainedmodels), told by their keys. The model of
any of them is opened by multigrain.storage.model_files. So is export.py's safetensors file ("safetensors":
multigrain.storage.safetensors_file), which load_checkpoint tells by its header.
"""

import functools
import math
import os
import subprocess
import warnings

import torch

from .atomic_write import remove_stale_temporary_files, write_atomic
from .safe_pickle import not_loaded_objects, tensors_only_pickle
from .safetensors_file import is_safetensors, read_safetensors

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
    "safetensors": "a safetensors model file of export.py",
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


def load_failure(error) -> str:
    """Why torch.load failed, in one sentence: without its advice on loading the file unsafely or allowing more."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    text = " ".join(text.split()).split(". ")[0].rstrip(".")
    return text or type(error).__name__


def load_checkpoint(path):
    """A checkpoint file read with weights_only=True (plain containers and tensors only), or a safetensors file
    (read_safetensors).

    Published MultiGrain files that weights_only refuses are read again with a loader that builds
    tensors and containers only and drops the entries holding anything else (_load_published_checkpoint).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if is_safetensors(path):
        return read_safetensors(path)
    try:
        with warnings.catch_warnings():  # a pickle protocol other than torch's: the loader refuses what it must
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        weights_only_error = load_failure(e)
    try:
        return _load_published_checkpoint(path)
    except Exception as e:
        raise RuntimeError(
            f"cannot load checkpoint {path} safely: weights_only=True failed ({weights_only_error}); reading it "
            f"as a published MultiGrain file failed too: {load_failure(e)}. It holds objects other than tensors, and "
            "loading those would run whatever code the file names. Only a file you trust may be converted to a "
            "plain state_dict: check where it came from (download it again from its publisher and compare its "
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
