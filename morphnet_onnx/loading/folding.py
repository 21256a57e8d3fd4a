"""Evaluate small constant subgraphs (shape arithmetic) ahead of time.

Exporters compute Reshape targets at run time (Shape -> Gather -> Div -> Concat); with static input
shapes those are constants, and folding them lets shape inference see every tensor's shape.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph_utils import attr

# Only small tensors are folded: shape arithmetic, not weights.
MAX_FOLD_ELEMENTS = 1 << 16
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli", "Dropout"}
# Quantized weights stay quantized: a DequantizeLinear of an int8 weight is computed at run time as far
# as the analysis and surgery know (the op reading it is pinned), never folded into a float constant
# that surgery would cut and write back dequantized.
QUANTIZATION = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
NOT_FOLDED = NONDETERMINISTIC | QUANTIZATION


def _axes(node, inputs, index):
    if len(inputs) > index and inputs[index] is not None:
        return [int(a) for a in np.asarray(inputs[index]).reshape(-1)]
    return attr(node, "axes")


def _fast(node: onnx.NodeProto, inputs: list, opset: int):
    """numpy versions of the ops shape arithmetic uses; None when not covered."""
    op = node.op_type
    x = inputs[0] if inputs else None
    if op == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return [numpy_helper.to_array(a.t)]
            if a.name in ("value_int", "value_ints", "value_float", "value_floats"):
                return [np.array(onnx.helper.get_attribute_value(a),
                                 dtype=np.float32 if "float" in a.name else np.int64)]
        return None
    if op == "Identity":
        return [x]
    if op == "Gather":
        return [np.take(x, np.asarray(inputs[1]).astype(np.int64), axis=attr(node, "axis", 0))]
    if op == "Unsqueeze":
        out = x
        axes = sorted(a % (x.ndim + len(_axes(node, inputs, 1))) for a in _axes(node, inputs, 1))
        for a in axes:
            out = np.expand_dims(out, a)
        return [out]
    if op == "Squeeze":
        axes = _axes(node, inputs, 1)
        return [np.squeeze(x, axis=tuple(axes) if axes else None)]
    if op == "Concat":
        return [np.concatenate([np.atleast_1d(v) for v in inputs], axis=attr(node, "axis"))]
    if op == "Cast":
        return [x.astype(onnx.helper.tensor_dtype_to_np_dtype(attr(node, "to")))]
    if op in ("Add", "Sub", "Mul"):
        fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op]
        return [fn(x, inputs[1]).astype(np.result_type(x, inputs[1]))]
    if op == "Div":
        y = inputs[1]
        if np.issubdtype(np.asarray(x).dtype, np.integer):
            return [np.trunc(np.asarray(x) / y).astype(np.asarray(x).dtype)]  # ONNX integer Div truncates
        return [np.divide(x, y)]
    return None


def evaluate_node(node: onnx.NodeProto, inputs: list, opset: int) -> list | None:
    """Outputs of one node given its input values (None entries for omitted optional inputs)."""
    try:
        fast = _fast(node, inputs, opset)
        if fast is not None:
            return [np.asarray(v) for v in fast]
        from onnx.reference import ReferenceEvaluator

        graph = onnx.helper.make_graph(
            [node], "fold",
            [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.input if n],
            [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in node.output if n])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        feeds = {n: v for n, v in zip(node.input, inputs) if n}
        return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]
    except Exception:
        return None


def fold_shape_values(graph: onnx.GraphProto, shapes: dict[str, tuple[int, ...]], known: dict[str, np.ndarray],
                      opset: int) -> dict[str, np.ndarray]:
    """Values of every small tensor computable from constants and static shapes (one pass, in order)."""
    values = dict(known)
    for node in graph.node:
        if node.op_type in NOT_FOLDED or node.domain not in ("", "ai.onnx"):
            continue
        if all(out in values for out in node.output):
            continue
        if node.op_type == "Shape":
            shape = shapes.get(node.input[0])
            if shape is None or any(d < 0 for d in shape):
                continue
            start, end = attr(node, "start", 0), attr(node, "end", None)
            values[node.output[0]] = np.array(shape, dtype=np.int64)[start:end]
            continue
        if node.op_type == "Size":
            shape = shapes.get(node.input[0])
            if shape is not None and all(d >= 0 for d in shape):
                values[node.output[0]] = np.array(int(np.prod(shape)), dtype=np.int64)
            continue
        if not all(not n or n in values for n in node.input):
            continue
        if sum(np.asarray(values[n]).size for n in node.input if n) > MAX_FOLD_ELEMENTS:
            continue
        outputs = evaluate_node(node, [values[n] if n else None for n in node.input], opset)
        if outputs is None:
            continue
        for name, value in zip(node.output, outputs):
            if name and value.size <= MAX_FOLD_ELEMENTS:
                values[name] = value
    return values
