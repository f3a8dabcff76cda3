"""Files in the layout of the published MultiGrain checkpoints (joint_3B_0.5.pth ...), written here from
a ResNet-50 of ours with random weights, since the real files cannot be downloaded in the tests."""

import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import finetune_p
import train
import whiten
from multigrain.model import build_model
from multigrain.storage.checkpoint import load_checkpoint
from multigrain.storage.model_files import load_model
from tools.synthetic_data import make_imagefolder


class RunsCodeWhenUnpickled:
    """Unpickling this calls os.makedirs(path): a stand-in for code hidden in a checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.makedirs, (self.path,)


def random_resnet50(num_classes, seed=0):
    torch.manual_seed(seed)
    model = build_model("resnet50", num_classes=num_classes, pooling_exponent=3.0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    model.pool.set_p(4.25)
    return model.eval()


def images():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(3, 40, 32, generator=generator), torch.randn(3, 32, 40, generator=generator)]


def outputs(model):
    with torch.no_grad():
        results = [model(image[None]) for image in images()]
    return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])


def published_file(path, model_state, legacy_format=False, **extra):
    """A dict like the published files: `model_state`, and `optimizer_state` pickled as the bound method
    optimizer.state_dict (as the original checkpoint code did)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9)
    checkpoint = {"model_state": model_state, "optimizer_state": optimizer.state_dict, **extra}
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy_format)
    return str(path)


@pytest.fixture(scope="module")
def resnet50():
    """A random ResNet-50 with 1000 classes, its outputs on images() and their pooled vectors g."""
    model = random_resnet50(num_classes=1000)
    with torch.no_grad():
        pooled = torch.cat([model.pooled(image[None]) for image in images()])
    return model, outputs(model), pooled


@pytest.mark.parametrize(
    "prefix, legacy_format, batch_counts",
    [("", False, True), ("module.", True, False)],
    ids=["plain", "module-prefix-legacy-format-no-num-batches-tracked"],
)
def test_published_layout_loads_with_identical_outputs(resnet50, tmp_path, prefix, legacy_format, batch_counts):
    model, (logits, descriptors), _ = resnet50
    state = {
        prefix + key: value
        for key, value in model.state_dict().items()
        if batch_counts or not key.endswith("num_batches_tracked")
    }
    assert {"features.conv1.weight", "features.layer4.2.bn3.running_var", "pool.p"} <= set(model.state_dict())
    path = published_file(tmp_path / "joint_3B_0.5.pth", state, legacy_format=legacy_format, epoch=120)
    loaded = load_model(path)
    assert loaded.whitening is None and float(loaded.pool.p) == 4.25
    new_logits, new_descriptors = outputs(loaded)
    assert torch.equal(new_logits, logits) and torch.equal(new_descriptors, descriptors)


def published_whitened_forward(g, mean, projection, weight, bias):
    """The published whitened model after GeM, step by step: the bias channel [g; 1], l2n, PCA (x − m)·P,
    a plain Linear on the whitened vector, and the descriptor l2n of the whitened vector."""
    g_with_bias = torch.cat([g, torch.ones(len(g), 1)], dim=1)
    normalized = g_with_bias / (g_with_bias.norm(dim=1, keepdim=True) + 1e-6)
    whitened = torch.matmul(normalized - mean, projection)
    return F.linear(whitened, weight, bias), whitened / (whitened.norm(dim=1, keepdim=True) + 1e-6)


