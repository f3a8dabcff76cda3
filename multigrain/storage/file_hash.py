"""The SHA-256 of a file, read in blocks: what extract.py records of its checkpoint, and check.py verifies."""

import hashlib


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
