import json

import pytest

from tools.compare_metrics import compare_metrics


def test_results_of_two_runs_side_by_side(tmp_path):
    # a: a metrics.json of today (--checkpoint), b: of an earlier version, whose flag was --resume
    runs = (("a", "checkpoint", "runs/train/checkpoint.pth", 80.0), ("b", "resume", "runs/whiten/whitened.pth", 91.25))
    for name, flag, path, value in runs:
        record = {"description": f"{path}: p=3", "results": {"holidays": {"mAP": value}}, "args": {flag: path}}
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    (tmp_path / "c.json").write_text(
        json.dumps({"description": "c", "results": {"ukbench": {"N-S": 3.5}}, "args": {"resume": "c.pth"}})
    )
    lines = compare_metrics([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"]).splitlines()
    assert lines[:3] == [
        "checkpoint.pth: runs/train/checkpoint.pth: p=3",
        "whitened.pth: runs/whiten/whitened.pth: p=3",
        "c.pth: c",
    ]
    assert lines[3].split() == ["dataset", "metric", "checkpoint.pth", "whitened.pth", "c.pth"]
    assert lines[4].split() == ["holidays", "mAP", "80.00", "91.25"]
    assert lines[5].split() == ["ukbench", "N-S", "3.50"]
    with pytest.raises(ValueError, match="missing.json is not a metrics.json"):
        compare_metrics([tmp_path / "missing.json"])
