"""timm trunks (timm:NAME) through every script, and the published appendix-E files (senet154,
pnasnet5large, nasnetamobile), checked against Cadene's pretrainedmodels networks they were built on, with
those networks' own keys prefixed as the published wrapper did."""

import contextlib
import io
import sys
import types

import pretrainedmodels  # requirements-dev.txt, like timm: these tests run wherever the suite runs
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import evaluate
import finetune_p
import train
import utils
import whiten
from multigrain import descriptors
from multigrain.gem import GeM
from multigrain.model import build_model, l2n
from multigrain.storage.checkpoint import load_checkpoint
from multigrain.storage.model_files import load_model
from multigrain.timm_backbones import _cropping_cell_forward, _shifted
from tools.synthetic_data import make_imagefolder

SMALL = ["--device", "cpu", "-j", "0", "--print-freq", "1000"]


def run_inline(script, *args):
    """Runs script's main in this process (as its command line would), returning what it printed."""
    module = {"train.py": train, "finetune_p.py": finetune_p, "whiten.py": whiten, "evaluate.py": evaluate}[script]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        module.main(module.get_args_parser().parse_args([str(arg) for arg in args]))
    return output.getvalue()


def randomize_batchnorm(net):
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def gem_reference(net, x, p):
    """timm's network with GeM(p) in place of its pooling: its classifier on GeM of forward_features."""
    return net.get_classifier()(GeM(p)(net.forward_features(x)))


@pytest.mark.slow
def test_timm_model_through_every_script(tmp_path):
    data, whitening_images = tmp_path / "data", tmp_path / "whiten_images"
    make_imagefolder(data, num_classes=3, train_per_class=4, val_per_class=2, image_size=(40, 32), seed=3)
    make_imagefolder(whitening_images, num_classes=4, train_per_class=4, val_per_class=1, image_size=24, seed=4)
    crop = ["--train-crop-size", "32", "--val-resize-size", "36", "--val-crop-size", "32"]
    run_inline("train.py", "--data-path", data, "--output-dir", tmp_path / "train", "--model", "timm:test_resnet",
               *SMALL, "--epochs", "1", "-b", "6", *crop)  # fmt: skip
    checkpoint = tmp_path / "train" / "checkpoint.pth"
    assert load_checkpoint(checkpoint)["args"]["model"] == "timm:test_resnet"
    run_inline("finetune_p.py", "--data-path", data, "--resume", checkpoint, "--output-dir", tmp_path / "p",
               "--input-size", "40", "--images-per-class", "2", "-b", "2", *SMALL)  # fmt: skip
    run_inline("whiten.py", "--resume", tmp_path / "p" / "finetune_p.pth", "--whiten-path", whitening_images,
               "--output-dir", tmp_path / "w", "--input-size", "32", "--shrinkage", "0.1", *SMALL)  # fmt: skip
    whitened = load_model(str(tmp_path / "w" / "whitened.pth"))
    assert whitened.whitening is not None and whitened.embedding_dim == 97  # [g; 1] of the 96-d g
    out = run_inline("evaluate.py", "--resume", tmp_path / "w" / "whitened.pth", "--dataset", "imagenet-val",
                     "--imagenet-path", data, "--input-size", "40", "--output-dir", tmp_path / "e", *SMALL)  # fmt: skip
    assert "Acc@1" in out


