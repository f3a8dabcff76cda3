"""Print the results of several evaluate.py runs side by side, one column per metrics.json.

python tools/compare_metrics.py runs/a/metrics.json runs/b/metrics.json
"""

import argparse
import json
from pathlib import Path


def checkpoint_name(record):
    """The file name of the evaluated model: --checkpoint, or --resume in the metrics.json of earlier versions."""
    arguments = record["args"]
    return Path(arguments.get("checkpoint", arguments.get("resume")) or "").name


def compare_metrics(paths):
    """The table, as text: a row per (dataset, metric), a column per file, headed by its checkpoint."""
    records = []
    for path in paths:
        try:
            records.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not a metrics.json of evaluate.py: {e}") from e
    rows = {}
    for column, record in enumerate(records):
        for dataset, metrics in record["results"].items():
            for metric, value in metrics.items():
                rows.setdefault((dataset, metric), [""] * len(records))[column] = f"{value:.2f}"
    header = ["dataset", "metric", *(checkpoint_name(record) for record in records)]
    table = [header, *([dataset, metric, *values] for (dataset, metric), values in rows.items())]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(width) if i >= 2 else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths))
        )
        for row in table
    ]
    descriptions = [f"{checkpoint_name(record)}: {record['description']}" for record in records]
    return "\n".join([*descriptions, *lines])


def get_args_parser():
    parser = argparse.ArgumentParser(description="evaluate.py results side by side")
    parser.add_argument("metrics", nargs="+", help="metrics.json files written by evaluate.py --output-dir")
    return parser


def main():
    parser = get_args_parser()
    args = parser.parse_args()
    try:
        print(compare_metrics(args.metrics))
    except (ValueError, KeyError) as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
