"""Smoke tests of the benchmarks: each main() with tiny settings. No timing is asserted."""

import math

import numpy as np

from benchmarks import channels_last_compile, data_pipeline, retrieval, sampling_margin, step_overhead
from benchmarks.timing import format_table, median_ratio, time_side_by_side
from multigrain.margin_loss import MarginLoss

TINY_MODEL = ["--model", "resnet18", "--input-size", "32", "-b", "6", "--num-classes", "5"]


def test_time_side_by_side_calls_every_candidate_once_per_round():
    calls = []
    times = time_side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(values) for values in times.values()] == [3, 3]
    assert median_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0
    table = format_table(["x", "value"], [["a", 1]]).splitlines()
    assert table[0].split() == ["x", "value"] and table[2].split() == ["a", "1"]


def test_step_overhead(capsys):
    args = step_overhead.get_args_parser().parse_args([*TINY_MODEL, "--steps", "1", "--rounds", "1"])
    result = step_overhead.main(args)
    assert result["ratio"] > 0 and result["target"] == 1.05
    assert "MultiGrain (λ=0.5, reps=3)" in capsys.readouterr().out


def test_sampling_margin_baseline_gives_a_loss_and_gradients():
    embeddings, ids = sampling_margin.make_embeddings(12, 16, 3, "cpu")
    loss = sampling_margin.per_anchor_loop(embeddings, ids, MarginLoss(), np.random.default_rng(0))
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert embeddings.grad.abs().sum() > 0
    args = sampling_margin.get_args_parser().parse_args(["-b", "24", "--dim", "16", "--rounds", "1"])
    result = sampling_margin.main(args)
    assert {"vectorised", "per-anchor loop", "  B x B Gram matrix alone"} <= set(result["times"])


def test_data_pipeline_both_pipelines_give_the_same_number_of_samples():
    flags = ["--num-images", "8", "--image-size", "48x40", "--crop-size", "32", "-b", "6", "-j", "0", "--rounds", "1"]
    result = data_pipeline.main(data_pipeline.get_args_parser().parse_args(flags))
    assert result["counts"]["decode per copy"] == result["counts"]["decode once"] == [24]
    assert result["ratio"] > 0 and result["bound"] > 1


def test_retrieval_batched_and_single_extraction_agree_and_search_runs():
    flags = [
        "--model",
        "resnet18",
        "--input-size",
        "40",
        "--num-groups",
        "2",
        "-b",
        "4",
        "-j",
        "0",
        "--rounds",
        "1",
        "--num-queries",
        "50",
        "--num-database",
        "300",
        "--dim",
        "8",
        "-k",
        "5",
        "--chunk-sizes",
        "64",
        "--num-ap-queries",
        "7",
    ]
    result = retrieval.main(retrieval.get_args_parser().parse_args(flags))
    assert result["extraction"]["max_difference"] < 1e-4
    assert result["search"][64]["seconds"] > 0 and result["search"][64]["peak_bytes"] >= 0
    assert result["positions"]["same"]


def test_channels_last_without_compile():
    flags = [*TINY_MODEL, "--variants", "eager", "channels-last", "--steps", "1", "--rounds", "1"]
    result = channels_last_compile.main(channels_last_compile.get_args_parser().parse_args(flags))
    assert set(result) == {"train", "eval"}
    assert result["train"]["eager"] == 1.0 and result["eval"]["channels-last"] > 0
