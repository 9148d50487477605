"""The in-process ``tk`` the tests use answers as the ``tk`` process does, and leaves this process as it was."""

from __future__ import annotations

import os
import signal
import warnings

import pytest

from tests.conftest import STAND_IN, run_tk, tk


@pytest.mark.parametrize("args", [("plugins", "--json", "--plugin", STAND_IN),
                                  ("similar", "x.png", "--backbone", "stand_in", "--plugin", STAND_IN)])
def test_in_process_tk_gives_what_the_process_gives(tmp_path, args):
    in_process, process = tk(*args, cwd=tmp_path), run_tk(*args, cwd=tmp_path)
    assert in_process == process
    assert in_process.stdout if in_process.exit_code == 0 else in_process.stderr  # something was compared


def test_in_process_tk_restores_the_working_directory_environment_and_handlers(tmp_path):
    before = (os.getcwd(), dict(os.environ), signal.getsignal(signal.SIGTERM), warnings.showwarning)
    result = tk("run", tmp_path / "nowhere", "--backbone", "stand_in", "--plugin", STAND_IN, cwd=tmp_path,
                env={"TK_SOMETHING": "1"})
    assert result.exit_code == 1 and "nowhere does not exist" in result.stderr
    assert (os.getcwd(), dict(os.environ), signal.getsignal(signal.SIGTERM), warnings.showwarning) == before
