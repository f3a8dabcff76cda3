import json

import pytest
import torch

import train
import whiten
from multigrain.storage.model_files import load_model
from tests.multigrain.test_whitening import random_images
from tests.scripts import ONE_THREAD, run_script
from tools.synthetic_data import make_imagefolder


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


@pytest.mark.slow
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
        env=ONE_THREAD,
    )
    run_script(
        "finetune_p.py",
        "--data-path",
        str(data),
        "--checkpoint",
        str(tmp_path / "train" / "checkpoint.pth"),
        "--output-dir",
        str(tmp_path / "finetune"),
        "--input-size",
        "32",
        *small,
        env=ONE_THREAD,
    )
    out = run_script(
        "whiten.py",
        "--resume",
        str(tmp_path / "finetune" / "finetune_p.pth"),
        "--whiten-path",
        str(whitening_images),
        "--output-dir",
        str(tmp_path / "whiten"),
        *small,
        env=ONE_THREAD,
    ).stdout
    assert "same top-5 classes: 100.00%" in out
    assert f"--input-size 32 from {tmp_path / 'finetune' / 'finetune_p.pth'} (finetune_p.py's s*)" in out

    finetune_log = [
        json.loads(line) for line in (tmp_path / "finetune" / "finetune_p_log.jsonl").read_text().splitlines()
    ]
    assert [record.get("iteration") for record in finetune_log] == [0, 1, 2, 3, 4, 5, None]
    finetuned = load_model(str(tmp_path / "finetune" / "finetune_p.pth"))
    whitened = load_model(str(tmp_path / "whiten" / "whitened.pth"))
    assert float(finetuned.pool.p) == pytest.approx(finetune_log[-1]["p"])
    assert float(whitened.pool.p) == float(finetuned.pool.p)
    assert whitened.whitening is not None and whitened.classifier.in_features == 513
    whiten_log = json.loads((tmp_path / "whiten" / "whiten_log.jsonl").read_text())
    assert whiten_log["num_images"] == 572 and whiten_log["covariance_error"] < 1e-3

    images = random_images(6, seed=5, size=(32, 24))
    with torch.no_grad():
        logits, _ = finetuned(images)
        new_logits, _ = whitened(images)
    assert torch.equal(logits.topk(3).indices, new_logits.topk(3).indices)

    # Each file says how to use it: the class names of train.py's ImageFolder, carried over; s* = 32.
    class_names = ["class_000", "class_001", "class_002"]
    assert load_model(str(tmp_path / "train" / "checkpoint.pth")).class_names == class_names
    assert (finetuned.class_names, finetuned.input_size) == (class_names, 32)
    assert (whitened.class_names, whitened.input_size) == (class_names, 32)
    # The case of issue 21: extract.py on the whitened model, without --input-size, extracts at its s*, and says so.
    out = run_script(
        "extract.py", "--checkpoint", tmp_path / "whiten" / "whitened.pth", "--images", data / "val",
        "--output-dir", tmp_path / "descriptors", *small, env=ONE_THREAD,
    ).stdout  # fmt: skip
    assert f"--input-size 32 from {tmp_path / 'whiten' / 'whitened.pth'} (whiten.py's s*)" in out
    manifest = json.loads((tmp_path / "descriptors" / "manifest.json").read_text())
    assert manifest["extraction"]["input_size"] == 32

    # At 32 x 32, the validation crop of train.py sees the images finetune_p validated on.
    args = [
        "--test-only", "--resume", str(tmp_path / "whiten" / "whitened.pth"), "--model", "resnet18",
        "--data-path", str(data), "--val-resize-size", "32", "--val-crop-size", "32", "--print-freq", "1000", *small,
    ]  # fmt: skip
    metrics = train.main(train.get_args_parser().parse_args(args))
    assert metrics["images"] == 12
    assert (metrics["acc1"], metrics["acc5"]) == (finetune_log[-1]["val_acc1"], finetune_log[-1]["val_acc5"])
