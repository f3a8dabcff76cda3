import pytest
import torch

from multigrain.model import build_model, l2n


def test_unknown_model_lists_the_supported_ones():
    with pytest.raises(ValueError, match="supported models: .*resnet50"):
        build_model("vit_b_16")


def test_weights_of_another_model_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid: DEFAULT, ResNet18_Weights.IMAGENET1K_V1"):
        build_model("resnet18", weights="ResNet50_Weights.IMAGENET1K_V1")


@pytest.mark.parametrize("name", ["resnet18", "regnet_x_400mf", "efficientnet_b0"])
def test_the_classifier_and_the_descriptor_read_the_gem_vector(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, pooling_exponent=3.0).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, descriptors = model(images)
        pooled = model.pooled(images)
    assert float(model.pool.p) == 3.0
    assert pooled.shape == (2, model.embedding_dim) and logits.shape == (2, 5)
    torch.testing.assert_close(logits, model.classifier(pooled))
    torch.testing.assert_close(descriptors, l2n(pooled))
