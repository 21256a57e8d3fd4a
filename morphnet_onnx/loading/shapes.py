"""Static shapes at batch 1: the input dims (declared, or given with --input-shape), then onnx's
shape inference on a weightless copy of the model, with small constant subgraphs folded first."""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from ..errors import MorphNetError, first_line
from ..graph_utils import graph_input_names, onnx_opset
from .folding import fold_shape_values

InputShapes = dict[str, tuple[int, ...]]


def parse_input_shapes(specs: list[str] | None) -> InputShapes:
    """Parse `--input-shape name:1x3x224x224` options (a lone `1x3x224x224` names the only input)."""
    shapes: InputShapes = {}
    for spec in specs or []:
        name, _, dims = spec.rpartition(":")
        if not re.fullmatch(r"\d+(x\d+)*", dims):
            raise MorphNetError(f"--input-shape {spec!r}: expected NAME:DxDxD, e.g. input:1x3x224x224")
        shapes[name] = tuple(int(d) for d in dims.split("x"))
    return shapes


def _static_input_dims(model: onnx.ModelProto, overrides: InputShapes, name: str) -> InputShapes:
    """Every model input's shape with the batch dim at 1; other unknown dims must come from overrides."""
    dims_by_input: InputShapes = {}
    inputs = {i.name: i for i in model.graph.input}
    real = graph_input_names(model)
    if "" in overrides:
        if len(real) != 1:
            raise MorphNetError(f"{name}: --input-shape without a name needs a single-input model; inputs: {real}")
        overrides = {real[0]: overrides[""]}
    unknown = set(overrides) - set(real)
    if unknown:
        raise MorphNetError(f"{name}: --input-shape names no model input: {sorted(unknown)}; inputs: {real}")
    for input_name in real:
        tensor_type = inputs[input_name].type.tensor_type
        if input_name in overrides:
            dims = list(overrides[input_name])
            declared = tensor_type.shape.dim if tensor_type.HasField("shape") else []
            if declared and dims and not declared[0].HasField("dim_value"):
                dims[0] = 1  # the batch: costs are per example
            dims_by_input[input_name] = tuple(dims)
            continue
        if not tensor_type.HasField("shape"):
            raise MorphNetError(f"{name}: input {input_name!r} has no shape; give --input-shape {input_name}:1x...")
        dims = []
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(dim.dim_value)
            elif axis == 0:
                dims.append(1)  # batch: costs are per example
            else:
                shown = "x".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                                 for d in tensor_type.shape.dim)
                raise MorphNetError(
                    f"{name}: input {input_name!r} has symbolic dims ({shown}); give them with "
                    f"--input-shape {input_name}:1x3x224x224 (your sizes)"
                )
        dims_by_input[input_name] = tuple(dims)
    return dims_by_input


def skeleton(model: onnx.ModelProto, max_kept_elements: int = 64) -> onnx.ModelProto:
    """A copy of the model without the weight bytes: big initializers become typed graph inputs.

    Shape inference only needs their shapes, and serializing a 100 MB model for it would cost as much
    as saving the file; small integer tensors (Reshape shapes, Split sizes) keep their values.
    """
    graph = model.graph
    light = onnx.GraphProto(name=graph.name)
    light.node.extend(graph.node)
    for output in graph.output:
        # Declared output shapes may be symbolic or stale: inference recomputes them from the inputs.
        light.output.append(onnx.helper.make_tensor_value_info(output.name, output.type.tensor_type.elem_type, None))
    inits = {t.name for t in graph.initializer}
    light.input.extend(i for i in graph.input if i.name not in inits)
    for tensor in graph.initializer:
        size = int(np.prod(tensor.dims)) if tensor.dims else 1
        if size <= max_kept_elements and tensor.data_location != onnx.TensorProto.EXTERNAL:
            light.initializer.append(tensor)
        else:
            light.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    out = onnx.ModelProto()
    out.ir_version = max(model.ir_version, 4)  # IR 3 would ignore initializers missing from the inputs
    out.opset_import.extend(model.opset_import)
    out.graph.CopyFrom(light)
    return out


