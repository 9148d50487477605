"""Running exported ``.tflite`` models in the LiteRT interpreter (``ai-edge-litert``, XNNPACK)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit.extract.native_stderr import native_stderr_silenced

THREADS = 2


class LiteModel:
    """A ``.tflite`` classifier: raw RGB pixels in, ``embedding`` and ``probabilities`` out."""

    def __init__(self, path: Path | str, threads: int = THREADS) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.runner = interpreter.get_signature_runner("serving_default")
        self.input_dtype = self.runner.get_input_details()["images"]["dtype"]
        self._invoked = False

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for a batch (n, h, w, 3) of raw RGB pixels (0..255); uint8 models get uint8."""
        batch = np.asarray(pixels)
        if batch.dtype != self.input_dtype:  # tk's uint8 batches go to an int8 model as they are
            if np.issubdtype(self.input_dtype, np.integer):
                batch = np.clip(np.rint(batch), 0, 255)
            batch = batch.astype(self.input_dtype)
        if self._invoked:
            outputs = self.runner(images=batch)
        else:  # the first call applies XNNPACK, which prints an INFO line to fd 2
            with native_stderr_silenced():
                outputs = self.runner(images=batch)
            self._invoked = True
        return {name: np.array(value) for name, value in outputs.items()}


def median_ms(call: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``call()`` in milliseconds, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)
