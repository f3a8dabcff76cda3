"""The installable package: `pip install` into a fresh virtual environment, the README's Python example run with the
installed copy from a folder outside the repository, and the public API of multigrain/__init__.py."""

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import multigrain
from multigrain.images.image_io import BadImageError
from tests.scripts import ROOT
from tools.synthetic_data import make_variant, render_image

NOT_COPIED = shutil.ignore_patterns(".venv", ".git", "data", "output", "build", "*.egg-info", "__pycache__", ".*cache")


def readme_code(document, heading, language):
    """The first ```language block after `heading` in `document` (README.md or a page of docs/)."""
    after_heading = (ROOT / document).read_text().split(f"\n{heading}\n", 1)[1]
    return after_heading.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def write_readme_photos(folder):
    """The three images the README's example names: a picture, an attacked copy of it, another picture."""
    rng = np.random.default_rng(0)
    (folder / "photos").mkdir(parents=True)
    beach = render_image(0, rng, size=(80, 60))
    beach.save(folder / "photos" / "beach.jpg")
    make_variant(beach, rng, strength=0.3).save(folder / "photos" / "beach_copy.jpg")
    render_image(3, rng, size=(48, 72)).save(folder / "photos" / "city.png")
    return [folder / "photos" / name for name in ("beach.jpg", "beach_copy.jpg", "city.png")]