def infer_static_shapes(model: onnx.ModelProto, input_shapes: InputShapes, name: str) -> tuple[dict, dict]:
    """Shapes and dtypes of every tensor at batch 1 (dims shape inference cannot fix stay unknown: -1).

    onnx's shape inference stops at Reshapes whose target is computed at run time; with static input
    shapes those targets are constants, so they are folded and inference runs again until nothing
    new is learned.
    """
    dims_by_input = _static_input_dims(model, input_shapes, name)
    light = skeleton(model)
    for value in light.graph.input:
        if value.name in dims_by_input:
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for d in dims_by_input[value.name]:
                shape.dim.add().dim_value = d
    del light.graph.value_info[:]
    light.graph.value_info.extend(_declared_custom_outputs(model))
    opset = onnx_opset(model)
    known = {t.name: numpy_helper.to_array(t) for t in light.graph.initializer}
    folded_count = -1
    for _ in range(200):  # each round may unlock one more block of a channel-shuffle net
        inferred = _infer(light, name)
        shapes, dtypes = _collect_shapes(inferred)
        if all(-1 not in s for s in shapes.values()):
            break
        values = fold_shape_values(light.graph, shapes, known, opset)
        if len(values) == folded_count:
            break
        folded_count = len(values)
        _pin_values(light, values, known)
    _fill_from_declared(model, shapes, dtypes)
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
        dtypes[tensor.name] = tensor.data_type
    return shapes, dtypes


def _declared_custom_outputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """onnx cannot infer through custom-domain ops: keep what the model declares for their outputs
    (static dims only, a symbolic batch as 1) so inference goes on after them."""
    produced = {o for n in model.graph.node if n.domain not in ("", "ai.onnx") for o in n.output}
    declared = []
    for value in list(model.graph.value_info) + list(model.graph.output):
        tt = value.type.tensor_type
        if value.name not in produced or not tt.HasField("shape") or not tt.shape.dim:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (1 if axis == 0 else -1)
                for axis, d in enumerate(tt.shape.dim)]
        if -1 not in dims:
            declared.append(onnx.helper.make_tensor_value_info(value.name, tt.elem_type, dims))
    return declared


def _fill_from_declared(model: onnx.ModelProto, shapes: dict, dtypes: dict) -> None:
    """Shapes inference could not find (after custom ops) come from the model's own value_info,
    when it declares them statically (a symbolic batch counts as 1)."""
    for value in list(model.graph.value_info) + list(model.graph.output):
        known = shapes.get(value.name)
        if known is not None and -1 not in known:
            continue
        tt = value.type.tensor_type
        if not tt.HasField("shape") or not tt.shape.dim:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (1 if axis == 0 else -1)
                for axis, d in enumerate(tt.shape.dim)]
        if -1 not in dims:
            shapes[value.name] = tuple(dims)
            dtypes.setdefault(value.name, tt.elem_type)


def _infer(light: onnx.ModelProto, name: str) -> onnx.ModelProto:
    # Strict: a node that does not fit its schema (input count, types, ranks) is the user's broken
    # model, said here in one line, not a crash of the analysis or of onnxruntime later.
    try:
        return shape_inference.infer_shapes(light, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise MorphNetError(f"{name}: the model is inconsistent, shape inference fails ({first_line(exc)}); "
                            f"re-export it") from exc


def _collect_shapes(inferred: onnx.ModelProto) -> tuple[dict, dict]:
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, int] = {}
    g = inferred.graph
    for value in list(g.input) + list(g.value_info) + list(g.output):
        tt = value.type.tensor_type
        dtypes[value.name] = tt.elem_type
        if tt.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    for tensor in g.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
        dtypes[tensor.name] = tensor.data_type
    return shapes, dtypes


def _pin_values(light: onnx.ModelProto, values: dict[str, np.ndarray], known: dict[str, np.ndarray]) -> None:
    """Replace the nodes whose outputs were all folded by initializers holding those values."""
    graph = light.graph
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        folded = node.output and all(o in values and o not in known and o not in outputs for o in node.output)
        if not folded:
            keep.append(node)
            continue
        for out in node.output:
            graph.initializer.append(numpy_helper.from_array(np.asarray(values[out]), out))
            known[out] = values[out]
    del graph.node[:]
    graph.node.extend(keep)


def declare_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Static input dims that --input-shape changed are declared so in the model (a copy): what the
    tool writes must accept the inputs it was trained and measured on. A symbolic batch stays."""
    changes = {}
    real = set(graph_input_names(model))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim if value.type.tensor_type.HasField("shape") else []
        wanted = shapes.get(value.name)
        if wanted is None or len(wanted) != len(dims) or value.name not in real:
            continue
        if any(d.HasField("dim_value") and d.dim_value != w for axis, (d, w) in enumerate(zip(dims, wanted)) if axis):
            changes[value.name] = wanted
    if not changes:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in out.graph.input:
        if value.name in changes:
            for axis, (dim, size) in enumerate(zip(value.type.tensor_type.shape.dim, changes[value.name])):
                if axis and dim.HasField("dim_value"):
                    dim.dim_value = size
    return out
