"""The images a command is given: a folder (every image file under it) or a list file of paths relative to a root
folder. extract.py and check.py read their --images and --root with it, train.py a collection's --data-path and
--data-root."""

import hashlib
import os
from pathlib import Path

from ..storage.input_files import check_regular_file, read_lines, shown
from .datasets import list_image_files


def read_image_list(
    images, root=None, *, images_flag="--images", root_flag="--root", check_files=True, skip_hint="", others=None
):
    """(paths, names) of the images of `images`: a folder (every image file under it, `list_image_files`) or a list
    file of paths relative to the folder `root`, one a line of UTF-8 text; each image is named by that relative
    path. With `check_files`, a listed path that is not a regular file (missing, a folder, a FIFO) is refused
    naming its line (and `skip_hint`, how the command skips such images); with an `others` list, the files of a
    folder that are not images by their extension are appended to it. The errors name the flags the paths came
    from."""
    images = Path(images)
    if images.is_dir():
        if root:
            raise ValueError(f"{root_flag} is for a list file; {images_flag} {images} is a folder")
        names = list_image_files(images, recursive=True, others=others)
        if not names:
            raise ValueError(f"{images_flag} {images} holds no image file")
        return [images / name for name in names], names
    if not images.exists():
        raise ValueError(f"{images_flag} {images} does not exist")
    if not root:
        raise ValueError(
            f"{images_flag} {images} is a list file: pass the folder its paths are relative to with {root_flag}"
        )
    if not os.path.isdir(root):
        raise ValueError(f"{root_flag} {root} is not a folder")
    lines, seen = [], set()
    for number, text in enumerate(read_lines(images), 1):
        name = text.strip()
        if name in seen:
            raise ValueError(f"{images_flag} {images}: {shown(name)} is listed twice (line {number})")
        if name:
            seen.add(name)
            lines.append((number, name))
    if not lines:
        raise ValueError(f"{images_flag} {images} lists no image")
    if check_files:
        for number, name in lines:
            try:
                check_regular_file(Path(root) / name)
            except (OSError, ValueError) as e:  # ValueError: a NUL character in the name
                raise ValueError(
                    f"{images_flag} {images} line {number}: {shown(name)} cannot be read ({e}): correct the list"
                    f"{skip_hint}"
                ) from None
    return [Path(root) / name for _, name in lines], [name for _, name in lines]


def images_root(images, root=None):
    """The folder the names of read_image_list(images, root) are relative to."""
    return Path(os.path.abspath(root if root else images))


def names_sha256(names):
    """The SHA-256 of the names, one a line (a name that is not UTF-8 counts as its bytes)."""
    return hashlib.sha256("".join(f"{name}\n" for name in names).encode("utf-8", "surrogateescape")).hexdigest()
