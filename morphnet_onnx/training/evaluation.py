"""`evaluate`: top-1/top-5 accuracy (cross-entropy tasks) or mse of a model with onnxruntime."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import MorphNetError
from ..graph_utils import fixed_batch, graph_input_names
from ..loading.model import load
from ..loading.runtime import make_session
from ..loading.shapes import InputShapes
from .data import load_data
from .dataset import Dataset
from .images import ImageOptions, check_classes
from .rebatch import check_rebatched, rebatch


@dataclass
class Evaluation:
    examples: int
    loss: str
    accuracy: float | None = None
    top5: float | None = None
    mse: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def evaluate_model(model: onnx.ModelProto, data: Dataset, task: str = "ce", batch: int = 256) -> Evaluation:
    model, batch = _at_evaluation_batch(model, batch)
    session = make_session(model)
    names = [i.name for i in session.get_inputs()]
    correct = correct5 = 0
    squared = 0.0
    n = len(data)
    for start, feeds in zip(range(0, n, batch), data.batches(batch, False, 0, fill_last=True)):
        real = min(batch, n - start)
        out = session.run(None, {k: feeds[k] for k in names})[0][:real]
        labels = feeds["labels"][:real]
        if task == "ce":
            correct += int(np.sum(np.argmax(out, axis=-1) == labels))
            top = np.argsort(-out, axis=-1)[:, :5]
            correct5 += int(np.sum(np.any(top == labels[:, None], axis=1)))
        else:
            squared += float(np.sum((out.reshape(labels.shape) - labels) ** 2))
    if task == "ce":
        return Evaluation(n, task, accuracy=correct / n, top5=correct5 / n)
    return Evaluation(n, task, mse=squared / max(n * int(np.prod(data.labels.shape[1:] or (1,))), 1))


def _at_evaluation_batch(model: onnx.ModelProto, batch: int) -> tuple[onnx.ModelProto, int]:
    """A model exported with a fixed batch (of 1, say) evaluates `batch` examples a run when it can be
    rebatched exactly (rebatch.py), else at its own batch; the last batch is filled up from the start
    and the filler not counted."""
    fixed = fixed_batch(model)
    if fixed is None or fixed == batch:
        return model, batch
    real = set(graph_input_names(model))
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in model.graph.input
              if v.name in real}
    try:
        check_rebatched(model, shapes, model.graph.name or "model")
    except MorphNetError:
        return model, fixed
    return rebatch(model, batch).model, batch


def evaluate(model: str | os.PathLike | onnx.ModelProto, data: str | os.PathLike, loss: str = "ce",
             input_shapes: InputShapes | None = None, batch: int = 256,
             images: ImageOptions | None = None) -> Evaluation:
    """Top-1 / top-5 accuracy (cross-entropy) or mse of a model on an .npz file, a folder of .npy
    files or a folder of class folders of images (`images`: their mean, std and decoding threads;
    never augmented; checked against the class names written beside the model, if any).

    >>> evaluate("small.onnx", "val.npz").accuracy     # doctest: +SKIP
    0.862
    """
    loaded = load(model, input_shapes)
    dataset = load_data(data, None, loaded, loss, images)
    if isinstance(model, (str, os.PathLike)):
        check_classes(model, dataset)
    return evaluate_model(loaded.model, dataset, loss, batch)
