"""Shared fixtures: generated datasets, the tiny test backbone plugin, and running ``tk``."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.datasets import make_breakhis

PLUGINS = Path(__file__).parent / "plugins"
TINY = PLUGINS / "tiny_backbone.py"


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def run_tk(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 600) -> Result:
    """Run the ``tk`` CLI in a fresh interpreter (as a user would)."""
    completed = subprocess.run([sys.executable, "-m", "toolkit", *map(str, args)], cwd=cwd, capture_output=True,
                               text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return Result(completed.returncode, completed.stdout, completed.stderr)


NO_TF_SCRIPT = """
import sys
from toolkit.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
print("TENSORFLOW_IMPORTED" if "tensorflow" in sys.modules else "TENSORFLOW_NOT_IMPORTED", file=sys.stderr)
sys.exit(code)
"""


def run_tk_reporting_tensorflow(*args: str | Path, cwd: Path | None = None) -> Result:
    """Like run_tk, and stderr ends with whether TensorFlow was imported."""
    completed = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT, *map(str, args)], cwd=cwd,
                               capture_output=True, text=True, timeout=600)
    return Result(completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the demo cache and plugin lookups away from the user's home and working directory."""
    monkeypatch.setenv("TK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("TK_LOAD_PLUGINS", "")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))  # no user's encoders


@pytest.fixture
def breakhis(tmp_path) -> Path:
    """A BreakHis-layout tree of 32 small images (4 subtypes x 2 patients x 2 magnifications x 2)."""
    root = tmp_path / "BreaKHis_v1" / "histology_slides" / "breast"
    make_breakhis(root)
    return root
