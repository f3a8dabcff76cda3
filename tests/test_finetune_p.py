import argparse
import json
import os

import pytest
import torch
from torch.nn import functional as F

import finetune_p
from multigrain.inference.extraction import forward_by_size
from multigrain.model import build_model
from tests.multigrain.inference.test_extraction import ListDataset, mixed_size_images, tiny_model


def finetune_args(**overrides):
    args = dict(batch_size=4, lr=0.005, momentum=0.9, lr_power=0.9, seed=0, workers=0, print_freq=1000)
    args.update(overrides)
    return argparse.Namespace(**args)


def test_first_images_per_class_keeps_dataset_order():
    assert finetune_p.first_images_per_class([0, 0, 0, 1, 2, 1, 1, 2], 2) == [0, 1, 3, 4, 5, 7]


def subset_loss(model, images, targets):
    with torch.no_grad():
        return F.cross_entropy(forward_by_size(model, images)[0], targets).item()


def test_finetune_moves_only_p_and_downhill(tmp_path):
    images = mixed_size_images(count=8, seed=2)
    targets = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    probe = tiny_model()
    probe.pool.make_p_learnable()
    loss = F.cross_entropy(forward_by_size(probe, images)[0], targets)
    (gradient,) = torch.autograd.grad(loss, probe.pool.p)
    model = tiny_model()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    log_path = tmp_path / "log.jsonl"

    # One batch holding every image: the first SGD step is -lr * gradient exactly.
    args = finetune_args(batch_size=8, lr=0.05)
    p = finetune_p.finetune_p(model, ListDataset(images, targets), "cpu", args, log_path)

    after = model.state_dict()
    assert set(after) == set(before)
    for key in before:
        if key != "pool.p":
            assert torch.equal(after[key], before[key]), key
    assert gradient.abs() > 1e-3
    torch.testing.assert_close(torch.tensor(p - 3.0), -0.05 * gradient, rtol=1e-4, atol=1e-7)
    assert subset_loss(model, images, targets) < loss.item()
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(records) == 1 and records[0]["p"] == pytest.approx(p) and records[0]["lr"] == pytest.approx(0.05)


def test_finetune_pass_lowers_the_loss_and_logs_the_trajectory(tmp_path):
    model = tiny_model(p=1.5)
    images = mixed_size_images(count=24, seed=3)
    targets = torch.arange(24) % 6
    initial_loss = subset_loss(model, images, targets)
    log_path = tmp_path / "log.jsonl"
    args = finetune_args(lr=0.02)
    p = finetune_p.finetune_p(model, ListDataset(images, targets), "cpu", args, log_path)
    assert p != 1.5 and float(model.pool.p.detach()) == pytest.approx(p)
    assert subset_loss(model, images, targets) < initial_loss
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(6))
    lrs = [r["lr"] for r in records]
    expected = [0.02 * (1 - i / 6) ** 0.9 for i in range(6)]
    assert lrs == pytest.approx(expected)
    assert records[-1]["p"] == pytest.approx(p)


def test_p_grid_keeps_the_best_p_and_prints_the_table(tmp_path, capsys):
    model = tiny_model()
    images = mixed_size_images(count=12, seed=4)
    targets = torch.arange(12) % 6
    dataset = ListDataset(images, targets)
    args = finetune_args(p_grid=[1.0, 2.5, 6.0], eval_batch_size=4, input_size=28)
    best = finetune_p.cross_validate_p(model, dataset, "cpu", args, tmp_path / "log.jsonl")
    assert float(model.pool.p) == best
    scores = {}
    for p in args.p_grid:
        model.pool.set_p(p)
        logits = forward_by_size(model, images)[0].detach()
        scores[p] = ((logits.argmax(1) == targets).float().mean().item(), F.cross_entropy(logits, targets).item())
    assert best == max(scores, key=lambda p: (scores[p][0], -scores[p][1]))
    table = capsys.readouterr().out
    assert "<- best" in table and all(f"{p:>8g}" in table for p in args.p_grid)


@pytest.mark.parametrize("text", ["1,a", "0,1", "2,-1", "inf"])
def test_bad_p_grid_is_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--p-grid"):
        finetune_p.parse_p_grid(text)


def test_bad_flags_are_refused(tmp_path, capsys):
    parser = finetune_p.get_args_parser()
    args = parser.parse_args(["--resume", str(tmp_path / "missing.pth"), "--data-path", str(tmp_path)])
    with pytest.raises(ValueError, match="--checkpoint"):
        finetune_p.check_args(args)
    checkpoint = tmp_path / "c.pth"
    torch.save(
        {"model": build_model("resnet18", num_classes=1).state_dict(), "args": {"model": "resnet18"}}, checkpoint
    )
    args = parser.parse_args(["--resume", str(checkpoint), "--data-path", str(tmp_path)])
    with pytest.raises(ValueError, match="--data-path"):
        finetune_p.check_args(args)
    os.makedirs(tmp_path / "train" / "a")
    os.makedirs(tmp_path / "val" / "a")
    for split in ("train", "val"):
        (tmp_path / split / "a" / "x.jpg").write_bytes(b"")
    finetune_p.check_args(parser.parse_args(["--resume", str(checkpoint), "--data-path", str(tmp_path)]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--resume", str(checkpoint), "--data-path", str(tmp_path), "--images-per-class", "0"])
    assert "--images-per-class: must be an integer >= 1, got 0" in capsys.readouterr().err
