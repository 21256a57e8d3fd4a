"""Loading: placeholder weights made real. onnx's light models and torchvision exports without
weights hold `ConstantOfShape` nodes where weights would be, and some exporters compute a weight from
constants (a Reshape of a stored tensor); surgery needs stored values it can slice.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph_utils import onnx_opset
from ..ops import POSITIVE_SLOTS
from .folding import NOT_FOLDED, evaluate_node
from .view import ConstantView


def materialize_weights(model: onnx.ModelProto, seed: int | None = None) -> onnx.ModelProto:
    """Give every weight a real value surgery can slice: placeholder weights (ConstantOfShape, as in
    onnx's light models) become Constant nodes, random when a seed is given (He-scaled; positive for
    norm scales and variances), and ops computed from constants alone (a Reshape of a weight) are
    folded into Constant nodes. Nodes keep their place and names."""
    view = ConstantView(model.graph)
    rng = np.random.default_rng(seed) if seed is not None else None
    positive = {n.input[i] for n in model.graph.node for i in POSITIVE_SLOTS.get(n.op_type, ()) if i < len(n.input)}
    values: dict[str, np.ndarray] = {}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = onnx_opset(model)

    def lookup(name: str) -> np.ndarray:
        return values[name] if name in values else view.value(name, computed=False)

    for node in out.graph.node:
        if node.op_type == "Constant" or not node.output or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in NOT_FOLDED or not node.input:
            continue
        if not all(not i or i in values or view.is_stored(i) for i in node.input):
            continue
        if node.op_type == "ConstantOfShape":
            shape = [int(d) for d in lookup(node.input[0]).reshape(-1)]
            fill = next((a.t for a in node.attribute if a.name == "value"), None)
            dtype = onnx.helper.tensor_dtype_to_np_dtype(fill.data_type) if fill is not None else np.float32
            fill_value = numpy_helper.to_array(fill).reshape(-1)[0] if fill is not None else 0
            if rng is not None and np.issubdtype(dtype, np.floating) and shape:
                if node.output[0] in positive:
                    result = [rng.uniform(0.5, 1.5, shape).astype(dtype)]
                else:
                    # He-scaled, as for ReLU networks: with 1/sqrt(fan_in) the signal of a deep
                    # network without BN died before the logits and only the class prior was learned.
                    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                    result = [(rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(dtype)]
            else:
                result = [np.full(shape, fill_value, dtype)]
        else:
            result = evaluate_node(node, [lookup(i) if i else None for i in node.input], opset)
            if result is None:
                continue
        for name, value in zip(node.output, result):
            values[name] = value
        if len(node.output) != 1:
            continue
        name, output = node.name, node.output[0]
        node.Clear()
        node.CopyFrom(onnx.helper.make_node("Constant", [], [output], name=name,
                                            value=numpy_helper.from_array(np.asarray(values[output]), output)))
    # Ops that only fed folded weights stay (node positions name unnamed ops); nothing reads them.
    return out if values else model
