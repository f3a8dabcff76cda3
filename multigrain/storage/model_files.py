"""The model of a checkpoint file: what every script and `multigrain.load_model` read a model from.

open_model reads a checkpoint of any kind (train.py's training state, finetune_p.py's and whiten.py's models,
a published MultiGrain file, export.py's safetensors file) once, checks it (a state_dict of finite tensors, the
architecture, the class names and input size it stores) and gives a ModelFile: what the file is (kind,
architecture, p, whitening, source), what it says about its use (class names, input size s*), the check of
its number of classes, and the MultiGrainNet it builds. A script opens it in its check_args, before any process
group starts, and builds the model in main.
"""

import dataclasses
import hashlib
import os
import re
import secrets
import urllib.parse

import torch

from ..model import MultiGrainNet, build_model, check_model_name, classifier_layer
from ..whitening import Whitening, remove_whitening
from .checkpoint import checkpoint_kind, describe, load_checkpoint, model_state_dict
from .input_files import file_sha256

# torch.hub's rule: a file named NAME-<the first hex digits of its SHA-256>.EXT carries its own check.
HASH_PREFIX = re.compile(r"-([a-f0-9]+)\.")

PUBLISHED_ARCHITECTURE = "resnet50"
# The beginning of keys that only the published file of each appendix-E architecture has.
PUBLISHED_APPENDIX_E_MARKERS = {
    "senet154": "features.layer0.conv3.",
    "nasnetamobile": "features.0.base_net.reduction_cell_0.",
    "pnasnet5large": "features.0.base_net.cell_stem_0.",
}


def _settings(p, whitened):
    return f"p={p:.4g}, whitening {'yes' if whitened else 'no'}"


def model_settings(model) -> str:
    """E.g. "p=3, whitening yes": what the descriptors of a MultiGrainNet depend on besides its weights and
    its input."""
    return _settings(float(model.pool.p), model.whitening is not None)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelFile:
    """A checkpoint file read and checked by open_model."""

    path: str
    # As read: train.py continues a training state from its optimizer, criterion, ... entries.
    checkpoint: dict = dataclasses.field(repr=False)
    kind: str  # checkpoint_kind: train, finetune_p, whiten, published or model
    architecture: str  # the build_model name
    # The model's state_dict (model_state_dict): this project's keys, finite tensors.
    state: dict = dataclasses.field(repr=False)

    @property
    def p(self) -> float:
        return float(self.state["pool.p"])

    @property
    def whitened(self) -> bool:
        return "whitening.mean" in self.state

    @property
    def num_classes(self) -> int:
        return self.state["classifier.weight"].shape[0]

    @property
    def class_names(self) -> list | None:
        """The names of the classifier's classes in index order (train.py's ImageFolder classes); None for files
        that do not store them (published files, checkpoints written before they did)."""
        return self.checkpoint.get("class_names")

    @property
    def input_size(self) -> int | None:
        """The test resolution s* (largest image side) the model was made for: finetune_p.py's p* and whiten.py's
        whitening store it; None for the other files."""
        return self.checkpoint.get("input_size")

    @property
    def source(self) -> dict:
        """The `source` entry of a checkpoint made from this model."""
        return {"path": os.path.abspath(self.path), "kind": self.kind}

    @property
    def description(self) -> str:
        """E.g. "w/whitened.pth (a whitened model of whiten.py): resnet50, p=3, whitening yes"."""
        return f"{describe(self.checkpoint, self.path)}: {self.architecture}, {_settings(self.p, self.whitened)}"

    def check_num_classes(self, num_classes, classes_of):
        """Refuses a classifier of another number of classes than `num_classes`, those of `classes_of` (the data
        the message names, e.g. "--data-path data/")."""
        if self.num_classes != num_classes:
            raise ValueError(f"{self.path} classifies {self.num_classes} classes, {classes_of} has {num_classes}")

    def _untrained_model(self) -> MultiGrainNet:
        """The architecture's MultiGrainNet with the classifier (and whitening) that the state holds."""
        num_classes, classifier_width = self.state["classifier.weight"].shape
        model = build_model(self.architecture, num_classes=num_classes, pooling_exponent=self.p)
        if self.whitened:
            model.whitening = Whitening(self.state["whitening.mean"], self.state["whitening.projection"])
            model.classifier = classifier_layer(classifier_width, num_classes)
        return model

    def check_fits(self):
        """Refuses (ValueError) a state whose keys or shapes are not those of the architecture, saying how many differ
        and which first: the model is built on the meta device, with no memory and little time, so that a script
        refuses the file before its work."""
        with torch.device("meta"):
            expected = {key: value.shape for key, value in self._untrained_model().state_dict().items()}
        # Batch norm counters are optional: files written before torch kept them load without them.
        missing = [key for key in expected if key not in self.state and not key.endswith(".num_batches_tracked")]
        foreign = [key for key in self.state if key not in expected]
        reshaped = [key for key in expected if key in self.state and self.state[key].shape != expected[key]]
        problems = []
        if missing:
            problems.append(f"{len(missing)} tensors of the architecture are missing (e.g. {missing[0]})")
        if foreign:
            problems.append(f"{len(foreign)} tensors are not the architecture's (e.g. {foreign[0]})")
        if reshaped:
            key = reshaped[0]
            shapes = f"{list(self.state[key].shape)}, the architecture's {list(expected[key])}"
            problems.append(f"{len(reshaped)} tensors have other shapes (e.g. {key}: {shapes})")
        if problems:
            raise ValueError(
                f"{self.path} does not fit the architecture {self.architecture}: {', '.join(problems)}; name the "
                "architecture of the file with --model"
            )

    def model(self, device="cpu", *, unwhitened=False, pooling_exponent=None) -> MultiGrainNet:
        """The MultiGrainNet, in eval mode on `device`, with its weights, p and whitening as stored;
        `unwhitened` gives the model before its whitening (the classifier reads g again), `pooling_exponent`
        replaces p. The model carries the file's class_names and input_size as attributes."""
        model = self._untrained_model()
        model.load_state_dict(self.state)
        if unwhitened:
            remove_whitening(model)
        if pooling_exponent is not None:
            model.pool.set_p(pooling_exponent)
        model.class_names, model.input_size = self.class_names, self.input_size
        return model.to(device).eval()


