"""Distillation from the input model: `shrink` keeps the model it was given as a frozen teacher and
trains the network it shrinks to match the teacher's softened class probabilities as well as the
labels (training/backend.py's `Distill` gives the loss).

The teacher is scored once over the training set with onnxruntime (inference: its running
batch-norm statistics), and its probabilities at the temperature travel with the examples, so a step
costs what it costs without distillation. An untrained model teaches noise, so `auto` distils only
from a teacher that scores well on the training data: at least halfway from chance (the most
frequent class's share) to 100% top-1 (an untrained network scores about chance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..loading.runtime import make_session
from .backend import TEACHER, Distill, logits_of
from .dataset import Dataset

DISTILL_MODES = ("auto", "on", "off")
# auto: distil when the teacher's training top-1 is at least this far from chance to 100%.
TRAINED_SHARE = 0.5


@dataclass
class TeacherCheck:
    """What the tool measured of the teacher, and what it chose."""

    accuracy: float  # top-1 on the training data
    chance: float  # the most frequent class's share
    used: bool
    reason: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def teacher_logits(model: onnx.ModelProto, data: Dataset, batch: int = 256) -> np.ndarray:
    """The model's logits (before a trailing Softmax) for every example of `data`, in order (the inputs
    as the data set gives them at seed 0: an augmenting image folder's first draw)."""
    scored = onnx.ModelProto()
    scored.CopyFrom(model)
    logits = logits_of(scored)
    if logits != scored.graph.output[0].name:
        del scored.graph.output[:]
        scored.graph.output.append(onnx.helper.make_empty_tensor_value_info(logits))
    session = make_session(scored)
    names = [i.name for i in session.get_inputs()]
    declared = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else None
    if isinstance(declared, int) and declared > 0:  # a model exported with a fixed batch takes exactly that
        batch = declared
    n = len(data)
    parts = []
    for start, feeds in zip(range(0, n, batch), data.batches(batch, False, 0, fill_last=True)):
        real = min(batch, n - start)
        out = session.run(None, {k: feeds[k] for k in names})[0][:real]
        parts.append(np.asarray(out, dtype=np.float64).reshape(real, -1))
    return np.concatenate(parts)


def softened(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def check_teacher(logits: np.ndarray, labels: np.ndarray, mode: str) -> TeacherCheck:
    """Whether to distil: always (`on`), never (`off`), or (`auto`) when the teacher is trained."""
    accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
    chance = float(np.bincount(labels).max() / len(labels))
    trained = accuracy >= chance + TRAINED_SHARE * (1 - chance)
    if mode == "on":
        return TeacherCheck(accuracy, chance, True, "--distill on")
    if mode == "off":
        return TeacherCheck(accuracy, chance, False, "--distill off")
    if trained:
        return TeacherCheck(accuracy, chance, True, f"the input model scores {accuracy:.1%} on the training data "
                                                    f"(chance {chance:.1%}): a trained teacher")
    return TeacherCheck(accuracy, chance, False, f"the input model scores {accuracy:.1%} on the training data "
                                                 f"(chance {chance:.1%}): untrained, nothing to distil")


class TaughtDataset(Dataset):
    """A data set with the teacher's probabilities read beside every example's inputs (by the same
    rows, so a torchrun rank gets its own rows' probabilities)."""

    def __init__(self, data: Dataset, probabilities: np.ndarray) -> None:
        self.data, self.probabilities = data, probabilities
        self.name, self.labels, self.classes = data.name, data.labels, data.classes
        self.workers, self.prefetch = data.workers, data.prefetch

    def gather(self, rows: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        inputs = self.data.gather(rows, seed)
        inputs[TEACHER] = self.probabilities[rows]
        return inputs


def with_teacher(data: Dataset, probabilities: np.ndarray) -> Dataset:
    """The data set with the teacher's probabilities batched beside its inputs."""
    return TaughtDataset(data, probabilities)


__all__ = ["DISTILL_MODES", "Distill", "TeacherCheck", "check_teacher", "softened", "teacher_logits", "TaughtDataset", "with_teacher"]
