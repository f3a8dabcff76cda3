import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from multigrain.checkpoint import load_model
from multigrain.model import MultiGrainNet, l2n
from multigrain.whitening import Whitening, fit_whitening, fold_whitening, remove_whitening
from tools.synthetic_data import make_imagefolder

import train
import whiten

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(num_classes=10, seed=0):
    torch.manual_seed(seed)
    features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 20, 3, stride=2), nn.ReLU())
    return MultiGrainNet(features, nn.Linear(20, num_classes), p=3.0).eval()


def random_images(count, seed, size=(14, 12)):
    return torch.rand(count, 3, *size, generator=torch.Generator().manual_seed(seed)) * 2 - 0.5


@pytest.fixture(scope="module")
def whitened_pair():
    """An unwhitened model, its whitened copy fitted on 300 images, and those images."""
    model = tiny_model()
    fitting_images = random_images(300, seed=1)
    with torch.no_grad():
        pooled = model.pooled(fitting_images)
    whitened = tiny_model()
    fold_whitening(whitened, *fit_whitening(pooled))
    return model, whitened, fitting_images


def test_whitened_descriptors_of_the_fitting_set_have_identity_covariance(whitened_pair):
    _, whitened, fitting_images = whitened_pair
    with torch.no_grad():
        e = whitened.embedding(fitting_images)
    assert e.dtype == torch.float32 and e.shape == (300, 21)
    covariance = torch.cov(e.double().T)
    assert (covariance - torch.eye(21, dtype=torch.float64)).abs().max() < 1e-4
    assert e.double().mean(dim=0).abs().max() < 1e-4


