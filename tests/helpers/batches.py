"""A --data-module for tests: random batches for models/tiny_resnet.onnx."""

import numpy as np


def tiny_batches():
    rng = np.random.default_rng(1)
    for _ in range(4):
        yield {"input": rng.standard_normal((8, 3, 32, 32)).astype(np.float32), "labels": rng.integers(0, 10, 8)}
