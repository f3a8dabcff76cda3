"""Smoke tests of the benchmarks: each main() with tiny settings, and gpu_check's CPU smoke mode. No timing is
asserted."""

import argparse
import math
import re
import sys
import time

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import (
    channels_last_compile,
    checkpoint_cost,
    data_pipeline,
    gpu_check,
    retrieval,
    sampling_margin,
    step_overhead,
    training_step,
)
from benchmarks.timing import format_table, median_ratio, time_side_by_side
from multigrain.margin_loss import MarginLoss
from multigrain.model import build_model
from tests.scripts import ONE_THREAD, run_script

TINY_MODEL = ["--model", "resnet18", "--input-size", "32", "-b", "6", "--num-classes", "5"]


def test_time_side_by_side_calls_every_candidate_once_per_round():
    calls = []
    times = time_side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(values) for values in times.values()] == [3, 3]
    assert median_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0
    table = format_table(["x", "value"], [["a", 1]]).splitlines()
    assert table[0].split() == ["x", "value"] and table[2].split() == ["a", "1"]


@pytest.mark.slow
def test_step_overhead(capsys):
    args = step_overhead.get_args_parser().parse_args([*TINY_MODEL, "--steps", "1", "--rounds", "1"])
    result = step_overhead.main(args)
    assert result["ratio"] > 0 and result["target"] == 1.05
    assert "MultiGrain (λ=0.5, reps=3)" in capsys.readouterr().out


@pytest.mark.slow
def test_training_step_feeds_the_step_three_ways_and_counts_its_syncs(capsys):
    flags = [
        *TINY_MODEL, "--num-images", "16", "--image-size", "48x40", "-j", "1", "--steps", "4", "--warmup-steps", "1",
        "--rounds", "1", "--channels-last", "--peak-tflops", "0.5",
    ]  # fmt: skip
    result = training_step.main(training_step.get_args_parser().parse_args(flags))
    assert list(result["samples_per_s"]) == list(training_step.FEEDS)
    assert all(rate > 0 for rate in result["samples_per_s"].values()) and result["ratio"] > 0
    assert result["syncs_per_step"] == 0 and result["progress_syncs"] > 0
    with FlopCounterMode(display=False) as forward:
        build_model("resnet18", num_classes=5)(torch.randn(6, 3, 32, 32))
    assert 2.9 < result["flops"] / forward.get_total_flops() < 3.2  # forward, and backward twice that
    assert 0 < result["mfu"] < 1
    assert "MFU of the step alone" in capsys.readouterr().out


def test_training_step_knows_the_peak_of_the_data_centre_gpus():
    peaks = {
        name: training_step.table_peak_tflops(name)
        for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200", "NVIDIA A100-SXM4-80GB", "NVIDIA L4")
    }
    assert list(peaks.values()) == [989.0, 756.0, 989.0, 312.0, 121.0]
    assert training_step.table_peak_tflops("NVIDIA L40S") == 362.0 and training_step.table_peak_tflops("CPU") is None


@pytest.mark.slow
def test_checkpoint_cost_writes_a_mid_epoch_state(tmp_path, capsys):
    args = checkpoint_cost.get_args_parser().parse_args(
        [*TINY_MODEL, "--save-after", "3", "--steps-after", "1", "--output-dir", str(tmp_path)]
    )
    result = checkpoint_cost.main(args)
    assert result["write_s"] > 0 and result["median_step_s"] > 0
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert state["in_epoch"]["step"] == 3 and "generator" in state["in_epoch"]["ranks"][0]["random"]
    assert "x the write" in capsys.readouterr().out


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


@pytest.mark.slow
def test_retrieval_batched_and_single_extraction_agree_and_search_runs():
    flags = [
        "--model", "resnet18", "--input-size", "40", "--num-groups", "2", "-b", "4", "-j", "0", "--rounds", "1",
        "--num-queries", "50", "--num-database", "300", "--dim", "8", "-k", "5", "--chunk-sizes", "64",
        "--num-ap-queries", "7",
    ]  # fmt: skip
    result = retrieval.main(retrieval.get_args_parser().parse_args(flags))
    assert result["extraction"]["max_difference"] < 1e-4
    assert result["search"][64]["seconds"] > 0 and result["search"][64]["peak_bytes"] >= 0
    assert result["positions"]["same"]


@pytest.mark.slow
def test_channels_last_without_compile():
    flags = [*TINY_MODEL, "--variants", "eager", "channels-last", "--steps", "1", "--rounds", "1"]
    result = channels_last_compile.main(channels_last_compile.get_args_parser().parse_args(flags))
    assert set(result) == {"train", "eval"}
    assert result["train"]["eager"] == 1.0 and result["eval"]["channels-last"] > 0


def run_gpu_check_smoke(log_dir, parts):
    command = ["-m", "benchmarks.gpu_check", "--device", "cpu", "--smoke", "--log-dir", log_dir, "--parts", *parts]
    run = run_script(*command, env=ONE_THREAD, check=False)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    summary = (log_dir / "summary.txt").read_text()
    for part in parts:
        assert re.search(rf"^{part} +ok +\S", summary, re.MULTILINE), summary
        assert (log_dir / f"{part}.log").stat().st_size > 0
    return summary


@pytest.mark.slow
def test_gpu_check_smoke_runs_the_tests_and_the_training(tmp_path):
    summary = run_gpu_check_smoke(tmp_path, ["cuda-tests", "train"])
    assert re.search(r"^train +ok +\d+ img/s, 2x2 steps, loss [\d.]+ → [\d.]+", summary, re.MULTILINE), summary
    assert len((tmp_path / "train-log.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_gpu_check_smoke_runs_the_benchmarks(tmp_path):
    summary = run_gpu_check_smoke(
        tmp_path, ["training-step", "step-overhead", "sampling-margin", "extraction", "channels-last"]
    )
    assert re.search(r"^training-step +ok +[\d.]+ vs [\d.]+ samples/s .* 0 syncs/step", summary, re.MULTILINE), summary


def test_gpu_check_runs_every_part_by_default_and_the_cpu_only_in_smoke_mode():
    parser = gpu_check.get_args_parser()
    args = parser.parse_args(["--device", "cpu", "--smoke"])
    gpu_check.check_args(args)
    assert [part.name for part in gpu_check.build_parts(args, "work")] == list(gpu_check.PART_NAMES)
    with pytest.raises(ValueError, match="add --smoke"):
        gpu_check.check_args(parser.parse_args(["--device", "cpu"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a CUDA device")
def test_gpu_check_refuses_to_start_without_cuda():
    with pytest.raises(ValueError, match="sees no CUDA device"):
        gpu_check.check_args(gpu_check.get_args_parser().parse_args([]))


def test_gpu_check_kills_a_command_at_its_timeout(tmp_path):
    start = time.monotonic()
    with open(tmp_path / "log", "w") as log:
        returncode = gpu_check.run_command([sys.executable, "-c", "import time; time.sleep(60)"], log, timeout=0.5)
    assert returncode is None and time.monotonic() - start < 30


def test_gpu_check_counts_skipped_cuda_tests_as_a_failure_on_cuda():
    cpu, cuda = argparse.Namespace(device="cpu"), argparse.Namespace(device="cuda")
    skipped = "sss\n3 skipped, 270 deselected in 6.81s\n"
    assert gpu_check.pytest_figure(skipped, cpu, "work") == "3 skipped"
    with pytest.raises(ValueError, match="no CUDA device"):
        gpu_check.pytest_figure(skipped, cuda, "work")
    assert gpu_check.pytest_figure("...\n3 passed, 270 deselected in 2.0s\n", cuda, "work") == "3 passed"
