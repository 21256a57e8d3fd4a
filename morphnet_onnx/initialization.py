"""Fresh weights: for retraining a structure from scratch (`expand --init fresh`, `train --init
fresh`) and for the channels `expand --init keep` adds.

He-normal for the weights of an op a ReLU-family activation follows (through norms, adds and
pooling), Glorot-uniform otherwise (a classifier, a projection before a residual sum without an
activation after it); biases 0; norm scales 1, shifts 0, running mean 0, running variance 1.
Other constants (per-channel scales of element-wise ops, PRelu slopes, shape tensors) keep their values.
"""

from __future__ import annotations

import numpy as np
import onnx

from .graph_utils import with_params
from .ops import INIT_TRANSPARENT, NORM_FRESH, RELU_LIKE, WeightLayout, weight_layout
from .view import ConstantView

INITS = ("fresh", "keep")
def fans(weight: np.ndarray, layout: WeightLayout) -> tuple[int, int]:
    """(fan_in, fan_out) as torch counts them: the in/out axis times the kernel's spatial size."""
    # Conv-like weights are [out, in, *kernel] (or [in, out, ...]); a MatMul's leading axes are batch.
    spatial = int(np.prod(weight.shape[2:])) if layout.out_axis >= 0 else 1
    return weight.shape[layout.in_axis] * spatial, weight.shape[layout.out_axis] * spatial


def relu_follows(graph: onnx.GraphProto) -> dict[str, bool]:
    """Per tensor: does a ReLU-family activation read it, possibly through ops that change
    no initialisation (norms, residual adds, pooling, reshapes)?"""
    consumers = ConstantView(graph).consumers
    memo: dict[str, bool] = {}

    def follows(tensor: str, depth: int) -> bool:
        if tensor in memo:
            return memo[tensor]
        found = False
        for node in consumers.get(tensor, []):
            if node.op_type in RELU_LIKE:
                found = True
            elif node.op_type in INIT_TRANSPARENT and depth < 6:
                found = any(follows(out, depth + 1) for out in node.output)
            if found:
                break
        memo[tensor] = found
        return found

    return {node.output[0]: follows(node.output[0], 0) for node in graph.node if node.output}


def draw(rng: np.random.Generator, shape, fan_in: int, fan_out: int, he: bool, dtype) -> np.ndarray:
    if he:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(dtype)
    limit = np.sqrt(6.0 / max(fan_in + fan_out, 1))
    return rng.uniform(-limit, limit, shape).astype(dtype)


def initialize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of the model with every weight, bias and norm parameter freshly initialised (seeded)."""
    rng = np.random.default_rng(seed)
    graph = model.graph
    constants = ConstantView(graph).arrays()
    relu = relu_follows(graph)
    fresh: dict[str, np.ndarray] = {}
    for node in graph.node:
        layout = weight_layout(node, constants)
        if layout is not None and layout.weight not in fresh:
            weight = constants[layout.weight]
            if np.issubdtype(weight.dtype, np.floating):
                fan_in, fan_out = fans(weight, layout)
                fresh[layout.weight] = draw(rng, weight.shape, fan_in, fan_out, relu.get(node.output[0], False),
                                            weight.dtype)
            if layout.bias in constants:
                fresh[layout.bias] = np.zeros_like(constants[layout.bias])
        for index, value in NORM_FRESH.get(node.op_type, {}).items():
            if index < len(node.input) and node.input[index] in constants:
                fresh[node.input[index]] = np.full_like(constants[node.input[index]], value)
    return with_params(model, fresh)
