"""hubconf.py through torch.hub with source="local": checkpoints from files and file:// URLs (downloaded once into
$TORCH_HOME/hub/checkpoints), the torch.hub example of docs/own_images.md, and refusals."""

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import export
from multigrain import load_model
from multigrain.model import MultiGrainNet, build_model
from multigrain.storage.model_files import cache_path
from tests.scripts import ROOT
from tests.test_package import readme_code


@pytest.fixture(autouse=True)
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def hub_load(entry, **kwargs):
    return torch.hub.load(str(ROOT), entry, source="local", **kwargs)


def test_entry_points_and_dependencies():
    """torch.hub.list's rule (it reads GitHub repositories only): every public callable of hubconf is an entry."""
    import hubconf

    entries = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    assert entries == ["eval_transform", "multigrain", "multigrain_resnet50"]
    assert hubconf.dependencies == ["torch", "torchvision", "numpy", "scipy", "PIL"]


def test_file_url_is_downloaded_once_and_loaded_as_stored(tiny_whitened_checkpoint, tmp_path, torch_home):
    served = tmp_path / "served" / "whitened.pth"
    served.parent.mkdir()
    shutil.copy(tiny_whitened_checkpoint, served)
    model = hub_load("multigrain", checkpoint=served.as_uri())
    cached = torch_home / "hub" / "checkpoints" / Path(cache_path(served.as_uri())).name
    assert cached.is_file() and cached.name.endswith("-whitened.pth")
    assert not model.training and model.whitening is not None and float(model.pool.p) == 3.0
    expected = load_model(tiny_whitened_checkpoint).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    served.unlink()
    again = hub_load("multigrain", checkpoint=served.as_uri(), architecture="resnet18")  # from the cache
    assert all(torch.equal(value, expected[key]) for key, value in again.state_dict().items())


def test_safetensors_file_through_a_url(tiny_whitened_checkpoint, tmp_path, torch_home):
    checkpoint = torch.load(tiny_whitened_checkpoint, weights_only=True)
    source = tmp_path / "whitened.pth"
    torch.save({**checkpoint, "class_names": list("abcde"), "input_size": 80}, source)
    served = tmp_path / "served" / "multigrain.safetensors"
    export.main(export.get_args_parser().parse_args(["--checkpoint", str(source), "--output", str(served)]))
    model = hub_load("multigrain", checkpoint=served.as_uri())
    assert (torch_home / "hub" / "checkpoints" / Path(cache_path(served.as_uri())).name).is_file()
    assert model.class_names == list("abcde") and model.input_size == 80 and not model.training
    expected = load_model(source).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())


def test_readme_example(tiny_whitened_checkpoint, tmp_path, monkeypatch):
    """The torch.hub lines of docs/own_images.md: this repository for its folder, a file:// URL for its https:// URL."""
    published = build_model("resnet50", num_classes=3, pooling_exponent=4.0).state_dict()
    url_file = tmp_path / "joint_3B_0.5.pth"
    torch.save({"model_state": {"module." + key: value for key, value in published.items()}}, url_file)
    shutil.copy(tiny_whitened_checkpoint, tmp_path / "whitened.pth")
    monkeypatch.chdir(tmp_path)
    code = readme_code("docs/own_images.md", "## torch.hub", "python")
    code = code.replace('"path/to/this/repository"', repr(str(ROOT)))
    code = code.replace('"https://example.com/joint_3B_0.5.pth"', repr(url_file.as_uri()))
    namespace = {}
    exec(code, namespace)
    model, resnet50, transform = namespace["model"], namespace["resnet50"], namespace["transform"]
    assert isinstance(model, MultiGrainNet) and model.whitening is not None
    assert isinstance(resnet50, MultiGrainNet) and not resnet50.training and float(resnet50.pool.p) == 4.0
    assert torch.equal(resnet50.classifier.weight, published["classifier.weight"])
    assert transform(Image.new("RGB", (100, 40))).shape == (3, 200, 500)


def test_refusals(tiny_whitened_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="holds a resnet18 model, but --model is resnet50"):
        hub_load("multigrain_resnet50", checkpoint=str(tiny_whitened_checkpoint))
    with pytest.raises(TypeError, match="unexpected keyword argument 'pooling_exponent'"):
        hub_load("multigrain", checkpoint=str(tiny_whitened_checkpoint), pooling_exponent=2.0)
    with pytest.raises(FileNotFoundError, match=f"checkpoint {tmp_path / 'none.pth'} does not exist"):
        hub_load("multigrain", checkpoint=str(tmp_path / "none.pth"))
    with pytest.raises(OSError, match=f"cannot download checkpoint {(tmp_path / 'gone.pth').as_uri()}"):
        hub_load("multigrain", checkpoint=(tmp_path / "gone.pth").as_uri())
    with pytest.raises(RuntimeError, match="Cannot find callable resnet18 in hubconf"):
        hub_load("resnet18", checkpoint=str(tiny_whitened_checkpoint))