def appendix_e_architecture(checkpoint):
    """The appendix-E architecture of a published file, told by its keys (senet154, pnasnet5large,
    nasnetamobile: multigrain.timm_backbones); None for the others."""
    keys = [key.removeprefix("module.") for key in checkpoint["model_state"]]
    for name, marker in PUBLISHED_APPENDIX_E_MARKERS.items():
        if any(key.startswith(marker) for key in keys):
            return name
    return None


def architecture_name(checkpoint, kind, path, model_name=None) -> str:
    """The architecture of a checkpoint: its `args["model"]` (for the published files, which do not name
    it, the appendix-E architecture their keys tell, else resnet50); `model_name` names it for checkpoints
    that do not, and must agree with it otherwise."""
    published = kind == "published"
    stored_name = appendix_e_architecture(checkpoint) if published else (checkpoint.get("args") or {}).get("model")
    if model_name and stored_name and model_name != stored_name:
        raise ValueError(f"{path} holds a {stored_name} model, but --model is {model_name}")
    name = model_name or stored_name or (PUBLISHED_ARCHITECTURE if published else None)
    if name is None:
        raise ValueError(f"{path} does not name its architecture: pass --model")
    check_model_name(name)
    return name


def check_usage_entries(checkpoint, num_classes, path):
    """Refuses `class_names` that are not one string per class and an `input_size` that is not a positive
    integer (both may be absent or None)."""
    names = checkpoint.get("class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError(f"{path}: its class_names entry is not a list of strings")
        if len(names) != num_classes:
            raise ValueError(f"{path}: its class_names entry has {len(names)} names for {num_classes} classes")
    size = checkpoint.get("input_size")
    if size is not None and (type(size) is not int or size < 1):
        raise ValueError(f"{path}: its input_size entry is {size!r}, not a positive integer")


def open_model(path, *, model_name=None) -> ModelFile:
    """The model file `path`, read once and checked: a ValueError (or the FileNotFoundError, RuntimeError of
    load_checkpoint) says what is wrong with it. `model_name` (--model) names the architecture of checkpoints
    that do not; it must agree with the one they name."""
    path = os.fspath(path)
    checkpoint = load_checkpoint(path)
    state = model_state_dict(checkpoint, path)
    if ("whitening.mean" in state) != ("whitening.projection" in state):
        raise ValueError(f"{path} has only one of whitening.mean and whitening.projection")
    check_usage_entries(checkpoint, state["classifier.weight"].shape[0], path)
    kind = checkpoint_kind(checkpoint)
    model_file = ModelFile(path, checkpoint, kind, architecture_name(checkpoint, kind, path, model_name), state)
    model_file.check_fits()
    return model_file


def check_file_hash(path, source):
    """Refuses (ValueError) a file whose SHA-256 does not begin with the hex digits after the last "-" of the file
    name of `source` (its path or URL), as torch.hub's check_hash does."""
    match = HASH_PREFIX.search(os.path.basename(urllib.parse.urlparse(source).path))
    if match is None:
        raise ValueError(f"check_hash: the file name of {source} carries no hash (NAME-<sha256 prefix>.pth)")
    digest = file_sha256(path)
    if not digest.startswith(match[1]):
        raise ValueError(
            f"{source}: its SHA-256 is {digest}, its name says {match[1]}...: the file is not the one named"
        )


def cache_path(url) -> str:
    """Where a checkpoint URL is kept: torch.hub's checkpoint folder, under the URL's file name prefixed by the
    SHA-256 of the whole URL, so that two URLs ending in the same file name are two files."""
    name = os.path.basename(urllib.parse.urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}")


def download_checkpoint(url, path):
    """Downloads `url` to `path` if it is a checkpoint of this project or a published file: anything else (an
    error page, another kind of file) is refused and not kept."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    downloaded = f"{path}.download-{secrets.token_hex(8)}"
    try:
        try:
            torch.hub.download_url_to_file(url, downloaded, progress=False)
        except OSError as e:
            raise OSError(f"cannot download checkpoint {url}: {e}") from e
        try:
            model_state_dict(load_checkpoint(downloaded), url)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"{url} is not a MultiGrain checkpoint, and is not kept: {e}") from None
        os.replace(downloaded, path)
    finally:
        if os.path.exists(downloaded):
            os.remove(downloaded)


def checkpoint_file(path_or_url, check_hash=False) -> str:
    """The local file of a checkpoint: `path_or_url` itself, or for an http://, https:// or file:// URL the file it
    is downloaded to, once, in torch.hub's cache (cache_path), after checking that it is a checkpoint. With
    `check_hash`, the file's SHA-256 must begin with the digits its name ends with (NAME-<digits>.pth, torch.hub's
    rule). Nothing more is read here: load_checkpoint reads the file safely."""
    path_or_url = os.fspath(path_or_url)
    path = path_or_url
    if "://" in path_or_url:
        url = urllib.parse.urlparse(path_or_url)
        if url.scheme not in ("http", "https", "file") or not os.path.basename(url.path):
            raise ValueError(f"checkpoint URL {path_or_url} is not an http(s):// or file:// URL of a file")
        path = cache_path(path_or_url)
        if not os.path.isfile(path):
            download_checkpoint(path_or_url, path)
    if check_hash:
        check_file_hash(path, path_or_url)
    return path


def load_model(path_or_url, *, model_name=None, device="cpu", check_hash=False) -> MultiGrainNet:
    """The MultiGrainNet stored in a checkpoint file or URL (see checkpoint_file, and for `check_hash`): any
    checkpoint of this project, a published file or export.py's safetensors file, in eval mode, with its pooling
    exponent and whitening as stored, and the `class_names` and `input_size` the file stores as attributes (None
    when it does not: descriptors and classify then use input size 500 and class indices). A file that is not
    one, or whose weights are not finite, is refused with a ValueError saying so.

    The architecture is the checkpoint's `args["model"]` (resnet50 for the published files, which do
    not name it); `model_name` names it for checkpoints that do not, and must agree with it otherwise.
    The number of classes is read from the classifier.
    """
    return open_model(checkpoint_file(path_or_url, check_hash), model_name=model_name).model(device)
