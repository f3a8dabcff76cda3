"""The images a command is given: a folder (every image file under it) or a list file of paths relative to a root
folder. extract.py and check.py read their --images and --root with it."""

import hashlib
import os
from pathlib import Path

from .datasets import list_image_files


def read_image_list(images, root=None):
    """(paths, names): the images of `images` (a folder, or a list file with `root`), named by their path relative
    to the folder or to `root`. The errors name the flags --images and --root."""
    images = Path(images)
    if images.is_dir():
        if root:
            raise ValueError(f"--root is for a list file; --images {images} is a folder")
        names = list_image_files(images, recursive=True)
        if not names:
            raise ValueError(f"--images {images} holds no image file")
        return [images / name for name in names], names
    if not images.is_file():
        raise ValueError(f"--images {images} does not exist")
    if not root:
        raise ValueError(f"--images {images} is a list file: pass the folder its paths are relative to with --root")
    if not Path(root).is_dir():
        raise ValueError(f"--root {root} is not a folder")
    names = [line.strip() for line in images.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"--images {images} lists no image")
    seen = set()
    for line, name in enumerate(names, 1):
        if name in seen:
            raise ValueError(f"--images {images}: {name} is listed twice (line {line})")
        seen.add(name)
    return [Path(root) / name for name in names], names


def images_root(images, root=None):
    """The folder the names of read_image_list(images, root) are relative to."""
    return Path(os.path.abspath(root if root else images))


def names_sha256(names):
    """The SHA-256 of the names, one a line (a name that is not UTF-8 counts as its bytes)."""
    return hashlib.sha256("".join(f"{name}\n" for name in names).encode("utf-8", "surrogateescape")).hexdigest()