def test_weights_from_a_file_or_the_cache_and_refusals(tmp_path, monkeypatch):
    net = randomize_batchnorm(timm.create_model("resnet10t", num_classes=3))
    torch.save(net.state_dict(), tmp_path / "resnet10t.pth")
    save_file(net.state_dict(), str(tmp_path / "resnet10t.safetensors"))
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        expected = gem_reference(net, x, 2.0)
        for name in ("resnet10t.pth", "resnet10t.safetensors"):
            model = build_model("timm:resnet10t", weights=str(tmp_path / name), num_classes=None, pooling_exponent=2)
            torch.testing.assert_close(model.eval()(x)[0], expected)
    with pytest.raises(ValueError, match=r"do not fit --model timm:test_resnet.*missing .*unexpected"):
        build_model("timm:test_resnet", weights=str(tmp_path / "resnet10t.pth"))
    # A pretrained tag is read from timm's caches (Hugging Face hub, torch hub), never downloaded.
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ValueError, match=r"c3_in1k are not in the local cache.*timm.create_model\('resnet10t.c3_in1k'"):
        build_model("timm:resnet10t", weights="c3_in1k")
    snapshot = tmp_path / "hub" / "models--timm--resnet10t.c3_in1k" / "snapshots" / "0123"
    snapshot.mkdir(parents=True)
    (tmp_path / "hub" / "models--timm--resnet10t.c3_in1k" / "refs").mkdir()
    (tmp_path / "hub" / "models--timm--resnet10t.c3_in1k" / "refs" / "main").write_text("0123")
    save_file(net.state_dict(), str(snapshot / "model.safetensors"))
    model = build_model("timm:resnet10t", weights="c3_in1k", num_classes=None, pooling_exponent=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], expected)
    with pytest.raises(ValueError, match=r"neither a file nor a pretrained tag.*tags: .*a1_in1k"):
        build_model("timm:resnet50", weights="no_such_tag")
    with pytest.raises(ValueError, match="not a global pooling followed by one Linear"):
        build_model("timm:vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="not a global pooling followed by one Linear"):
        build_model("timm:mobilenetv3_small_050")
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "x.jpg").write_bytes(b"")
    with pytest.raises(utils.UsageError, match=r"timm has no model 'no_such_net'.*senet154, pnasnet5large"):
        run_inline("train.py", "--data-path", tmp_path, "--model", "timm:no_such_net", *SMALL)


def test_finetune_p_from_a_pretrained_classifier(tmp_path):
    """The README's appendix-E command (--model NAME --weights FILE, no checkpoint), both alternatives."""
    data = tmp_path / "data"
    make_imagefolder(data, num_classes=3, train_per_class=2, val_per_class=1, image_size=(40, 30), seed=5)
    weights = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), weights)
    start = ["--data-path", data, "--model", "timm:test_resnet", "--weights", weights, "--input-size", "48", *SMALL]
    run_inline("finetune_p.py", *start, "--output-dir", tmp_path / "sgd", "-b", "2")
    record = load_checkpoint(tmp_path / "sgd" / "finetune_p.pth")["finetune_p"]
    assert record["initial_p"] == 1.0 and record["p"] != 1.0
    out = run_inline("finetune_p.py", *start, "--output-dir", tmp_path / "grid", "--p-grid", "1,1.6,3")
    assert "<- best" in out
    wrong = tmp_path / "wrong.pth"
    torch.save(timm.create_model("test_resnet", num_classes=5).state_dict(), wrong)
    with pytest.raises(utils.UsageError, match="classify 5 classes, --data-path .* has 3"):
        run_inline("finetune_p.py", *start[:4], "--weights", wrong, "--output-dir", tmp_path / "x", *SMALL)
    with pytest.raises(utils.UsageError, match="exactly one of --checkpoint and --weights"):
        run_inline("finetune_p.py", "--data-path", data, "--output-dir", tmp_path / "y", *SMALL)


def cadene_reference(net, p, relu):
    """pretrainedmodels' network `net` with GeM(p) in place of its average pooling: (logits, descriptor).
    PNASNet's and NASNet's logits() apply a ReLU to features() before pooling; SENet's does not."""

    def forward(x):
        feature_map = net.features(x)
        pooled = GeM(p)(torch.relu(feature_map) if relu else feature_map)
        return net.last_linear(pooled), l2n(pooled)

    return forward


def published_file(path, net, features_prefix, feature_keys, p):
    """A file in the published appendix-E layout, written from the network's own keys (not by this project's code)."""
    state = {f"module.{features_prefix}{k}": v for k, v in net.state_dict().items() if k.startswith(feature_keys)}
    state["module.classifier.weight"] = net.last_linear.weight.detach()
    state["module.classifier.bias"] = net.last_linear.bias.detach()
    state["module.pool.p"] = torch.tensor([p])
    torch.save({"model_state": state, "epoch": 30}, path)


def check_published_file(path, reference, name, sizes, p):
    """The published file at `path` loads and gives the outputs of `reference` (cadene_reference) at `sizes`."""
    model = load_model(str(path))
    assert float(model.pool.p) == pytest.approx(p)
    with torch.no_grad():
        for size in sizes:
            x = torch.rand(1, 3, *size)
            for output, expected in zip(model(x), reference(x)):
                torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=f"holds a {name} model, but --model is resnet50"):
        load_model(str(path), model_name="resnet50")
    return model


