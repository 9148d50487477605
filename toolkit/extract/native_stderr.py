"""Silence what native libraries (TensorFlow's C++ start-up, LiteRT's delegate notice) print straight
to file descriptor 2, where Python's logging and warnings filters cannot reach it."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to ``/dev/null`` for the block (``TK_TF_LOGS=1`` keeps it).

    Exceptions still propagate: only text that native code writes itself is dropped.
    """
    if os.environ.get("TK_TF_LOGS"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
