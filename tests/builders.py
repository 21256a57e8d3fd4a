"""Test helpers for graphs: `Net` (the package's builder, re-exported so tests import it from one
place) and `independent_flops`, a FLOP count written apart from the library's cost model."""

from __future__ import annotations

import numpy as np
import onnx

from morphnet_onnx.builders import Net

__all__ = ["Net", "independent_flops"]


def independent_flops(model: onnx.ModelProto, input_shapes: dict | None = None) -> float:
    """2 x MACs of Conv/ConvTranspose/Gemm/MatMul from onnx's own shape inference, written apart from
    the library's cost model so the two can check each other."""
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for v in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    for name, s in (input_shapes or {}).items():
        shapes[name] = list(s)
    total = 0.0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w = shapes[node.input[1]]
            out = shapes[node.output[0]]
            if node.op_type == "Conv":
                total += 2 * np.prod(out) * w[1] * np.prod(w[2:])
            else:
                x = shapes[node.input[0]]
                total += 2 * np.prod(x) * w[1] * np.prod(w[2:])
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes[node.input[0]]
            out = shapes[node.output[0]]
            trans_a = next((a_.i for a_ in node.attribute if a_.name == "transA"), 0)
            k = a[0] if (node.op_type == "Gemm" and trans_a) else a[-1]
            total += 2 * np.prod(out) * k
    return float(total)
