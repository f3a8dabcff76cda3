"""The scripts' logs (log.jsonl, ...): one JSON record per line."""

import json
import os

from .atomic_write import write_atomic


def write_json_lines(path, records):
    """Replaces `path` atomically with one JSON line per record."""
    write_atomic(path, lambda f: f.write("".join(json.dumps(record) + "\n" for record in records).encode()), "log")


def append_json_line(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
