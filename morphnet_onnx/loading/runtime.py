"""onnxruntime helpers: sessions on in-memory models, single-node evaluation, random inputs."""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import onnx

from ..errors import MorphNetError, first_line
from .external import needs_a_file, on_disk


def import_onnxruntime():
    """onnxruntime, imported once without running its training package's `__init__`.

    onnxruntime-training's build check (onnxruntime/capi/onnxruntime_validation.py) imports
    `onnxruntime.training.ortmodule`, the training package's `__init__` and `onnxruntime.tools`'
    (which the training artifacts import) import torch: seconds for every command on a machine with
    torch, for ORTModule and export helpers morphnet-onnx never uses. The packages are registered
    here as plain modules over their folders first, so `import onnxruntime` loads what it needs and
    their submodules (artifacts, onnxblock, api: training/ort.py; the tools' ORT converter) import.
    """
    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - a broken install
        raise MorphNetError("onnxruntime is not installed; pip install onnxruntime-training-cpu==1.19.2")
    root = Path(next(iter(spec.submodule_search_locations)))
    if (root / "training").is_dir() and "onnxruntime.training" not in sys.modules:
        for name, path in (("onnxruntime.training", root / "training"), ("onnxruntime.training.ortmodule", None),
                           ("onnxruntime.tools", root / "tools")):
            module = types.ModuleType(name)
            module.__path__ = [str(path)] if path else []  # ortmodule: empty, its import finds no ORTModule
            module.__package__ = name
            sys.modules[name] = module
    import onnxruntime  # noqa: PLC0415 - see the docstring: the training package is registered first

    onnxruntime.training = sys.modules.get("onnxruntime.training")
    onnxruntime.tools = sys.modules.get("onnxruntime.tools")
    return onnxruntime


def make_session(model: onnx.ModelProto | Path, threads: int = 0, optimize: bool = True):
    """An onnxruntime session on a model in memory, or on a file. A model that keeps its weights on
    disk (or is too big to serialize) is opened from a file, where onnxruntime maps its weights
    rather than copying them, and without prepacking (a second copy of the Gemm weights).
    `optimize=False` turns onnxruntime's graph optimizations off: a BatchNormalization in training
    mode whose running-statistics outputs nothing reads is computed wrongly with them on
    (onnxruntime 1.19: scale 0 and shift 0 gave outputs up to 0.54; scale 1 a standard deviation of
    1.85 instead of 1), which batch-statistics passes must avoid. A model that onnxruntime's
    optimizations break is loaded with them off, with a warning."""
    ort = import_onnxruntime()

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if isinstance(model, onnx.ModelProto) and needs_a_file(model):
        model = on_disk(model)
    if isinstance(model, Path):
        options.add_session_config_entry("session.disable_prepacking", "1")
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    providers = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:
        session = unoptimized_session(ort, source, options, providers) if optimize else None
        if session is None:
            raise MorphNetError(f"onnxruntime cannot load the model: {first_line(exc, 300)}") from exc
        warnings.warn(f"onnxruntime's graph optimizations fail on this model ({first_line(exc, 200)}); "
                      "it is run with them off", stacklevel=2)
        return session


def unoptimized_session(ort, source, options, providers: list[str]):
    """The session with onnxruntime's graph optimizations off, or None where it fails too. A fusion
    of onnxruntime's can break a valid model (1.19: MatMulBnFusion writes a Gemm on a rank-3 input
    for timm's LeViT exported by dynamo) that runs with them off."""
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(source, options, providers=providers)
    except Exception:
        return None


def run_node(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Run one node with onnxruntime on concrete inputs (None for omitted optional inputs)."""
    graph_inputs, feeds = [], {}
    for name, value in zip(node.input, inputs):
        if not name or name in feeds:
            continue  # (a node may read one tensor twice: x * x)
        graph_inputs.append(onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)))
        feeds[name] = np.asarray(value, order="C")  # (ascontiguousarray would make a scalar 1-D)
    outputs = [onnx.helper.make_empty_tensor_value_info(n) for n in node.output if n]
    graph = onnx.helper.make_graph([node], "node", graph_inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", max(opset, 7))])
    model.ir_version = 8
    # onnxruntime wants typed outputs: let shape inference type them.
    inferred = onnx.shape_inference.infer_shapes(model)
    typed = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    del model.graph.output[:]
    model.graph.output.extend(typed.get(n, onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
                              for n in node.output if n)
    session = make_session(model, threads=1)
    return session.run(None, feeds)


def random_feeds(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], batch: int, seed: int) -> dict:
    """Random inputs for every model input: normal floats, small non-negative integers."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = list(shapes[value.name])
        shape[0] = batch
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds
