"""Checkpoints that cannot be mixed up: each script writes its own kind of file, a training run continues
only its own recipe, and starting from another model's weights is its own flag (--init-from)."""

import hashlib
import json
import sys

import pytest
import torch

import finetune_p
import train
import utils
import whiten
from multigrain.model import build_model
from multigrain.storage import checkpoint as checkpoint_module
from multigrain.storage import model_files
from multigrain.storage.checkpoint import checkpoint_kind, load_checkpoint
from multigrain.storage.model_files import load_model
from tests.scripts import run_script
from tools.synthetic_data import make_imagefolder

pytestmark = pytest.mark.slow  # training runs

SMALL = "--model resnet18 --device cpu -j 0 --print-freq 1000 --train-crop-size 32 --val-resize-size 36".split()
SMALL += ["--val-crop-size", "32"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_imagefolder(root, num_classes=3, train_per_class=6, val_per_class=2, image_size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """The output folder of a 1-epoch λ = 0.5, p = 3 run."""
    out = tmp_path_factory.mktemp("mg_0.5_p3")
    train.main(parse(data, out, "--epochs", "1", "-b", "6", "--lr", "0.01"))
    return out


def parse(data, output_dir, *flags):
    return train.get_args_parser().parse_args(
        ["--data-path", str(data), "--output-dir", str(output_dir), *SMALL, *flags]
    )


def digests(folder):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def test_training_checkpoint_says_what_it_is(trained):
    checkpoint = load_checkpoint(str(trained / "checkpoint.pth"))
    assert checkpoint["kind"] == "train" and checkpoint_kind(checkpoint) == "train"
    assert checkpoint["epoch"] == 0 and checkpoint["args"]["model"] == "resnet18"
    assert checkpoint["code_version"] == checkpoint_module.code_version() != ""
    assert checkpoint["recipe"]["classif_weight"] == 0.5 and checkpoint["recipe"]["global_batch_size"] == 6
    assert checkpoint["class_names"] == ["class_000", "class_001", "class_002"]  # the ImageFolder's classes


def test_an_ablation_in_the_same_folder_is_refused_and_nothing_is_overwritten(data, trained):
    before = digests(trained)
    with pytest.raises(utils.UsageError) as refusal:
        train.main(parse(data, trained, "--epochs", "1", "-b", "6", "--classif-weight", "1", "--pooling-exponent", "1"))
    message = str(refusal.value)
    assert "--classif-weight: 0.5 → 1.0" in message and "--pooling-exponent: 3.0 → 1.0" in message
    assert "--output-dir" in message and "--no-auto-resume" in message and "--allow-change" in message
    assert digests(trained) == before


def test_the_refusal_is_a_usage_error_without_traceback(data, trained):
    command = ["train.py", "--data-path", str(data), "--output-dir", str(trained), *SMALL]
    command += ["--epochs", "1", "-b", "6", "--classif-weight", "1"]
    run = run_script(*command, check=False)
    assert run.returncode == 2
    assert "--classif-weight: 0.5 → 1.0" in run.stderr and "Traceback" not in run.stderr


def test_a_global_batch_change_is_refused_too(data, trained):
    with pytest.raises(utils.UsageError, match=r"global batch size \(-b × processes\): 6 → 12"):
        train.main(parse(data, trained, "--epochs", "1", "-b", "12", "--lr", "0.01"))


def test_a_deliberate_change_is_allowed_and_recorded(data, trained, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pth").write_bytes((trained / "checkpoint.pth").read_bytes())
    with pytest.raises(utils.UsageError, match="--allow-change ep: not a recipe flag"):
        train.main(parse(data, out, "--epochs", "2", "-b", "6", "--lr", "0.01", "--allow-change", "ep"))
    train.main(parse(data, out, "--epochs", "2", "-b", "6", "--lr", "0.01", "--allow-change", "epochs"))
    checkpoint = load_checkpoint(str(out / "checkpoint.pth"))
    assert checkpoint["epoch"] == 1 and checkpoint["recipe"]["epochs"] == 2
    assert checkpoint["recipe_changes"] == [{"epoch": 1, "entry": "epochs", "stored": 1, "given": 2}]


def test_scripts_refuse_each_others_folders(data, trained, tmp_path):
    finetune_flags = ["--data-path", str(data), "--device", "cpu", "-j", "0", "--input-size", "32"]
    finetune_flags += ["--images-per-class", "1", "--no-validate-first", "--p-grid", "3"]
    before = digests(trained)
    with pytest.raises(utils.UsageError, match=r"holds checkpoint.pth, the output of train.py"):
        finetune_p.main(
            finetune_p.get_args_parser().parse_args(
                ["--resume", str(trained / "checkpoint.pth"), "--output-dir", str(trained), *finetune_flags]
            )
        )
    assert digests(trained) == before

    finetuned = tmp_path / "p"
    finetune_p.main(
        finetune_p.get_args_parser().parse_args(
            ["--resume", str(trained / "checkpoint.pth"), "--output-dir", str(finetuned), *finetune_flags]
        )
    )
    assert sorted(path.name for path in finetuned.iterdir()) == ["finetune_p.pth", "finetune_p_log.jsonl"]
    checkpoint = load_checkpoint(str(finetuned / "finetune_p.pth"))
    assert checkpoint["kind"] == "finetune_p" and checkpoint["source"]["kind"] == "train"
    before = digests(finetuned)
    with pytest.raises(utils.UsageError, match=r"holds finetune_p.pth, the output of finetune_p.py"):
        train.main(parse(data, finetuned, "--epochs", "1", "-b", "6"))
    with pytest.raises(utils.UsageError, match=r"holds finetune_p.pth, the output of finetune_p.py"):
        whiten.main(
            whiten.get_args_parser().parse_args(
                ["--resume", str(finetuned / "finetune_p.pth"), "--whiten-path", str(data), "--shrinkage", "0.5"]
                + ["--output-dir", str(finetuned), "--device", "cpu", "-j", "0", "--input-size", "32"]
            )
        )
    assert digests(finetuned) == before


@pytest.mark.parametrize("kind", ["published", "finetune_p", "whiten"])
def test_resuming_a_model_that_is_not_a_training_state_is_refused(data, tmp_path, kind):
    model = build_model("resnet18", num_classes=3)
    path = tmp_path / "model.pth"
    if kind == "published":
        torch.save({"model_state": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    else:
        torch.save(checkpoint_module.make_checkpoint(kind, model.state_dict(), {"model": "resnet18"}), path)
    before = path.read_bytes()
    with pytest.raises(utils.UsageError, match=f"is not a training state and cannot be resumed.*--init-from {path}"):
        train.main(parse(data, tmp_path / "out", "--resume", str(path), "--epochs", "1", "-b", "6"))
    assert path.read_bytes() == before and not (tmp_path / "out").exists()


def test_flags_are_checked_once_and_the_checkpoint_read_once(data, trained, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pth").write_bytes((trained / "checkpoint.pth").read_bytes())
    calls = {"check_args": 0, "load_checkpoint": 0}

    def counting(name, function):
        def counted(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return counted

    monkeypatch.setattr(train, "check_args", counting("check_args", train.check_args))
    monkeypatch.setattr(model_files, "load_checkpoint", counting("load_checkpoint", model_files.load_checkpoint))
    argv = ["train.py", "--data-path", str(data), "--output-dir", str(out), *SMALL, "-b", "6", "--lr", "0.01"]
    monkeypatch.setattr(sys, "argv", argv + ["--epochs", "2", "--allow-change", "epochs"])
    utils.run_script(train.main, train.get_args_parser())
    assert calls == {"check_args": 1, "load_checkpoint": 1}
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 1]


def whitened_copy(source, folder, data):
    """whiten.py's output for the model of `source`, with shrinkage so that 24 images suffice."""
    whiten.main(
        whiten.get_args_parser().parse_args(
            ["--resume", str(source), "--whiten-path", str(data), "--shrinkage", "0.5", "--output-dir", str(folder)]
            + ["--device", "cpu", "-j", "0", "--input-size", "32"]
        )
    )
    return folder / "whitened.pth"


@pytest.mark.parametrize("source_kind", ["train", "whiten", "published"])
def test_init_from_starts_a_new_run_from_the_weights(data, trained, tmp_path, source_kind):
    source = trained / "checkpoint.pth"
    if source_kind == "whiten":
        source = whitened_copy(source, tmp_path / "w", data)
    elif source_kind == "published":
        state = load_checkpoint(str(source))["model"]
        source = tmp_path / "joint.pth"
        torch.save({"model_state": {f"module.{k}": v for k, v in state.items()}}, source)
    original = load_checkpoint(str(trained / "checkpoint.pth"))
    out = tmp_path / "init"
    # A learning rate of 1e-12 leaves the weights as they were loaded, up to rounding.
    train.main(parse(data, out, "--init-from", str(source), "--epochs", "1", "-b", "6", "--lr", "1e-12"))

    started = load_checkpoint(str(out / "checkpoint.pth"))
    assert started["epoch"] == 0 and started["lr_scheduler"]["last_epoch"] == 1
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [0]
    assert started["args"]["init_from"] == str(source)
    for name in ("features.conv1.weight", "features.layer4.1.conv2.weight", "classifier.weight", "classifier.bias"):
        assert torch.allclose(started["model"][name], original["model"][name], atol=1e-4), name
    assert "whitening.mean" not in started["model"]
    beta = started["criterion"]["margin_loss.beta"]
    if source_kind == "train":
        assert beta == pytest.approx(original["criterion"]["margin_loss.beta"].item(), abs=1e-6)
    else:
        assert beta == pytest.approx(1.2, abs=1e-6)  # no β stored: the initial one
    assert float(load_model(str(out / "checkpoint.pth")).pool.p) == 3.0


def test_init_from_refuses_another_architecture_or_class_count(data, tmp_path):
    path = tmp_path / "other.pth"
    model = build_model("resnet18", num_classes=5)
    torch.save(checkpoint_module.make_checkpoint("whiten", model.state_dict(), {"model": "resnet18"}), path)
    with pytest.raises(utils.UsageError, match="classifies 5 classes, --data-path .* has 3"):
        train.main(parse(data, tmp_path / "a", "--init-from", str(path), "--epochs", "1", "-b", "6"))
    with pytest.raises(utils.UsageError, match="holds a resnet18 model, but --model is resnet34"):
        train.main(parse(data, tmp_path / "b", "--init-from", str(path), "--epochs", "1", "--model", "resnet34"))
    with pytest.raises(utils.UsageError, match="--weights and --init-from"):
        train.main(parse(data, tmp_path / "c", "--init-from", str(path), "--weights", "DEFAULT"))


def test_test_only_refuses_a_model_of_another_class_count(data, tmp_path):
    path = tmp_path / "seven.pth"
    torch.save({"model": build_model("resnet18", num_classes=7).state_dict(), "args": {"model": "resnet18"}}, path)
    with pytest.raises(utils.UsageError, match="classifies 7 classes, --data-path .* has 3"):
        train.main(parse(data, tmp_path / "t", "--test-only", "--resume", str(path)))


def test_a_training_state_of_an_earlier_version_resumes_under_its_own_recipe(data, trained, tmp_path):
    """States written before `kind` and `recipe` existed: the kind comes from their entries, the recipe from
    their arguments (the defaults of today's flags for those they lack)."""
    out = tmp_path / "legacy"
    out.mkdir()
    legacy = load_checkpoint(str(trained / "checkpoint.pth"))
    for entry in ("kind", "recipe", "recipe_changes", "code_version"):
        del legacy[entry]
    del legacy["args"]["init_from"]
    checkpoint_module.save_checkpoint(legacy, out / "checkpoint.pth")
    assert checkpoint_kind(legacy) == "train"

    with pytest.raises(utils.UsageError, match="--lr: 0.01 → 0.02"):
        train.main(parse(data, out, "--epochs", "2", "-b", "6", "--lr", "0.02", "--allow-change", "epochs"))
    train.main(parse(data, out, "--epochs", "2", "-b", "6", "--lr", "0.01", "--allow-change", "epochs"))
    resumed = load_checkpoint(str(out / "checkpoint.pth"))
    assert resumed["kind"] == "train" and resumed["epoch"] == 1


def test_kinds_of_files_that_do_not_name_theirs():
    state = {"pool.p": torch.tensor(3.0)}
    assert checkpoint_kind({"model": state, "optimizer": {}, "criterion": {}}) == "train"
    assert checkpoint_kind({"model": state, "finetune_p": {}}) == "finetune_p"
    assert checkpoint_kind({"model": state, "whitening": {}}) == "whiten"
    assert checkpoint_kind({"model": state, "args": {}}) == "model"
    assert checkpoint_kind({"model_state": state}) == "published"
    assert checkpoint_kind({"weights": state}) == "unknown"
    with pytest.raises(ValueError, match="unknown checkpoint kind 'trained'"):
        checkpoint_module.make_checkpoint("trained", state, {})
