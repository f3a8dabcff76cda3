"""Pages looked at in a real browser: headless Chromium from the distribution's packages (Debian's `chromium`), run
as a command (--dump-dom, --screenshot), and what the dumped DOM shows.

A test that needs it is skipped, saying why, where Chromium is not installed; in CI (the environment variable CI
set, as .ci/run sets it, after installing Chromium) it fails instead."""

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium():
    """The Chromium command: skips the test where it is not installed, fails it in CI."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "headless Chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, and CI must run the browser checks: .ci/run installs it")
        pytest.skip(message)
    return path


def run_chromium(page, *arguments):
    """Chromium's output for the page (a file), with its own empty profile."""
    with tempfile.TemporaryDirectory() as profile:
        command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *arguments, Path(page).resolve().as_uri()]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"chromium exited with {run.returncode}: {run.stderr[-2000:]}"
    return run.stdout


def screenshot(page, path, width=1200, height=1600):
    """The page as Chromium draws it in a window of width x height px: an RGB array, also written to `path`."""
    run_chromium(page, f"--screenshot={path}", f"--window-size={width},{height}")
    assert Path(path).is_file(), f"chromium wrote no screenshot of {page}"
    return np.asarray(Image.open(path).convert("RGB"))


def colourful_pixels(picture):
    """How many pixels are strongly coloured (max - min channel > 60): the synthetic images are, text is not."""
    picture = picture.astype(np.int16)
    return int((picture.max(axis=2) - picture.min(axis=2) > 60).sum())


class Element:
    def __init__(self, tag, attributes):
        self.tag, self.attributes = tag, dict(attributes)
        self.classes = set((self.attributes.get("class") or "").split())
        self.text = ""


class Dom(HTMLParser):
    """The elements of a page (as Chromium's --dump-dom serialises it), in document order, with their text."""

    def __init__(self, document):
        super().__init__(convert_charrefs=True)
        self.elements, self.open = [], []
        self.feed(document)

    def handle_starttag(self, tag, attributes):
        element = Element(tag, attributes)
        self.elements.append(element)
        if tag not in ("img", "meta", "br", "link"):
            self.open.append(element)

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop().tag == tag:
                break

    def handle_data(self, data):
        for element in self.open:
            element.text += data

    def select(self, tag, *classes):
        """The elements of this tag with all these classes."""
        return [e for e in self.elements if e.tag == tag and set(classes) <= e.classes]


def dump_dom(page):
    """The page's DOM after Chromium loaded it."""
    return Dom(run_chromium(page, "--dump-dom"))
