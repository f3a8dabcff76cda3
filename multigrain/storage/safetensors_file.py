"""The safetensors model file of export.py: a MultiGrainNet's weights and a small JSON config, without pickle.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape and
offsets, and a `__metadata__` dict of strings) and the raw tensor bytes: reading it runs no code, and timm and
the Hugging Face libraries load it. The config is the JSON text of the metadata entry `multigrain`:

    {"format": "multigrain model, version 1", "architecture": "resnet50", "class_names": ["n01440764", ...],
     "input_size": 500, "source": {"kind": "whiten", "file": "whitened.pth"}, "code_version": "..."}

(`class_names` and `input_size` are null when the model does not know them.) read_safetensors gives the file as
a checkpoint dict of kind "safetensors" (multigrain.storage.checkpoint), which open_model reads like the others.
"""

import json
import os

METADATA_KEY = "multigrain"
CONFIG_FORMAT = "multigrain model, version 1"
INSTALL = "pip install 'multigrain[safetensors]'"


def is_safetensors(path) -> bool:
    """Whether the file `path` begins as a safetensors file does: a header length that fits the file, then "{"."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= os.path.getsize(path) - 8


def _safetensors(path, doing):
    try:
        import safetensors.torch
    except ImportError:
        raise ValueError(f"{doing} {path} needs the package safetensors: {INSTALL}") from None
    return safetensors


def save_safetensors(path, state, *, architecture, class_names, input_size, source, code_version):
    """Writes the state_dict `state` and its config (module docstring) to `path` (not atomically: give it the
    temporary path of multigrain.storage.atomic_write)."""
    config = {
        "format": CONFIG_FORMAT,
        "architecture": architecture,
        "class_names": class_names,
        "input_size": input_size,
        "source": source,
        "code_version": code_version,
    }
    tensors = {key: value.detach().contiguous() for key, value in state.items()}
    _safetensors(path, "writing").torch.save_file(tensors, path, metadata={METADATA_KEY: json.dumps(config)})


def read_safetensors(path) -> dict:
    """The safetensors file `path` as a checkpoint dict: kind "safetensors", `model` (its tensors), `args["model"]`
    (the architecture), `class_names`, `input_size`, `source` and `code_version` from its config. A file without
    the config (another tool's state_dict) gives the tensors alone: --model then names the architecture."""
    safetensors = _safetensors(path, "reading")
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    text = metadata.get(METADATA_KEY)
    if text is None:
        return {"kind": "safetensors", "model": state, "args": {}}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: its {METADATA_KEY!r} config is not JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path}: its {METADATA_KEY!r} config is not a {CONFIG_FORMAT!r} (found {found!r})")
    return {
        "kind": "safetensors",
        "model": state,
        "args": {"model": config.get("architecture")},
        **{key: config.get(key) for key in ("class_names", "input_size", "source", "code_version")},
    }
