"""The seam between the training loop (trainer.py) and the engine that takes the steps.

The loop, the data order, the learning-rate schedule, the budget controller, the learning guard and
checkpoint bookkeeping are shared; a backend only turns one batch (with the regularizer's cost
weights) into one optimizer step, and hands back the trained initializers by their ONNX names:

- `ort` (ort_backend.py): onnxruntime-training's on-device API, the embedded default;
- `torch` (torch_backend.py, the optional extra `torch`): the graph converted to a torch module
  with onnx2torch, the same regularizer written in torch, data-parallel under torchrun.

Everything the backends share about the loss lives here: the feed name of the cost weights, and
which output holds the logits.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

BACKENDS = ("ort", "torch")
# torch is an optional extra: the torch backend's module is named here and loads by this name when a
# run asks for it (torch_session_class), so the default path never imports torch.
TORCH_SESSION = ("morphnet_onnx.training.torch_backend", "TorchSession")
COST_WEIGHTS = "morphnet_cost_weights"  # the regularizer's per-channel weights, fed every step
STATE_FILE = "state.json"  # in --checkpoint-dir: the step, the run, the loop's state and the last checkpoint's name


@dataclass
class StepOutput:
    """What one step computed, before the update: the whole (global) batch's losses and logits."""

    loss: float
    task: float
    reg: float
    logits: np.ndarray | None  # cross-entropy only: training accuracy per step


class Session(Protocol):
    """One backend's training state. `batch` holds the model inputs by name, `labels`, and (with a
    regularizer) COST_WEIGHTS and (FiGS) the gate noise. The labels are the step's global batch; under
    torchrun the inputs are this rank's rows of it (rank, rank + N, ...: the data set reads no others)."""

    def step(self, batch: dict[str, np.ndarray], lr: float) -> StepOutput:
        """Loss and logits of `batch`, then one optimizer step at `lr` (none when the loss is not finite)."""

    def params(self, names: list[str]) -> dict[str, np.ndarray]:
        """Current values of initializers, by ONNX name, in the user's layout."""

    def eval_logits(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Logits of one batch with batch statistics, as trained, without a step."""

    def save(self, path: Path) -> None:
        """Write the backend's checkpoint (parameters and optimizer state) to `path` (a new name: the
        loop's record names it only once it is complete). A session opened with `resume_from=path`
        continues from it."""

    def close(self) -> None:
        """Free what the session holds (temporary files, process groups stay for the next run)."""


def torch_session_class() -> type:
    """The torch backend's Session class (imports torch and onnx2torch)."""
    module, name = TORCH_SESSION
    return getattr(importlib.import_module(module), name)


def logits_of(model: onnx.ModelProto) -> str:
    """The first output, or the input of a trailing Softmax/LogSoftmax (cross-entropy wants logits)."""
    output = model.graph.output[0].name
    for node in model.graph.node:
        if output in node.output and node.op_type in ("Softmax", "LogSoftmax"):
            return node.input[0]
    return output
