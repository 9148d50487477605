"""Shared fixtures: generated datasets, the test backbones, one finished run, and running ``tk``.

Two test backbones: ``STAND_IN`` (plain numpy, no TensorFlow) for every test where the network is not
the point, and ``TINY`` (a small Keras CNN) where a Keras model is (Grad-CAM, export, training,
precision, folding, weights). ``tk`` runs the CLI in this process; ``run_tk`` starts a fresh
interpreter, for the tests where the process itself is the point (each says why).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.datasets import make_breakhis

PLUGINS = Path(__file__).parent / "plugins"
TINY = PLUGINS / "tiny_backbone.py"
STAND_IN = PLUGINS / "stand_in_backbone.py"


class Result(NamedTuple):
    """What a ``tk`` command gave: its exit status and what it printed."""

    exit_code: int
    stdout: str
    stderr: str


def tk(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> Result:
    """Run the ``tk`` CLI in this process through ``toolkit.cli.main``, as a fresh ``tk`` process would:
    plugins loaded afresh, in ``cwd`` with ``env`` added, stdout and stderr captured. What ``main``
    changes for the whole process (the working directory, environment, SIGTERM handler and warning
    display) is put back afterwards."""
    from toolkit.cli import main
    from toolkit.plugin import registry

    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    saved_sigterm, saved_showwarning = signal.getsignal(signal.SIGTERM), warnings.showwarning
    stdout, stderr = io.StringIO(), io.StringIO()
    registry._cache.clear()  # plugin files and the user's encoders are read again, as by a new process
    try:
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(stdout), redirect_stderr(stderr):
            try:
                main([str(arg) for arg in args])
                code = 0
            except SystemExit as exc:
                code = _exit_status(exc.code)
                if isinstance(exc.code, str):  # as the interpreter prints it on the way out
                    print(exc.code, file=stderr)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        signal.signal(signal.SIGTERM, saved_sigterm)
        warnings.showwarning = saved_showwarning
    return Result(code, stdout.getvalue(), stderr.getvalue())


def _exit_status(code: object) -> int:
    """The status a process exiting with ``sys.exit(code)`` would have."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def run_tk(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
           timeout: float = 600) -> Result:
    """Run the ``tk`` CLI in a fresh interpreter (as a user would): for tests where the process is the
    point (a kill, a lock held by another process, native libraries' output, what a fresh interpreter
    imports)."""
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


@dataclass(frozen=True)
class FinishedRun:
    """A finished ``tk run``: the tree it embedded, its store and its report folder."""

    data: Path
    store: Path
    out: Path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> FinishedRun:
    """One ``tk run`` of the stand-in backbone with every default analysis and the HTML report, on the
    tree of the ``breakhis`` fixture; shared by the tests that only read it (``finished_store`` gives
    a copy to a test that might write)."""
    root = tmp_path_factory.mktemp("finished-run")
    run = FinishedRun(root / "BreaKHis_v1" / "histology_slides" / "breast", root / "tk.duckdb", root / "out")
    make_breakhis(run.data)
    result = tk("run", run.data, "--backbone", "stand_in", "--store", run.store, "--out", run.out,
                "--plugin", STAND_IN, env={"TK_CACHE_DIR": str(root / "cache"), "TK_LOAD_PLUGINS": "",
                                           "XDG_CONFIG_HOME": str(root / "config")})
    assert result.exit_code == 0, result.stderr
    return run


@pytest.fixture
def finished_store(finished_run, tmp_path) -> Path:
    """A copy of the finished run's store, in this test's folder."""
    copy = tmp_path / finished_run.store.name
    shutil.copyfile(finished_run.store, copy)
    return copy
