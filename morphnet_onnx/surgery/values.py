"""What removed channels hold, so that removing them changes nothing.

A channel whose gates are zero is not always zero: its last BatchNormalization outputs beta, a
conv without BN outputs its bias, and ops after it (ReLU, a MatMul's bias Add, a sigmoid) turn that
into other constants. Surgery follows these values op by op; where a removed channel meets an op
that contracts channels (Conv, Gemm, MatMul), its contribution is folded into that op's bias.

Values are numpy arrays broadcastable to the tensor's shape at batch 1, size 1 on the axes along
which they do not vary (a per-channel constant of an NCHW tensor is [1, C, 1, 1]).
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph_utils import attr, compress
from ..loading.runtime import run_node

UNARY = {
    "Relu": lambda x, n: np.maximum(x, 0),
    "LeakyRelu": lambda x, n: np.where(x >= 0, x, x * attr(n, "alpha", 0.01)),
    "Sigmoid": lambda x, n: 1 / (1 + np.exp(-x)),
    "Tanh": lambda x, n: np.tanh(x),
    "HardSigmoid": lambda x, n: np.clip(attr(n, "alpha", 0.2) * x + attr(n, "beta", 0.5), 0, 1),
    "HardSwish": lambda x, n: x * np.clip(x / 6 + 0.5, 0, 1),
    "Identity": lambda x, n: x,
    "Dropout": lambda x, n: x,
    "Neg": lambda x, n: -x,
    "Abs": lambda x, n: np.abs(x),
    "Exp": lambda x, n: np.exp(x),
    "Sqrt": lambda x, n: np.sqrt(x),
}
BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Max": np.maximum,
          "Min": np.minimum, "Pow": np.power}
# Ops that map a spatially uniform input to the same uniform output.
UNIFORM_KEEPING = {"MaxPool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample"}


def spatially_uniform(value: np.ndarray, channel_axes: set[int]) -> bool:
    return all(size == 1 for axis, size in enumerate(value.shape) if axis not in channel_axes)


def evaluate(node: onnx.NodeProto, inputs: list[np.ndarray | None], shapes: list[tuple | None],
             out_shapes: list[tuple], opset: int) -> list[np.ndarray]:
    """The node's outputs for the given input values (arrays broadcastable to the batch-1 shapes)."""
    op = node.op_type
    x = inputs[0] if inputs else None
    if op in UNARY and x is not None:
        return [compress(UNARY[op](x, node).astype(x.dtype, copy=False))]
    if op == "Clip" and x is not None:
        low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attr(node, "min", -np.inf)
        high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attr(node, "max", np.inf)
        return [compress(np.clip(x, low, high).astype(x.dtype))]
    if op in BINARY and len(inputs) == 2 and all(v is not None for v in inputs):
        rank = len(out_shapes[0])
        a, b = (v.reshape((1,) * (rank - v.ndim) + v.shape) for v in inputs)
        return [compress(BINARY[op](a, b).astype(np.result_type(a, b)))]
    if op == "BatchNormalization" and x is not None:
        scale, bias, mean, var = (v.reshape(-1) for v in inputs[1:5])
        shape = [1, -1] + [1] * (x.ndim - 2)
        y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + attr(node, "epsilon", 1e-5))
        return [compress((y * scale.reshape(shape) + bias.reshape(shape)).astype(x.dtype))]
    if op in UNIFORM_KEEPING and x is not None and spatially_uniform(x, {0, 1}):
        return [x]
    if op == "AveragePool" and x is not None and spatially_uniform(x, {0, 1}):
        pads = attr(node, "pads", [])
        if not attr(node, "count_include_pad", 0) or not any(pads):
            if attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
                return [x]
    if op == "Transpose" and x is not None:
        perm = attr(node, "perm", list(reversed(range(x.ndim))))
        return [x.transpose(perm)]
    # Broadcast values are made whole; a value already whole (a weight, possibly mapped from disk)
    # is passed as it is rather than copied.
    full = [np.broadcast_to(v, s).copy() if v is not None and s is not None and v.shape != tuple(s) else v
            for v, s in zip(inputs, shapes)]
    return [compress(np.asarray(out)) for out in run_node(node, full, opset)]
