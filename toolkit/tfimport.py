"""Import TensorFlow once, without the C++ start-up chatter on stderr (``TK_TF_LOGS=1`` keeps it)."""

from __future__ import annotations

import os
import sys
from types import ModuleType


def tensorflow() -> ModuleType:
    """The ``tensorflow`` module, imported quietly on first use."""
    if "tensorflow" in sys.modules or os.environ.get("TK_TF_LOGS"):
        import tensorflow as tf

        return tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf
            import keras  # noqa: F401  (keras logs at import too)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf
