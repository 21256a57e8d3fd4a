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

from ..graph_utils import with_params
from ..loading.external import make_tensor, spill_for
from ..loading.view import ConstantView
from ..ops import INIT_TRANSPARENT, NORM_FRESH, RELU_LIKE, WeightLayout, weight_layout

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


# Fresh weights are drawn this many values at a time: the float64 draws of a 1 GB weight would
# otherwise take 2 GB. The generator's stream is the same whatever the chunks.
DRAW_CHUNK = 1 << 22


def draw(rng: np.random.Generator, shape, fan_in: int, fan_out: int, he: bool, dtype) -> np.ndarray:
    out = np.empty(shape, dtype)
    flat = out.reshape(-1)
    scale = np.sqrt(2.0 / max(fan_in, 1))
    limit = np.sqrt(6.0 / max(fan_in + fan_out, 1))
    for begin in range(0, flat.size, DRAW_CHUNK):
        count = min(DRAW_CHUNK, flat.size - begin)
        flat[begin:begin + count] = rng.standard_normal(count) * scale if he else rng.uniform(-limit, limit, count)
    return out


def initialize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of the model with every weight, bias and norm parameter freshly initialised (seeded)."""
    rng = np.random.default_rng(seed)
    graph = model.graph
    constants = ConstantView(graph).arrays()
    relu = relu_follows(graph)
    # A model that keeps its weights on disk gets the fresh ones in a spill file, each written as
    # soon as it is drawn.
    spill = spill_for(model)
    stored = {t.name for t in graph.initializer}
    fresh: dict[str, np.ndarray | onnx.TensorProto] = {}

    def put(name: str, value: np.ndarray) -> None:
        fresh[name] = make_tensor(value, name, spill) if spill is not None and name in stored else value

    for node in graph.node:
        layout = weight_layout(node, constants)
        if layout is not None and layout.weight not in fresh:
            weight = constants[layout.weight]
            if np.issubdtype(weight.dtype, np.floating):
                fan_in, fan_out = fans(weight, layout)
                put(layout.weight, draw(rng, weight.shape, fan_in, fan_out, relu.get(node.output[0], False),
                                        weight.dtype))
            if layout.bias in constants:
                put(layout.bias, np.zeros_like(constants[layout.bias]))
        for index, value in NORM_FRESH.get(node.op_type, {}).items():
            if index < len(node.input) and node.input[index] in constants:
                put(node.input[index], np.full_like(constants[node.input[index]], value))
    return with_params(model, fresh)