def test_whitened_predictions_equal_unwhitened_up_to_a_positive_factor_per_image(whitened_pair):
    model, whitened, _ = whitened_pair
    test_images = random_images(40, seed=2)
    with torch.no_grad():
        logits, _ = model(test_images)
        new_logits, descriptors = whitened(test_images)
        g = model.pooled(test_images)
    assert torch.equal(logits.topk(5).indices, new_logits.topk(5).indices)
    factor = 1.0 / (torch.cat([g, torch.ones(40, 1)], dim=1).norm(dim=1) + 1e-6)
    assert (factor > 0).all()
    torch.testing.assert_close(new_logits, logits * factor[:, None], rtol=1e-4, atol=1e-5 * logits.abs().max().item())
    fitted_factor = (new_logits * logits).sum(dim=1) / (logits * logits).sum(dim=1)  # least squares, per image
    torch.testing.assert_close(fitted_factor, factor, rtol=1e-4, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(descriptors, l2n(whitened.embedding(test_images)))


def test_a_stored_descriptor_is_classified_like_its_image(whitened_pair, tmp_path):
    _, whitened, _ = whitened_pair
    test_images = random_images(8, seed=3)
    with torch.no_grad():
        torch.save(whitened.embedding(test_images), tmp_path / "descriptors.pth")
        logits, descriptors = whitened(test_images)
    stored = torch.load(tmp_path / "descriptors.pth", weights_only=True)
    with torch.no_grad():
        from_descriptor = whitened.classifier(stored)
    assert torch.equal(from_descriptor, logits)
    assert torch.equal(l2n(stored), descriptors)


def test_removing_the_whitening_restores_the_classifier(whitened_pair):
    model, whitened, _ = whitened_pair
    restored = tiny_model()
    fold_whitening(restored, whitened.whitening.mean, whitened.whitening.projection)
    remove_whitening(restored)
    assert restored.whitening is None and "whitening.mean" not in restored.state_dict()
    torch.testing.assert_close(restored.classifier.weight, model.classifier.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(restored.classifier.bias, model.classifier.bias, rtol=1e-4, atol=1e-5)


def test_whitening_runs_in_float32_under_autocast(whitened_pair):
    _, whitened, _ = whitened_pair
    g = torch.rand(4, 20)
    reference = whitened.whitening(g)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        e = whitened.whitening(g.bfloat16())
    assert e.dtype == torch.float32
    torch.testing.assert_close(e, whitened.whitening(g.bfloat16().float()))
    assert reference.dtype == torch.float32


def test_too_few_images_are_refused_unless_shrinkage():
    pooled = torch.rand(21, 20)  # 21 vectors [g; 1] of 21 dimensions: one image short
    with pytest.raises(ValueError, match="at least 22 images"):
        fit_whitening(pooled)
    mean, projection = fit_whitening(pooled, shrinkage=0.1)
    model = tiny_model()
    with torch.no_grad():
        images = random_images(30, seed=4)
        logits, _ = model(images)
        fold_whitening(model, mean, projection)
        new_logits, _ = model(images)
    assert torch.equal(logits.topk(5).indices, new_logits.topk(5).indices)


def test_degenerate_descriptors_are_refused_unless_shrinkage():
    pooled = torch.rand(100, 20)
    pooled[:, 3] = 1e-6  # a channel that is zero (clamped to GeM's eps) on every image
    with pytest.raises(ValueError, match="shrinkage"):
        fit_whitening(pooled)
    mean, projection = fit_whitening(pooled, shrinkage=0.05)
    assert torch.isfinite(projection).all()


def test_bad_shrinkage_and_already_whitened_are_refused(whitened_pair):
    _, whitened, _ = whitened_pair
    with pytest.raises(ValueError, match="shrinkage"):
        fit_whitening(torch.rand(50, 4), shrinkage=1.0)
    with pytest.raises(ValueError, match="already whitened"):
        fold_whitening(whitened, whitened.whitening.mean, whitened.whitening.projection)
    with pytest.raises(ValueError, match="mean"):
        Whitening(torch.zeros(3), torch.zeros(4, 4))


def test_image_names_from_a_tree_or_a_list(tmp_path):
    for name in ("b/2.jpg", "a/1.PNG", "a/notes.txt", "c.jpeg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert whiten.whitening_image_names(str(tmp_path)) == ["a/1.PNG", "b/2.jpg", "c.jpeg"]
    assert whiten.whitening_image_names(str(tmp_path), limit=2) == ["a/1.PNG", "b/2.jpg"]
    with pytest.raises(ValueError, match="--num-whiten-images 4"):
        whiten.whitening_image_names(str(tmp_path), limit=4)
    listing = tmp_path / "list.txt"
    listing.write_text("c.jpeg\n\nb/2.jpg\n")
    assert whiten.whitening_image_names(str(tmp_path), str(listing)) == ["c.jpeg", "b/2.jpg"]
    listing.write_text("c.jpeg\nmissing/3.jpg\n")
    with pytest.raises(FileNotFoundError, match="missing/3.jpg"):
        whiten.whitening_image_names(str(tmp_path), str(listing))


def run_script(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    command = [sys.executable, script, *args]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def test_train_finetune_p_whiten_chain(tmp_path):
    data, whitening_images = tmp_path / "data", tmp_path / "whiten_images"
    make_imagefolder(data, num_classes=3, train_per_class=8, val_per_class=4, image_size=32, seed=1)
    # 52 classes x 11 images = 572 images, more than the 514 that resnet18's 513-d [g; 1] needs.
    make_imagefolder(whitening_images, num_classes=52, train_per_class=10, val_per_class=1, image_size=(24, 16), seed=2)
    small = ["--device", "cpu", "-j", "0"]
    run_script(
        "train.py",
        "--data-path",
        str(data),
        "--output-dir",
        str(tmp_path / "train"),
        "--model",
        "resnet18",
        *small,
        "--epochs",
        "1",
        "-b",
        "12",
        "--train-crop-size",
        "32",
        "--val-resize-size",
        "36",
        "--val-crop-size",
        "32",
        "--print-freq",
        "1000",
        "--lr",
        "0.01",
    )
    run_script(
        "finetune_p.py",
        "--data-path",
        str(data),
        "--resume",
        str(tmp_path / "train" / "checkpoint.pth"),
        "--output-dir",
        str(tmp_path / "finetune"),
        "--input-size",
        "32",
        *small,
    )
    out = run_script(
        "whiten.py",
        "--resume",
        str(tmp_path / "finetune" / "checkpoint.pth"),
        "--whiten-path",
        str(whitening_images),
        "--output-dir",
        str(tmp_path / "whiten"),
        "--input-size",
        "32",
        *small,
    )
    assert "same top-5 classes: 100.00%" in out

    finetune_log = [json.loads(line) for line in (tmp_path / "finetune" / "log.jsonl").read_text().splitlines()]
    assert [record.get("iteration") for record in finetune_log] == [0, 1, 2, 3, 4, 5, None]
    finetuned = load_model(str(tmp_path / "finetune" / "checkpoint.pth"))
    whitened = load_model(str(tmp_path / "whiten" / "checkpoint.pth"))
    assert float(finetuned.pool.p) == pytest.approx(finetune_log[-1]["p"])
    assert float(whitened.pool.p) == float(finetuned.pool.p)
    assert whitened.whitening is not None and whitened.classifier.in_features == 513
    whiten_log = json.loads((tmp_path / "whiten" / "log.jsonl").read_text())
    assert whiten_log["num_images"] == 572 and whiten_log["covariance_error"] < 1e-3

    images = random_images(6, seed=5, size=(32, 24))
    with torch.no_grad():
        logits, _ = finetuned(images)
        new_logits, _ = whitened(images)
    assert torch.equal(logits.topk(3).indices, new_logits.topk(3).indices)

    # At 32 x 32, the validation crop of train.py sees the images finetune_p validated on.
    args = [
        "--test-only",
        "--resume",
        str(tmp_path / "whiten" / "checkpoint.pth"),
        "--model",
        "resnet18",
        "--data-path",
        str(data),
        "--val-resize-size",
        "32",
        "--val-crop-size",
        "32",
        "--print-freq",
        "1000",
        *small,
    ]
    metrics = train.main(train.get_args_parser().parse_args(args))
    assert metrics["images"] == 12
    assert (metrics["acc1"], metrics["acc5"]) == (finetune_log[-1]["val_acc1"], finetune_log[-1]["val_acc5"])
