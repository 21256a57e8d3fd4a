"""Rewrites that make a graph differentiable by onnxruntime-training 1.19, each exactly equivalent
to the op it replaces (checked on random inputs by `verify_rewrites`):

- HardSwish(x) -> x * Clip(x + 3, 0, 6) / 6; HardSigmoid(x) -> Clip(alpha x + beta, 0, 1): no gradient;
- InstanceNormalization -> ReduceMean/Sub/Mul/Sqrt/Div with the per-channel scale and shift: no gradient;
- LayerNormalization with one output -> the same op with its Mean and InvStdDev outputs, which the
  gradient builder reads;
- nearest Resize/Upsample with integer scales -> Unsqueeze/Expand/Reshape: no CPU kernel for ResizeGrad;
- CastLike(x, like) -> Cast(x, to=like's type): no gradient (the dynamo exporter's unoptimized graphs,
  `optimize=False`, build each conv's zero bias with one).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import MorphNetError
from ..graph_utils import attr, onnx_opset
from ..loading.runtime import make_session, random_feeds


class _Emitter:
    def __init__(self, graph: onnx.GraphProto, base: str, opset: int, dtypes: dict[str, int]) -> None:
        self.graph, self.base, self.n, self.opset, self.dtypes = graph, base, 0, opset, dtypes
        self.nodes: list[onnx.NodeProto] = []

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{self.base}/{kind}{self.n}"

    def const(self, value) -> str:
        name = self.name("c")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def reduce_mean(self, x: str, axes: list[int]) -> str:
        """ReduceMean keeping dims; its axes became an input in opset 18."""
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const(np.array(axes, dtype=np.int64))], keepdims=1)
        return self.op("ReduceMean", [x], keepdims=1, axes=axes)

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self.name(op_type), **attrs))
        return output


def _hardswish(e: _Emitter, node, shapes) -> None:
    x = node.input[0]
    clipped = e.op("Clip", [e.op("Add", [x, e.const(np.float32(3))]), e.const(np.float32(0)), e.const(np.float32(6))])
    e.op("Div", [e.op("Mul", [x, clipped]), e.const(np.float32(6))], node.output[0])


def _hardsigmoid(e: _Emitter, node, shapes) -> None:
    alpha, beta = attr(node, "alpha", 0.2), attr(node, "beta", 0.5)
    scaled = e.op("Add", [e.op("Mul", [node.input[0], e.const(np.float32(alpha))]), e.const(np.float32(beta))])
    e.op("Clip", [scaled, e.const(np.float32(0)), e.const(np.float32(1))], node.output[0])


def _instance_norm(e: _Emitter, node, shapes) -> None:
    x, scale, bias = node.input[:3]
    rank = len(shapes[x])
    axes = list(range(2, rank))
    mean = e.reduce_mean(x, axes)
    centered = e.op("Sub", [x, mean])
    var = e.reduce_mean(e.op("Mul", [centered, centered]), axes)
    std = e.op("Sqrt", [e.op("Add", [var, e.const(np.float32(attr(node, "epsilon", 1e-5)))])])
    channel = e.const(np.array([-1] + [1] * (rank - 2), dtype=np.int64))
    normalized = e.op("Div", [centered, std])
    e.op("Add", [e.op("Mul", [normalized, e.op("Reshape", [scale, channel])]), e.op("Reshape", [bias, channel])],
         node.output[0])


def _resize_nearest(e: _Emitter, node, shapes) -> None:
    x, out = node.input[0], node.output[0]
    in_shape, out_shape = shapes[x], shapes[out]
    factors = [o // i for i, o in zip(in_shape, out_shape)]
    if any(o != i * f for i, o, f in zip(in_shape, out_shape, factors)) or factors[:2] != [1, 1]:
        raise MorphNetError(f"{node.name}: only integer-scale nearest resizing of spatial axes can be trained")
    rank = len(in_shape)
    # [N, C, H, W] -> [N, C, H, 1, W, 1] -> expand -> [N, C, H*s, W*s]
    unsq_axes = e.const(np.array([3 + 2 * k for k in range(rank - 2)], dtype=np.int64))
    expanded_shape = [1, in_shape[1]]  # batch 1 broadcasts to the real batch
    for size, factor in zip(in_shape[2:], factors[2:]):
        expanded_shape += [size, factor]
    y = e.op("Expand", [e.op("Unsqueeze", [x, unsq_axes]), e.const(np.array(expanded_shape, dtype=np.int64))])
    e.op("Reshape", [y, e.const(np.array([0] + list(out_shape[1:]), dtype=np.int64))], out)


def _cast_like(e: _Emitter, node, shapes) -> None:
    e.op("Cast", [node.input[0]], node.output[0], to=e.dtypes[node.input[1]])


def _is_nearest(node) -> bool:
    mode = attr(node, "mode", b"nearest")
    return (mode.decode() if isinstance(mode, bytes) else mode) == "nearest"


REWRITES = {"HardSwish": _hardswish, "HardSigmoid": _hardsigmoid, "InstanceNormalization": _instance_norm,
            "CastLike": _cast_like}


def rewrite_for_training(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]],
                         dtypes: dict[str, int] | None = None) -> list[str]:
    """Rewrite in place; returns what was rewritten (op types and counts) for the report. `dtypes`:
    element types by tensor name (the graph's own declarations fill the gaps)."""
    graph = model.graph
    opset = onnx_opset(model)
    dtypes = {**_declared_types(graph), **(dtypes or {})}
    new_nodes, done = [], {}
    for index, node in enumerate(graph.node):
        rewrite = REWRITES.get(node.op_type)
        if node.op_type in ("Resize", "Upsample") and _is_nearest(node):
            rewrite = _resize_nearest
        if node.op_type == "LayerNormalization" and len(node.output) == 1:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.output.extend([f"{node.output[0]}__mean", f"{node.output[0]}__inv_std"])
            new_nodes.append(copy)
            done[node.op_type] = done.get(node.op_type, 0) + 1
            continue
        if rewrite is None or (node.op_type == "CastLike" and node.input[1] not in dtypes):
            new_nodes.append(node)
            continue
        emitter = _Emitter(graph, f"{node.name or node.op_type}__train{index}", opset, dtypes)
        rewrite(emitter, node, shapes)
        new_nodes.extend(emitter.nodes)
        done[node.op_type] = done.get(node.op_type, 0) + 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    return [f"{op} x{count}" for op, count in sorted(done.items())]


def _declared_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {t.name: t.data_type for t in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    return types


def verify_rewrites(original: onnx.ModelProto, rewritten: onnx.ModelProto, shapes: dict, batch: int,
                    seed: int = 0) -> float:
    """Largest relative difference between the two models' outputs on random inputs (inference)."""
    feeds = random_feeds(original, shapes, batch, seed)
    expected = make_session(original).run(None, feeds)
    got = make_session(rewritten).run(None, feeds)
    worst = 0.0
    for a, b in zip(got, expected):
        scale = max(1.0, float(np.max(np.abs(b))))
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst
