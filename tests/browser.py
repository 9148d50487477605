"""Open a page in real headless Chromium: console messages, the rendered DOM and a screenshot."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars"]
CONSOLE = re.compile(r":CONSOLE[:(]")


def chromium() -> str:
    """Path of Chromium; skips the test locally when it is missing, fails in CI (which installs it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("Chromium is missing; .ci/run installs the Debian package 'chromium'")
    pytest.skip("Chromium is not installed (apt-get install chromium)")


@dataclass
class Page:
    dom: str
    console: list[str]
    screenshot: Path


def open_page(path: Path, screenshot: Path, width: int = 1200, height: int = 2400) -> Page:
    """Load ``path`` from disk twice (DOM dump, then screenshot), collecting console messages."""
    binary = chromium()
    url = path.resolve().as_uri()
    console: list[str] = []
    with tempfile.TemporaryDirectory() as profile:
        common = [binary, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
        dumped = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
        shot = subprocess.run([*common, f"--window-size={width},{height}", f"--screenshot={screenshot}", url],
                              capture_output=True, text=True, timeout=120)
    for completed in (dumped, shot):
        console += [line for line in completed.stderr.splitlines() if CONSOLE.search(line)]
    assert dumped.returncode == 0 and shot.returncode == 0, dumped.stderr[-2000:] + shot.stderr[-2000:]
    return Page(dumped.stdout, console, screenshot)
