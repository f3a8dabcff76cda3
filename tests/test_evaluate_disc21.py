"""evaluate.py --dataset disc21 through the real command line on the synthetic DISC21 layout."""

import csv
import json

import pytest
import torch

import evaluate
import whiten
from multigrain.model import build_model, l2n
from multigrain.whitening import fold_whitening
from tests.scripts import run_script

pytestmark = pytest.mark.slow  # the command line on a layout written by the command line


def metrics_of(args):
    return evaluate.main(evaluate.get_args_parser().parse_args(args))["disc21"]


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """The README's `python tools/synthetic_data.py disc21 --output DIR`: 60 references, 40 queries of which 30
    are edited copies, 40 training images."""
    root = tmp_path_factory.mktemp("disc21") / "disc21"
    run = run_script("tools/synthetic_data.py", "disc21", "--output", root, check=False)
    assert run.returncode == 0, run.stderr
    assert "40 queries, 60 references, 40 training images" in run.stdout
    return root


@pytest.fixture(scope="module")
def untrained_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("untrained_disc21") / "checkpoint.pth"
    torch.save({"model": build_model("resnet18", num_classes=10).state_dict(), "args": {"model": "resnet18"}}, path)
    return path


CPU_FLAGS = ["--device", "cpu", "-j", "0", "--print-freq", "10000"]


def test_command_line_run_and_scoring_its_predictions_csv(layout, trained_checkpoint, tmp_path):
    """The trained test model through the command line: its μAP is far above chance (30 true pairs among the
    40 x 60 predictions: about 1.3 for random scores), and the predictions CSV it writes, scored on its own,
    gives the same metrics."""
    flags = ["--dataset", "disc21", "--input-size", "64", *CPU_FLAGS, "--disc21-path", str(layout)]
    run_script("evaluate.py", "--resume", trained_checkpoint.path, *flags, "--output-dir", tmp_path / "trained")
    trained = json.loads((tmp_path / "trained" / "metrics.json").read_text())["results"]["disc21"]
    assert trained["muAP"] >= 5.0 and trained["recall@10"] >= 50.0, trained

    predictions = tmp_path / "trained" / "disc21_predictions.csv"
    with open(predictions) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["query_id", "reference_id", "score"] and len(rows) == 1 + 40 * 60
    scores = [float(row[2]) for row in rows[1:]]
    assert scores == sorted(scores, reverse=True) and -4.0 <= scores[-1] <= scores[0] <= 0.0
    rescored = metrics_of([*flags, "--disc21-predictions", str(predictions), "--output-dir", str(tmp_path / "csv")])
    assert rescored == pytest.approx(trained, abs=1e-9)


def test_whitened_trained_model_beats_an_untrained_one(trained_checkpoint, untrained_checkpoint, tmp_path):
    """The baseline's recipe through the command line: whiten.py fitted on the layout's 200 training images,
    the first 256 whitened dimensions and score normalisation (factor 2, n = 10); the untrained network is
    whitened the same way. Measured (README): the trained model's μAP exceeds the best of 3 untrained
    networks by 24.5, 27.7 and 22.1 points on generator seeds 0 to 2."""
    layout = tmp_path / "disc21"
    command = ["tools/synthetic_data.py", "disc21", "--output", str(layout), "--num-training", "200"]
    assert run_script(*command, check=False).returncode == 0
    muap = {}
    for name, checkpoint in (("trained", trained_checkpoint.path), ("untrained", untrained_checkpoint)):
        whiten_argv = [
            "--resume", str(checkpoint), "--whiten-path", str(layout / "training"), "--input-size", "64",
            "--shrinkage", "0.01", *CPU_FLAGS, "--output-dir", str(tmp_path / name),
        ]  # fmt: skip
        evaluate_argv = [
            "--resume", str(tmp_path / name / "whitened.pth"), "--input-size", "64", "--descriptor-dim", "256",
            "--dataset", "disc21", "--disc21-path", str(layout), "--score-norm", *CPU_FLAGS,
            "--output-dir", str(tmp_path / name / "disc21"),
        ]  # fmt: skip
        if name == "trained":
            run = run_script("whiten.py", *whiten_argv, check=False)
            assert run.returncode == 0, run.stderr[-3000:]
            run_script("evaluate.py", *evaluate_argv)
            metrics = json.loads((tmp_path / name / "disc21" / "metrics.json").read_text())["results"]["disc21"]
            muap[name] = metrics["muAP"]
        else:  # in-process, to save two interpreter starts
            whiten.main(whiten.get_args_parser().parse_args(whiten_argv))
            muap[name] = metrics_of(evaluate_argv)["muAP"]
    assert muap["trained"] >= muap["untrained"] + 10.0, muap


