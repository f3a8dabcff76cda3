import pytest
import torch
from torch import nn

from multigrain.model import MultiGrainNet, l2n
from multigrain.whitening import Whitening, fit_whitening, fold_whitening, remove_whitening


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