def whole_network_file(path, name, sizes):
    """The published file of pretrainedmodels' PNASNet or NASNet `name` (2 classes, random weights; the whole
    network under features.0.base_net, p 1.7), checked at `sizes`, where its cells work:
    (the pretrainedmodels network, the loaded model, the reference)."""
    torch.manual_seed(0)
    net = randomize_batchnorm(pretrainedmodels.__dict__[name](num_classes=2, pretrained=None))
    published_file(path, net, "features.0.base_net.", ("",), 1.7)
    reference = cadene_reference(net, 1.7, relu=True)
    return net, check_published_file(path, reference, name, sizes, 1.7), reference


def assert_cells_fail(net, x):
    with torch.no_grad(), pytest.raises(RuntimeError, match="must match the size"):
        net.features(x)


@pytest.mark.slow
def test_senet154_published_file_and_readme_commands(tmp_path):
    torch.manual_seed(0)
    net = randomize_batchnorm(pretrainedmodels.senet154(num_classes=1, pretrained=None))
    published_file(tmp_path / "senet154-finetune400.pth", net, "features.", ("layer",), 1.6)
    reference = cadene_reference(net, 1.6, relu=False)
    check_published_file(tmp_path / "senet154-finetune400.pth", reference, "senet154", [(40, 72), (64, 36)], 1.6)
    # The README's appendix-E commands, on 1 class x 1 image (a forward of SENet154 takes seconds on a CPU).
    weights = tmp_path / "legacy_senet154.pth"
    torch.save(net.state_dict(), weights)  # timm's legacy_senet154 has pretrainedmodels' keys
    data = tmp_path / "imagenet"
    make_imagefolder(data, num_classes=1, train_per_class=1, val_per_class=1, image_size=(48, 36), seed=6)
    run_inline("finetune_p.py", "--data-path", data, "--model", "senet154", "--weights", weights,
               "--input-size", "40", "--output-dir", tmp_path / "senet154_s450", "--p-grid", "1.6",
               "--no-validate-first", *SMALL)  # fmt: skip
    record = load_checkpoint(tmp_path / "senet154_s450" / "finetune_p.pth")["finetune_p"]
    assert record["p"] == 1.6 and record["initial_p"] == 1.0
    out = run_inline("evaluate.py", "--resume", tmp_path / "senet154-finetune400.pth", "--dataset", "imagenet-val",
                     "--imagenet-path", data, "--input-size", "40", "--output-dir", tmp_path / "e", *SMALL)  # fmt: skip
    assert "Acc@1" in out


