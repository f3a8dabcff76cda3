"""The safetensors model file: weights and a JSON config in the safetensors format, which the safetensors package
itself reads (no pickle) and load_model reads back, told by its header; damaged or foreign files are refused by
name, a plain state_dict in the format loads with --model."""

import json
import sys

import pytest
import safetensors
import safetensors.torch
import torch

from multigrain.model import build_model
from multigrain.storage.checkpoint import load_checkpoint
from multigrain.storage.model_files import load_model, open_model
from multigrain.storage.safetensors_file import CONFIG_FORMAT, is_safetensors, save_safetensors

NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=3, pooling_exponent=4.0).eval()


def save(model, path, **config):
    config = {"architecture": "resnet18", "class_names": NAMES, "input_size": 96, "source": None, **config}
    save_safetensors(path, model.state_dict(), code_version="test", **config)


def test_the_file_is_plain_safetensors_with_the_config_as_metadata(model, tmp_path):
    path = tmp_path / "model.bin"  # told by its header, whatever its name
    save(model, path)
    assert is_safetensors(path)
    with safetensors.safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["multigrain"])
        assert set(f.keys()) == set(model.state_dict())
    assert config == {
        "format": CONFIG_FORMAT,
        "architecture": "resnet18",
        "class_names": NAMES,
        "input_size": 96,
        "source": None,
        "code_version": "test",
    }
    model_file = open_model(path)
    assert (model_file.kind, model_file.architecture, model_file.p) == ("safetensors", "resnet18", 4.0)
    assert "a safetensors model file of export.py" in model_file.description
    loaded = load_model(path)
    assert loaded.class_names == NAMES and loaded.input_size == 96
    images = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        for output, expected in zip(loaded(images), model(images)):
            assert torch.equal(output, expected)


@pytest.mark.parametrize("legacy_format", [False, True])
def test_a_torch_checkpoint_is_not_taken_for_one(model, tmp_path, legacy_format):
    path = tmp_path / "model.pth"
    checkpoint = {"model": model.state_dict(), "args": {"model": "resnet18"}}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy_format)
    assert not is_safetensors(path)
    assert open_model(path).kind == "model"


def test_a_plain_state_dict_needs_model(model, tmp_path):
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    with pytest.raises(ValueError, match=f"{path} does not name its architecture: pass --model"):
        open_model(path)
    loaded = open_model(path, model_name="resnet18").model()
    assert loaded.class_names is None and loaded.input_size is None
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)


def test_damaged_and_foreign_files_are_refused_by_name(model, tmp_path):
    path = tmp_path / "model.safetensors"
    save(model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{path} is not a readable safetensors file"):
        load_checkpoint(str(path))
    safetensors.torch.save_file(model.state_dict(), str(path), metadata={"multigrain": "{not json"})
    with pytest.raises(ValueError, match=f"{path}: its 'multigrain' config is not JSON"):
        load_checkpoint(str(path))
    safetensors.torch.save_file(model.state_dict(), str(path), metadata={"multigrain": '{"format": "other"}'})
    with pytest.raises(ValueError, match=f"{path}: its 'multigrain' config is not a '{CONFIG_FORMAT}'"):
        load_checkpoint(str(path))
    save(model, path, class_names=["a"])
    with pytest.raises(ValueError, match=f"{path}: its class_names entry has 1 names for 3 classes"):
        open_model(path)


def test_without_the_package_the_file_names_the_extra(model, tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save(model, path)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors now raises ImportError
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ValueError, match=rf"reading {path} needs the package safetensors: pip install 'multigrain\[sa"):
        load_model(path)
