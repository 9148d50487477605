"""Import TensorFlow once, without the C++ start-up chatter on stderr (``TK_TF_LOGS=1`` keeps it)."""

from __future__ import annotations

import logging
import os
import sys
from types import ModuleType

from toolkit.extract.native_stderr import native_stderr_silenced


def tensorflow() -> ModuleType:
    """The ``tensorflow`` module, imported quietly on first use."""
    if os.environ.get("TK_TF_LOGS"):
        import tensorflow as tf

        return tf
    if "tensorflow" not in sys.modules:
        _import_quietly()
    import tensorflow as tf

    tf.get_logger().addFilter(_not_a_retrace_warning)  # added once: logging ignores a second add
    return tf


def _import_quietly() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_silenced():
        import tensorflow  # noqa: F401
        import keras  # noqa: F401  (keras logs at import too)


def _not_a_retrace_warning(record: logging.LogRecord) -> bool:
    """Drop TensorFlow's "N out of the last N calls ... triggered tf.function retracing" warning.

    tk builds one graph function per backbone and precision, each traced exactly once for its fixed
    batch shape; TensorFlow counts the traces of all functions made from the same Python code
    (toolkit.extract.pipeline.make_extractor) and calls that excessive retracing once there are five.
    """
    return "triggered tf.function retracing" not in record.getMessage()