@pytest.mark.slow
def test_pnasnet5large_published_file_at_any_size(tmp_path):
    # Sizes at which pretrainedmodels' PNASNet works (square 33 and 45 do).
    path = tmp_path / "pnasnet5large-finetune500.pth"
    net, model, reference = whole_network_file(path, "pnasnet5large", [(33, 45), (45, 33)])
    # Elsewhere the branches of a cell differ in size: pretrainedmodels' cells fail; the published code's fix,
    # cropping them to their common size, is the cell_forward that this project gives timm's PNASNet.
    x = torch.rand(1, 3, 40, 57)
    assert_cells_fail(net, x)
    for module in net.modules():
        if isinstance(module, pretrainedmodels.models.pnasnet.CellBase):
            module.cell_forward = types.MethodType(_cropping_cell_forward, module)
    with torch.no_grad():
        for output, expected in zip(model(x), reference(x)):
            torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_nasnetamobile_published_file_in_every_script(tmp_path):
    # Sizes at which pretrainedmodels' NASNet works (square 33 and 64 do); at others its cells fail, and ours crop.
    path = tmp_path / "nasnetamobile-finetune350.pth"
    net, model, _ = whole_network_file(path, "nasnetamobile", [(64, 64), (33, 64)])
    x = torch.rand(1, 3, 40, 50)
    assert_cells_fail(net, x)
    with torch.no_grad():
        logits, descriptor = model(x)
    assert logits.shape == (1, 2) and descriptor.shape == (1, 1056) and torch.isfinite(logits).all()
    images = [Image.new("RGB", (50, 40), "red"), Image.new("RGB", (36, 60), "blue")]
    assert descriptors(model, images, input_size=64).shape == (2, 1056)

    data, whitening_images = tmp_path / "data", tmp_path / "whiten_images"
    make_imagefolder(data, num_classes=2, train_per_class=2, val_per_class=1, image_size=(50, 40), seed=7)
    make_imagefolder(whitening_images, num_classes=3, train_per_class=1, val_per_class=1, image_size=40, seed=8)
    out = run_inline("evaluate.py", "--resume", path, "--dataset", "imagenet-val", "--imagenet-path", data,
                     "--input-size", "44", "--output-dir", tmp_path / "e", *SMALL)  # fmt: skip
    assert "Acc@1" in out
    # train.py's --model is the recipe's (default resnet50): it names the architecture of the file.
    crop = ["--train-crop-size", "40", "--val-resize-size", "44", "--val-crop-size", "40"]
    out = run_inline("train.py", "--data-path", data, "--model", "nasnetamobile", "--resume", path, "--test-only",
                     *crop, *SMALL)  # fmt: skip
    assert "Acc@1" in out
    run_inline("train.py", "--data-path", data, "--model", "nasnetamobile", "--init-from", path, "--lr", "1e-4",
               "--output-dir", tmp_path / "train", "--epochs", "1", "-b", "4", *crop, *SMALL)  # fmt: skip
    assert load_checkpoint(tmp_path / "train" / "checkpoint.pth")["args"]["model"] == "nasnetamobile"
    run_inline("finetune_p.py", "--data-path", data, "--resume", path, "--output-dir", tmp_path / "p",
               "--input-size", "44", "--p-grid", "2", "--no-validate-first", *SMALL)  # fmt: skip
    run_inline("whiten.py", "--resume", tmp_path / "p" / "finetune_p.pth", "--whiten-path", whitening_images,
               "--output-dir", tmp_path / "w", "--input-size", "40", "--shrinkage", "0.1", *SMALL)  # fmt: skip
    whitened = load_model(str(tmp_path / "w" / "whitened.pth"))
    assert whitened.embedding_dim == 1057 and float(whitened.pool.p) == 2
    # The README's NASNet-A-Mobile command: p* from pretrainedmodels' ImageNet weights (here random).
    weights = tmp_path / "nasnetamobile-7e03cead.pth"
    torch.save(net.state_dict(), weights)
    run_inline("finetune_p.py", "--data-path", data, "--model", "nasnetamobile", "--weights", weights,
               "--input-size", "44", "--output-dir", tmp_path / "nasnetamobile_s350", "--p-grid", "1.7",
               "--no-validate-first", *SMALL)  # fmt: skip
    assert load_checkpoint(tmp_path / "nasnetamobile_s350" / "finetune_p.pth")["finetune_p"]["p"] == 1.7


def test_nasnetamobile_refusals(tmp_path, monkeypatch):
    wrong = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=2).state_dict(), wrong)
    with pytest.raises(
        ValueError, match=r"do not fit --model nasnetamobile \(pretrainedmodels' .*missing .*unexpected"
    ):
        build_model("nasnetamobile", weights=str(wrong))
    state = {"features.0.base_net.reduction_cell_0.conv_1x1.conv.weight": torch.zeros(1), "pool.p": torch.ones(1)}
    state["classifier.weight"] = torch.zeros(2, 1056)
    torch.save({"model_state": state}, tmp_path / "nasnetamobile-finetune350.pth")
    monkeypatch.setitem(sys.modules, "pretrainedmodels", None)  # as if the extra were not installed
    with pytest.raises(
        ValueError, match="nasnetamobile .* needs Cadene's pretrainedmodels.*pip install pretrainedmodels"
    ):
        build_model("nasnetamobile")
    with pytest.raises(utils.UsageError, match="needs Cadene's pretrainedmodels"):
        run_inline("evaluate.py", "--resume", tmp_path / "nasnetamobile-finetune350.pth", "--dataset", "imagenet-val",
                   "--imagenet-path", tmp_path, *SMALL)  # fmt: skip


@pytest.mark.parametrize("size", [(9, 12), (12, 9), (11, 11)])
def test_pnasnet_cell_4_shift_is_cadenes_zero_pad(size):
    """cell_4's stride-2 ops equal Cadene's recipe: zero-pad one row and column at the top-left, run the op
    with its symmetric padding, drop the first output row and column."""
    x = torch.randn(1, 2, *size)
    conv = torch.nn.Conv2d(2, 2, 5, stride=2, padding=2, groups=2, bias=False)
    pool = torch.nn.MaxPool2d(3, stride=2, padding=1)
    expected = [op(torch.nn.functional.pad(x, (1, 0, 1, 0)))[:, :, 1:, 1:] for op in (conv, pool)]
    _shifted(conv, 2)
    _shifted(pool, 1)
    torch.testing.assert_close(conv(x), expected[0])
    torch.testing.assert_close(pool(x), expected[1])