def test_published_whitened_layout_loads_with_identical_outputs(resnet50, tmp_path):
    model, (logits, _), pooled = resnet50
    generator = torch.Generator().manual_seed(1)
    mean = torch.rand(2049, generator=generator) * 0.04
    projection = torch.eye(2049) * 30 + torch.randn(2049, 2049, generator=generator) * 0.3
    weight_bias = torch.cat([model.classifier.weight, model.classifier.bias[:, None]], dim=1).detach().double()
    weight = (weight_bias @ torch.linalg.inv(projection.double().T)).float()  # as the published whiten.py
    bias = (weight_bias @ mean.double()).float()
    state = {f"module.{key}": value for key, value in model.state_dict().items() if not key.startswith("classifier")}
    state.update(
        {
            "module.classifier.weight": weight,
            "module.classifier.bias": bias,
            "module.whitening.pca.pca_P": projection,
            "module.whitening.pca.pca_m": mean,
        }
    )
    path = published_file(tmp_path / "joint_3B_0.5_whitened.pth", state)

    loaded = load_model(path)
    assert loaded.whitening is not None and loaded.classifier.weight.shape == (1000, 2049)
    expected_logits, expected_descriptors = published_whitened_forward(pooled, mean, projection, weight, bias)
    new_logits, new_descriptors = outputs(loaded)
    torch.testing.assert_close(new_logits, expected_logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(new_descriptors, expected_descriptors, rtol=1e-6, atol=1e-7)
    assert torch.equal(new_logits.topk(5).indices, logits.topk(5).indices)  # folding kept the predictions


def test_code_in_a_checkpoint_is_never_run(resnet50, tmp_path, capsys):
    model, _, _ = resnet50
    marker = tmp_path / "created-by-unpickling"
    path = published_file(tmp_path / "published.pth", model.state_dict(), extra=RunsCodeWhenUnpickled(str(marker)))
    checkpoint = load_checkpoint(path)
    assert set(checkpoint) == {"model_state"}
    message = capsys.readouterr().out
    assert "'optimizer_state'" in message and "'extra'" in message and "makedirs" in message
    loaded = load_model(path).state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())
    assert not marker.exists()

    crafted = {
        "not-a-checkpoint.pth": RunsCodeWhenUnpickled(str(marker)),
        "our-layout.pth": {"model": RunsCodeWhenUnpickled(str(marker)), "args": {"model": "resnet50"}},
        "published-layout.pth": {"model_state": {"pool.p": torch.tensor(3.0), "x": RunsCodeWhenUnpickled(str(marker))}},
    }
    for name, content in crafted.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(RuntimeError, match=f"cannot load checkpoint .*{name} safely"):
            load_checkpoint(str(tmp_path / name))
    assert not marker.exists()


def test_every_script_accepts_a_published_file(tmp_path):
    # A ResNet-18 in the published layout, named with --model, keeps the whitening fit small (513-d).
    torch.manual_seed(2)
    model = build_model("resnet18", num_classes=3, pooling_exponent=4.25)
    path = published_file(tmp_path / "published.pth", {f"module.{k}": v for k, v in model.state_dict().items()})
    data = tmp_path / "data"
    make_imagefolder(data, num_classes=3, train_per_class=2, val_per_class=1, image_size=32, seed=3)
    small = ["--model", "resnet18", "--device", "cpu", "-j", "0"]

    metrics = train.main(
        train.get_args_parser().parse_args(
            [
                "--test-only",
                "--resume",
                path,
                "--data-path",
                str(data),
                "--val-resize-size",
                "36",
                "--val-crop-size",
                "32",
                "--print-freq",
                "1000",
                *small,
            ]
        )
    )
    assert metrics["images"] == 3

    finetune_args = finetune_p.get_args_parser().parse_args(
        [
            "--resume",
            path,
            "--data-path",
            str(data),
            "--output-dir",
            str(tmp_path / "p"),
            "--input-size",
            "32",
            "--images-per-class",
            "1",
            "--p-grid",
            "2,4.25",
            "--no-validate-first",
            *small,
        ]
    )
    record = finetune_p.main(finetune_args)
    assert record["p"] in (2.0, 4.25)
    assert float(load_model(str(tmp_path / "p" / "finetune_p.pth")).pool.p) == record["p"]

    whiten_args = whiten.get_args_parser().parse_args(
        [
            "--checkpoint",
            path,
            "--whiten-path",
            str(data),
            "--output-dir",
            str(tmp_path / "w"),
            "--input-size",
            "32",
            *small,
        ]
    )
    with pytest.raises(ValueError, match="needs at least 514 images, got 9"):
        whiten.main(whiten_args)
    whiten_args.shrinkage = 0.5
    record = whiten.main(whiten_args)
    assert record["num_images"] == 9 and record["top5_agreement"] == 1.0 and record["logit_factor_error"] < 1e-4
    whitened = load_model(str(tmp_path / "w" / "whitened.pth"))
    assert whitened.whitening is not None and float(whitened.pool.p) == 4.25
