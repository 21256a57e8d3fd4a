"""Small helpers every stage shares: reading a node's attributes, the canonical form of per-channel
arrays, and graph edits used by surgery and training."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of the node's attribute `name` (ints, floats, strings as bytes, tensors, lists), or
    `default` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def constant_along(values: np.ndarray, axis: int) -> bool:
    """Whether `values` are the same at every position along `axis`."""
    return bool(np.all(values == values.take([0], axis=axis)))


def compress(values: np.ndarray) -> np.ndarray:
    """Collapse the axes along which `values` do not vary to size 1: the canonical form of the channel
    ids analysis tracks and of the constants surgery follows (both broadcast to the tensor's shape)."""
    for axis in range(values.ndim):
        if values.shape[axis] > 1 and constant_along(values, axis):
            values = values.take([0], axis=axis)
    return values


def live_tensors(graph: onnx.GraphProto) -> set[str]:
    """Names of the tensors something on the way to an output reads (graph in topological order)."""
    return _walk(graph)[0]


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Tensors of the enclosing scope that the subgraphs of a control-flow op (If, Loop, Scan) read
    by name without listing them as inputs of the node."""
    reads: set[str] = set()
    for attribute in node.attribute:
        graphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
        for graph in graphs:
            defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            for inner in graph.node:
                reads.update(name for name in list(inner.input) + sorted(subgraph_reads(inner))
                             if name and name not in defined)
                defined.update(inner.output)
    return reads


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor a node reads: its inputs and what its subgraphs read from the enclosing scope."""
    return {name for name in node.input if name} | subgraph_reads(node)


def _walk(graph: onnx.GraphProto) -> tuple[set[str], list[onnx.NodeProto]]:
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node_reads(node))
    kept.reverse()
    return needed, kept


def drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove ops and initializers nothing on the way to an output reads (in place)."""
    needed, kept = _walk(graph)
    del graph.node[:]
    graph.node.extend(kept)
    used = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)




def with_params(model: onnx.ModelProto, params: dict[str, np.ndarray | onnx.TensorProto]) -> onnx.ModelProto:
    """A copy of the model with new values for its initializers or Constant weights, by name: arrays
    (cast to the tensor's dtype), or tensors already made (`external.make_tensor`: a model that keeps
    its weights on disk gets them in a spill file)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        if tensor.name in params:
            tensor.CopyFrom(_as_tensor(params[tensor.name], tensor.name, tensor.data_type))
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output[0] in params and node.attribute[0].name == "value":
            node.attribute[0].t.CopyFrom(_as_tensor(params[node.output[0]], node.output[0],
                                                    node.attribute[0].t.data_type))
    return out


def _as_tensor(value: np.ndarray | onnx.TensorProto, name: str, data_type: int) -> onnx.TensorProto:
    if isinstance(value, onnx.TensorProto):
        if value.name != name:
            value = onnx.TensorProto.FromString(value.SerializeToString())
            value.name = name
        return value
    return numpy_helper.from_array(value.astype(onnx.helper.tensor_dtype_to_np_dtype(data_type)), name)


def onnx_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    """Real model inputs: graph inputs that are not initializers (old IR versions list both)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch the model's inputs declare statically, or None when it is symbolic (any batch runs)."""
    real = set(graph_input_names(model))
    for value in model.graph.input:
        if value.name in real:
            dims = value.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return dims[0].dim_value
    return None


def shape_sources(producer: dict[str, onnx.NodeProto], name: str) -> list[str]:
    """The tensors whose runtime shapes a computed tensor is derived from (through Shape and Size ops);
    `producer` maps each tensor to the node that writes it."""
    sources, seen, stack = [], set(), [name]
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or tensor in seen:
            continue
        seen.add(tensor)
        if node.op_type in ("Shape", "Size"):
            sources.append(node.input[0])
        else:
            stack.extend(i for i in node.input if i)
    return sources
