"""The inference model exported by export.py (torch.export, ONNX) and scripted by torch.jit.script gives the
eager model's logits and descriptors, on batches of other sizes and aspect ratios than the traced one."""

import importlib.util

import pytest
import torch

import export
import utils
from multigrain import load_model

# Batches whose height and width differ from each other and from export.EXAMPLE_SHAPE, thin ones (a side under
# the trunk's stride of 32, down to 1 px) among them: the README promises any height and width.
SHAPES = ((1, 3, 48, 80), (2, 3, 72, 40), (1, 3, 24, 300), (2, 3, 300, 20), (1, 3, 1, 45), (1, 3, 45, 1), (1, 3, 1, 1))


def assert_same_outputs(run, model):
    generator = torch.Generator().manual_seed(1)
    for shape in SHAPES:
        images = torch.randn(shape, generator=generator)
        with torch.no_grad():
            logits, descriptors = model(images)
        exported_logits, exported_descriptors = run(images)
        assert exported_logits.shape == logits.shape and exported_descriptors.shape == descriptors.shape
        torch.testing.assert_close(exported_logits, logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(exported_descriptors, descriptors, rtol=1e-4, atol=1e-6)


def run_export(*argv):
    export.main(export.get_args_parser().parse_args(list(map(str, argv))))


def test_torch_export_command(tiny_whitened_checkpoint, tmp_path):
    output = tmp_path / "multigrain.pt2"
    run_export("--resume", tiny_whitened_checkpoint, "--output", output)
    model = load_model(tiny_whitened_checkpoint)
    assert model.whitening is not None and float(model.pool.p) == 3.0
    program = torch.export.load(str(output))
    assert_same_outputs(program.module(), model)
    assert [path.name for path in tmp_path.iterdir()] == ["multigrain.pt2"]  # no temporary file left


def test_onnx_command(tiny_whitened_checkpoint, tmp_path):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    output = tmp_path / "multigrain.onnx"
    run_export("--checkpoint", tiny_whitened_checkpoint, "--output", output)
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["images"]
    assert [node.name for node in session.get_outputs()] == ["logits", "descriptors"]
    assert_same_outputs(export.onnx_runner(str(output)), load_model(tiny_whitened_checkpoint))


def test_safetensors_command_reads_back_to_the_same_model(tiny_whitened_checkpoint, tmp_path, capsys):
    checkpoint = torch.load(tiny_whitened_checkpoint, weights_only=True)
    names = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead"]
    source = tmp_path / "whitened.pth"
    torch.save({**checkpoint, "class_names": names, "input_size": 96}, source)
    output = tmp_path / "multigrain.safetensors"
    run_export("--checkpoint", source, "--output", output)
    assert "resnet18 (p=3, whitening yes; 5 class names, input size 96) exported to" in capsys.readouterr().out
    model, exported = load_model(source), load_model(output)
    assert (exported.class_names, exported.input_size) == (names, 96)
    assert exported.whitening is not None and float(exported.pool.p) == 3.0
    assert_same_outputs(exported, model)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["multigrain.safetensors", "whitened.pth"]


def test_torch_jit_script_of_the_whitened_model(tiny_whitened_checkpoint):
    model = load_model(tiny_whitened_checkpoint)
    scripted = torch.jit.script(model)
    assert_same_outputs(scripted, model)


def test_bad_arguments(tiny_whitened_checkpoint, tmp_path, monkeypatch):
    with pytest.raises(utils.UsageError, match=r"--output .*model\.zip must end with \.pt2, \.onnx or \.safetensors"):
        run_export("--resume", tiny_whitened_checkpoint, "--output", tmp_path / "model.zip")
    with pytest.raises(utils.UsageError, match="checkpoint .*missing.pth does not exist"):
        run_export("--resume", tmp_path / "missing.pth", "--output", tmp_path / "model.pt2")
    with pytest.raises(utils.UsageError, match="holds a resnet18 model, but --model is resnet50"):
        run_export("--resume", tiny_whitened_checkpoint, "--model", "resnet50", "--output", tmp_path / "model.pt2")
    with pytest.raises(utils.UsageError, match=r"--output .*folder.pt2 is a folder"):
        (tmp_path / "folder.pt2").mkdir()
        run_export("--resume", tiny_whitened_checkpoint, "--output", tmp_path / "folder.pt2")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "onnxscript" else find_spec(name))
    with pytest.raises(utils.UsageError, match=r"needs the packages onnxscript: pip install 'multigrain\[onnx\]'"):
        run_export("--resume", tiny_whitened_checkpoint, "--output", tmp_path / "model.onnx")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "safetensors" else find_spec(name))
    with pytest.raises(
        utils.UsageError, match=r"needs the packages safetensors: pip install 'multigrain\[safetensors\]'"
    ):
        run_export("--resume", tiny_whitened_checkpoint, "--output", tmp_path / "model.safetensors")
    assert [path.name for path in tmp_path.iterdir()] == ["folder.pt2"]