def test_readme_commands(layout, untrained_checkpoint, tmp_path):
    """The README's dev-queries and subset-1 commands with their flags, on the synthetic layout: a resnet18 at
    96 px instead of a ResNet-50 at 512, keeping 256 of its 512 dimensions instead of 1500 of 2048."""
    model_flags = ["--resume", str(untrained_checkpoint), "--input-size", "96", "--pooling-exponent", "7"]
    dev = metrics_of(
        [
            *model_flags, "--descriptor-dim", "256", "--dataset", "disc21", "--disc21-path", str(layout),
            "--disc21-query-list", str(layout / "dev_queries.txt"),
            "--disc21-ground-truth", str(layout / "ground_truth.csv"),
            "--max-results", "500000", "--score-norm", "--output-dir", str(tmp_path / "dev"), *CPU_FLAGS,
        ]
    )  # fmt: skip
    assert set(dev) >= {"muAP", "recall@P90", "recall@1", "recall@10"}
    with open(tmp_path / "dev" / "disc21_predictions.csv") as f:
        queries = {row[0] for row in list(csv.reader(f))[1:]}
    assert queries == set((layout / "dev_queries.txt").read_text().split())
    subset = metrics_of(
        [
            *model_flags, "--descriptor-dim", "256", "--dataset", "disc21", "--disc21-path", str(layout),
            "--disc21-query-list", str(layout / "subset_1_queries.txt"),
            "--disc21-reference-list", str(layout / "subset_1_references.txt"),
            "--output-dir", str(tmp_path / "subset_1"), *CPU_FLAGS,
        ]
    )  # fmt: skip
    assert 0 <= subset["muAP"] <= 100


def test_bad_inputs_are_usage_errors_naming_file_and_line(layout, tmp_path):
    ground_truth = tmp_path / "gt.csv"
    ground_truth.write_text("query_id,reference_id\nQ00000,R000001\nQ00001,R123456\n")
    flags = ["--dataset", "disc21", "--disc21-path", str(layout)]
    with pytest.raises(evaluate.utils.UsageError, match=f"{ground_truth} line 3: reference 'R123456' is not an image"):
        metrics_of([*flags, "--disc21-ground-truth", str(ground_truth), "--disc21-predictions", str(ground_truth)])
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("query_id,reference_id,score\nQ00001,R000002,-0.5\nQ00001,R000002,-0.7\n")
    run = run_script("evaluate.py", *flags, "--disc21-predictions", predictions, check=False)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"{predictions} line 3: the pair (Q00001, R000002) was already predicted on line 2" in run.stderr


def test_descriptor_dim_keeps_the_classifier():
    """The first D whitened components make the descriptor; the logits of the same model do not change."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10).eval()
    dim = model.embedding_dim + 1
    fold_whitening(model, torch.randn(dim) * 0.01, torch.linalg.qr(torch.randn(dim, dim))[0])
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        logits, descriptor = model(images)
        model.descriptor_dim = 100
        reduced_logits, reduced = model(images)
        embedding = model.embedding(images)
    assert torch.equal(reduced_logits, logits)
    assert descriptor.shape == (3, dim) and reduced.shape == (3, 100)
    torch.testing.assert_close(reduced, l2n(embedding[:, :100]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--disc21-knn", "5", "--max-results", "100"], "--disc21-knn keeps K references per query"),
        (["--descriptor-dim", "8", "--load-features", "{root}"], "--descriptor-dim applies to the model"),
        (["--disc21-predictions", "{root}/ground_truth.csv", "--resume", "x.pth"], "needs no descriptors"),
        (["--disc21-predictions", "{root}/missing.csv"], "is not a file"),
        (["--score-norm-factor", "1.5"], "--score-norm-factor 1.5 needs --score-norm"),
        (["--score-norm-neighbors", "4"], "--score-norm-neighbors 4 needs --score-norm"),
        (["--disc21-predictions", "{root}/ground_truth.csv", "--score-norm"], "scores the CSV as written"),
        (["--disc21-predictions", "{root}/ground_truth.csv", "--max-results", "9"], "scores the CSV as written"),
        (["--disc21-predictions", "{root}/ground_truth.csv", "--descriptor-dim", "8"], "scores the CSV as written"),
    ],
)
def test_check_args_refuses_inconsistent_disc21_flags(layout, extra, message):
    argv = ["--dataset", "disc21", "--disc21-path", str(layout), *(flag.format(root=layout) for flag in extra)]
    with pytest.raises(evaluate.utils.UsageError, match=message):
        evaluate.check_args(evaluate.get_args_parser().parse_args(argv))


@pytest.mark.parametrize("extra", [["--max-results", "9"], ["--disc21-knn", "3"], ["--score-norm"]])
def test_disc21_search_flags_need_the_disc21_benchmark(layout, tmp_path, extra):
    (tmp_path / "ukbench" / "full").mkdir(parents=True)
    argv = ["--dataset", "ukbench", "--ukbench-path", str(tmp_path / "ukbench"), "--disc21-path", str(layout), *extra]
    with pytest.raises(evaluate.utils.UsageError, match=f"{extra[0]} applies to the DISC21 search"):
        evaluate.check_args(evaluate.get_args_parser().parse_args(argv))
