"""Native libraries' chatter stays off the user's terminal (issue #17, item 14)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
import numpy as np
from toolkit.extract.tfimport import tensorflow
tf = tensorflow()

class Tiny(tf.Module):
    def __init__(self):
        self.w = tf.Variable(tf.ones((3, 2)))

    @tf.function(input_signature=[tf.TensorSpec((None, 4, 4, 3), tf.float32, name="images")])
    def serve(self, images):
        return {"probabilities": tf.nn.softmax(tf.reduce_mean(images, axis=(1, 2)) @ self.w)}

module = Tiny()
converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
open(sys.argv[1], "wb").write(converter.convert())
sys.stderr.write("CONVERTED\\n")
sys.stderr.flush()
from toolkit.extract.litert import LiteModel
lite = LiteModel(sys.argv[1])
for _ in range(2):
    out = lite(np.ones((1, 4, 4, 3), np.float32))
print(out["probabilities"].round(3).tolist())
"""


def test_litert_prints_no_delegate_notice(tmp_path: Path) -> None:
    completed = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "tiny.tflite")],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[[0.5, 0.5]]"
    after_conversion = completed.stderr.split("CONVERTED", 1)[1]
    assert "XNNPACK" not in after_conversion, after_conversion
