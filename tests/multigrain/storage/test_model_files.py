"""A model file says how to use it: the class names and input size s* it stores reach the ModelFile and the
model load_model builds, whose descriptors and classify default to them; files without them (older checkpoints,
published files) load as before: input size 500, class indices."""

import numpy as np
import pytest
import torch

import multigrain
from multigrain.model import DEFAULT_INPUT_SIZE, build_model
from multigrain.storage.checkpoint import make_checkpoint, save_checkpoint
from multigrain.storage.model_files import open_model
from tools.synthetic_data import render_image

NAMES = ["cat", "dog, black", "émeu"]


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=3).eval().state_dict()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [render_image(0, rng, size=(40, 30)), render_image(1, rng, size=(30, 50))]


def test_class_names_and_input_size_reach_the_model(state, images, tmp_path):
    path = tmp_path / "whitened.pth"
    save_checkpoint(make_checkpoint("whiten", state, {"model": "resnet18"}, class_names=NAMES, input_size=48), path)
    model_file = open_model(path)
    assert model_file.class_names == NAMES and model_file.input_size == 48
    model = multigrain.load_model(path)
    assert model.class_names == NAMES and model.input_size == 48
    assert set(model.state_dict()) == set(state)  # plain attributes, not weights

    default = multigrain.descriptors(model, images)
    torch.testing.assert_close(default, multigrain.descriptors(model, images, 48), rtol=0, atol=0)  # positional
    assert not torch.allclose(default, multigrain.descriptors(model, images, input_size=40), atol=1e-4)

    probabilities, classes = multigrain.classify(model, images, top_k=2)
    with torch.no_grad():
        logits = torch.cat([model(multigrain.eval_transform(48)(image)[None])[0] for image in images])
    expected_probabilities, expected_indices = logits.softmax(dim=1).topk(2, dim=1)
    assert classes == [[NAMES[index] for index in row] for row in expected_indices.tolist()]
    torch.testing.assert_close(probabilities, expected_probabilities)


@pytest.mark.parametrize("layout", ["earlier whiten.py", "no kind", "published"])
def test_files_without_the_entries_load_as_before(state, images, tmp_path, layout):
    path = tmp_path / "model.pth"
    if layout == "earlier whiten.py":  # its args named an input size, but it stored no input_size entry
        torch.save(make_checkpoint("whiten", state, {"model": "resnet18", "input_size": 64}), path)
    elif layout == "no kind":
        torch.save({"model": state, "args": {"model": "resnet18"}}, path)
    else:
        torch.save({"model_state": {"module." + key: value for key, value in state.items()}}, path)
    model_file = open_model(path, model_name="resnet18")
    assert model_file.class_names is None and model_file.input_size is None
    model = model_file.model()
    assert model.class_names is None and model.input_size is None
    torch.testing.assert_close(
        multigrain.descriptors(model, images), multigrain.descriptors(model, images, DEFAULT_INPUT_SIZE)
    )
    probabilities, classes = multigrain.classify(model, images, top_k=3)
    assert isinstance(classes, torch.Tensor) and sorted(classes[0].tolist()) == [0, 1, 2]
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2))


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"class_names": ["a", "b"]}, "its class_names entry has 2 names for 3 classes"),
        ({"class_names": ["a", "b", 3]}, "its class_names entry is not a list of strings"),
        ({"class_names": "abc"}, "its class_names entry is not a list of strings"),
        ({"input_size": 0}, "its input_size entry is 0, not a positive integer"),
        ({"input_size": 96.0}, "its input_size entry is 96.0, not a positive integer"),
        ({"input_size": True}, "its input_size entry is True, not a positive integer"),
    ],
)
def test_bad_entries_are_refused_naming_the_file(state, tmp_path, entries, message):
    path = tmp_path / "whitened.pth"
    save_checkpoint(make_checkpoint("whiten", state, {"model": "resnet18"}, **entries), path)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        open_model(path)
