"""The images a command is given: a folder (every image file under it) or a list file of paths relative to a root
folder. extract.py and check.py read their --images and --root with it, train.py a collection's --data-path and
--data-root."""

import hashlib
import os
from pathlib import Path

from .datasets import list_image_files


def read_image_list(images, root=None, *, images_flag="--images", root_flag="--root"):
    """(paths, names) of the images of `images`: a folder (every image file under it, `list_image_files`) or a list
    file of paths relative to the folder `root`, one a line; each image is named by that relative path. The errors
    name the flags the paths came from."""
    images = Path(images)
    if images.is_dir():
        if root:
            raise ValueError(f"{root_flag} is for a list file; {images_flag} {images} is a folder")
        names = list_image_files(images, recursive=True)
        if not names:
            raise ValueError(f"{images_flag} {images} holds no image file")
        return [images / name for name in names], names
    if not images.is_file():
        raise ValueError(f"{images_flag} {images} does not exist")
    if not root:
        raise ValueError(
            f"{images_flag} {images} is a list file: pass the folder its paths are relative to with {root_flag}"
        )
    if not os.path.isdir(root):
        raise ValueError(f"{root_flag} {root} is not a folder")
    names, seen = [], set()
    for line, text in enumerate(images.read_text().splitlines(), 1):
        name = text.strip()
        if name in seen:
            raise ValueError(f"{images_flag} {images}: {name} is listed twice (line {line})")
        if name:
            seen.add(name)
            names.append(name)
    if not names:
        raise ValueError(f"{images_flag} {images} lists no image")
    return [Path(root) / name for name in names], names


def images_root(images, root=None):
    """The folder the names of read_image_list(images, root) are relative to."""
    return Path(os.path.abspath(root if root else images))


def names_sha256(names):
    """The SHA-256 of the names, one a line (a name that is not UTF-8 counts as its bytes)."""
    return hashlib.sha256("".join(f"{name}\n" for name in names).encode("utf-8", "surrogateescape")).hexdigest()