@pytest.mark.slow
def test_pip_install_alone_and_the_readme_example_from_another_folder(tiny_whitened_checkpoint, tmp_path):
    source = tmp_path / "clone"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    (env_site,) = (env / "lib").glob("python3*/site-packages")
    # The heavy dependencies (torch, ...) and pip/setuptools come from the test's environment, after the env's own.
    shared_site = next(path for path in site.getsitepackages() if (Path(path) / "torch").is_dir())
    (env_site / "dependencies.pth").write_text(shared_site + "\n")
    python = str(env / "bin" / "python")
    clean_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet", str(source)],
        capture_output=True,
        text=True,
        env=clean_env,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    installed = {path.name for path in env_site.iterdir()}
    assert installed == {"multigrain", "multigrain-0.1.0.dist-info", "dependencies.pth"}
    record = (env_site / "multigrain-0.1.0.dist-info" / "RECORD").read_text().splitlines()
    assert {line.split("/")[0] for line in record} == {"multigrain", "multigrain-0.1.0.dist-info"}
    assert {line.split(",")[0] for line in record} >= {"multigrain/__init__.py", "multigrain/inference/api.py"}

    work = tmp_path / "elsewhere"
    images = write_readme_photos(work)
    # A whitened model as whiten.py writes it now: with its class names and its s*.
    names = ["beach", "city", "forest", "desert", "snow"]
    checkpoint = torch.load(tiny_whitened_checkpoint, weights_only=True)
    torch.save({**checkpoint, "class_names": names, "input_size": 96}, work / "whitened.pth")
    (work / "example.py").write_text(readme_code("README.md", "### From Python", "python"))
    runner = (
        "import json, multigrain\n"
        "namespace = {}\n"
        "exec(open('example.py').read(), namespace)\n"
        "print(json.dumps({'file': multigrain.__file__, 'features': namespace['features'].tolist(),\n"
        "    'similarities': namespace['similarities'].tolist(), 'classes': namespace['classes']}))\n"
    )
    run = subprocess.run([python, "-c", runner], cwd=work, capture_output=True, text=True, env=clean_env, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert Path(result["file"]).resolve() == (env_site / "multigrain" / "__init__.py").resolve()

    model = multigrain.load_model(tiny_whitened_checkpoint)
    expected = multigrain.descriptors(model, images, input_size=96)
    torch.testing.assert_close(torch.tensor(result["features"]), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(result["similarities"]).diagonal(), torch.ones(3), rtol=0, atol=1e-5)
    _, indices = multigrain.classify(model, images, input_size=96, top_k=3)
    assert result["classes"] == [[names[index] for index in row] for row in indices.tolist()]
    assert f"{names} 96" in run.stdout


@pytest.fixture(scope="module")
def model(tiny_whitened_checkpoint):
    return multigrain.load_model(tiny_whitened_checkpoint)


@pytest.fixture
def images(tmp_path):
    """Paths and PIL images (grayscale and RGBA too) of three sizes, two of them equal: batched together."""
    paths = write_readme_photos(tmp_path)
    rng = np.random.default_rng(1)
    return [
        paths[0],
        str(paths[2]),
        render_image(5, rng, size=(80, 60)).convert("L"),
        render_image(6, rng, size=(70, 50)).convert("RGBA"),
        Image.open(paths[1]).convert("RGB"),
    ]


def one_at_a_time(model, images, input_size):
    """The model's (logits, descriptors) of each image on its own."""
    transform = multigrain.eval_transform(input_size)
    outputs = []
    for image in images:
        image = Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else image.convert("RGB")
        with torch.no_grad():
            outputs.append(model(transform(image)[None]))
    return torch.cat([logits for logits, _ in outputs]), torch.cat([descriptor for _, descriptor in outputs])


def test_descriptors_and_classes_are_those_of_each_image_on_its_own(model, images):
    logits, expected = one_at_a_time(model, images, input_size=64)
    features = multigrain.descriptors(model, images, input_size=64, batch_size=2)
    assert features.dtype == torch.float32 and features.shape == (5, model.classifier.in_features)
    torch.testing.assert_close(features, expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(5))

    probabilities, classes = multigrain.classify(model, images, input_size=64, top_k=3)
    expected_probabilities, expected_classes = logits.softmax(dim=1).topk(3, dim=1)
    assert torch.equal(classes, expected_classes)
    torch.testing.assert_close(probabilities, expected_probabilities)
    assert (probabilities[:, :-1] >= probabilities[:, 1:]).all()


def test_compare_is_the_cosine_similarity():
    a, b = torch.randn(4, 8, dtype=torch.float64), np.random.default_rng(0).normal(size=(3, 8))
    similarities = multigrain.compare(a * 5, b)
    assert similarities.shape == (4, 3)
    expected = torch.nn.functional.cosine_similarity(a[:, None].float(), torch.tensor(b)[None].float(), dim=2)
    torch.testing.assert_close(similarities, expected)
    with pytest.raises(ValueError, match=r"got shapes \(4, 8\) and \(3, 7\)"):
        multigrain.compare(a, b[:, :7])


def test_bad_inputs_are_named(model, images, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image {tmp_path / 'missing.jpg'} does not exist"):
        multigrain.descriptors(model, [images[0], tmp_path / "missing.jpg"], input_size=64)
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(BadImageError, match=f"cannot read image {tmp_path / 'notes.jpg'}"):
        multigrain.descriptors(model, [tmp_path / "notes.jpg"], input_size=64)
    with pytest.raises(TypeError, match="a list of PIL images or image paths, not a single one"):
        multigrain.descriptors(model, str(images[1]), input_size=64)
    with pytest.raises(TypeError, match="image 1 is a Tensor"):
        multigrain.descriptors(model, [images[0], torch.zeros(3, 8, 8)], input_size=64)
    with pytest.raises(ValueError, match="no images given"):
        multigrain.descriptors(model, [], input_size=64)
    with pytest.raises(ValueError, match="top_k must be between 1 and the 5 classes"):
        multigrain.classify(model, images[:1], input_size=64, top_k=6)
    with pytest.raises(FileNotFoundError, match=f"checkpoint {tmp_path / 'none.pth'} does not exist"):
        multigrain.load_model(tmp_path / "none.pth")
    with pytest.raises(ValueError, match="ftp://host/w.pth is not an http"):
        multigrain.load_model("ftp://host/w.pth")
