"""Training data: .npz files (one array per model input, plus `labels`) or a user's Python function.

`--data train.npz` holds one array per model input keyed by the input's name (or `x` for a
single-input model) and `labels` (class indices for cross-entropy, targets for mse).
`--data-module pkg.mod:fn` names a function returning an iterable of batches, each a dict of arrays
with the same keys, for users with their own pipelines.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from ..errors import MorphNetError, first_line
from ..graph_utils import graph_input_names
from ..loading.model import LoadedModel


@dataclass
class InputSpec:
    name: str
    shape: tuple[int, ...]  # batch-1 static shape
    dtype: np.dtype


def input_specs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> list[InputSpec]:
    inputs = {i.name: i for i in model.graph.input}
    specs = []
    for name in graph_input_names(model):
        elem = inputs[name].type.tensor_type.elem_type
        specs.append(InputSpec(name, tuple(shapes[name]), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))))
    return specs


class Dataset:
    """Arrays in memory: inputs by model input name, and labels."""

    def __init__(self, arrays: dict[str, np.ndarray], labels: np.ndarray, name: str) -> None:
        self.arrays = arrays
        self.labels = labels
        self.name = name

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batch_size: int, shuffle: bool, seed: int, skip: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Full batches only (training graphs have a static batch size); `skip` resumes mid-epoch."""
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for start in range(skip * batch_size, len(self) - batch_size + 1, batch_size):
            index = order[start:start + batch_size]
            batch = {k: v[index] for k, v in self.arrays.items()}
            batch["labels"] = self.labels[index]
            yield batch

    def batches_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size

    def require_batches(self, batch_size: int) -> int:
        """Full batches per epoch; MorphNetError when there is not one (training has a static batch)."""
        per_epoch = self.batches_per_epoch(batch_size)
        if per_epoch == 0:
            raise MorphNetError(f"{self.name}: {len(self)} examples, fewer than one batch of {batch_size}; "
                                f"lower --batch-size")
        return per_epoch


def load_npz(path: str | os.PathLike, specs: list[InputSpec], task: str, classes: int | None) -> Dataset:
    path = Path(path)
    if not path.exists():
        raise MorphNetError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as exc:
        raise MorphNetError(f"{path}: not a readable .npz file ({first_line(exc)})") from exc
    return make_dataset(arrays, specs, task, classes, str(path))


def make_dataset(arrays: dict[str, np.ndarray], specs: list[InputSpec], task: str, classes: int | None,
                 name: str) -> Dataset:
    """Check the arrays against the model's inputs; every problem is one line saying what to change."""
    if "labels" not in arrays:
        raise MorphNetError(f"{name}: no 'labels' array (found: {sorted(arrays)})")
    labels = np.asarray(arrays["labels"])
    inputs = {}
    for spec in specs:
        key = spec.name if spec.name in arrays else ("x" if len(specs) == 1 and "x" in arrays else None)
        if key is None:
            raise MorphNetError(f"{name}: no array for model input {spec.name!r} (found: {sorted(arrays)}; "
                                f"name it {spec.name!r}{' or x' if len(specs) == 1 else ''})")
        value = arrays[key]
        if value.shape[1:] != spec.shape[1:]:
            raise MorphNetError(f"{name}: {key!r} has examples of shape {list(value.shape[1:])}, the model input "
                                f"{spec.name!r} wants {list(spec.shape[1:])}")
        if value.dtype != spec.dtype:
            raise MorphNetError(f"{name}: {key!r} is {value.dtype}, the model input {spec.name!r} wants "
                                f"{spec.dtype}; save it as {spec.dtype}")
        if len(value) != len(labels):
            raise MorphNetError(f"{name}: {key!r} has {len(value)} examples but 'labels' has {len(labels)}")
        _require_finite(value, key, name)
        inputs[spec.name] = value
    if len(labels) == 0:
        raise MorphNetError(f"{name}: the dataset is empty")
    if task == "ce":
        if not np.issubdtype(labels.dtype, np.integer):
            raise MorphNetError(f"{name}: 'labels' must be integer class indices for cross-entropy "
                                f"(got {labels.dtype}; use --loss mse for regression)")
        if classes is not None and (labels.min() < 0 or labels.max() >= classes):
            raise MorphNetError(f"{name}: labels range {labels.min()}..{labels.max()} but the model has {classes} "
                                f"classes (0..{classes - 1})")
        labels = labels.astype(np.int64)
    else:
        _require_finite(labels, "labels", name)
        labels = labels.astype(np.float32)
    return Dataset(inputs, labels, name)


def _require_finite(value: np.ndarray, key: str, name: str) -> None:
    """NaN or Inf in the data would surface as a NaN loss blamed on the learning rate: name it here."""
    if not np.issubdtype(value.dtype, np.floating):
        return
    bad = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1) if len(value) else np.zeros(0, bool)
    if bad.any():
        first = int(np.argmax(bad))
        raise MorphNetError(f"{name}: {key!r} holds NaN or Inf in {int(bad.sum())} examples, the first at index "
                            f"{first}; clean or drop them")


def load_module_batches(spec: str, specs: list[InputSpec], task: str, classes: int | None) -> Dataset:
    """`pkg.mod:fn` returning an iterable of batches (dicts); gathered into memory and checked."""
    module_name, _, fn_name = spec.partition(":")
    if not module_name or not fn_name:
        raise MorphNetError(f"--data-module {spec!r}: expected package.module:function")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise MorphNetError(f"--data-module {spec!r}: cannot import ({exc})") from exc
    collected: dict[str, list[np.ndarray]] = {}
    for batch in fn():
        for key, value in batch.items():
            collected.setdefault(key, []).append(np.asarray(value))
    if not collected:
        raise MorphNetError(f"--data-module {spec!r}: returned no batches")
    arrays = {k: np.concatenate(v) for k, v in collected.items()}
    return make_dataset(arrays, specs, task, classes, spec)


def load_data(path, module: str | None, loaded: LoadedModel, task: str) -> Dataset:
    specs = input_specs(loaded.model, loaded.shapes)
    classes = _classes(loaded) if task == "ce" else None
    if module:
        return load_module_batches(module, specs, task, classes)
    if path is None:
        raise MorphNetError("give --data train.npz or --data-module package.module:function")
    return load_npz(path, specs, task, classes)


def _classes(loaded: LoadedModel) -> int | None:
    shape = loaded.shapes.get(loaded.model.graph.output[0].name)
    return int(shape[-1]) if shape else None
