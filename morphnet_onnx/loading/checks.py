"""What a model file must be before any stage looks at it: a consistent graph, stored tensors of the
sizes their dims say, ops known at the model's opset with the inputs, outputs and attributes their
schemas allow, weights that fit the channels they read. Each failure is a one-line MorphNetError
naming the file and the node."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import MorphNetError
from ..graph_utils import node_reads, onnx_opset
from ..ops import op_info


def check_graph(model: onnx.ModelProto, name: str) -> None:
    """Every tensor a node reads (its subgraphs too) is written before it by one node, or is an input
    or an initializer; every output is computed. Otherwise MorphNetError naming the first problem."""
    graph = model.graph
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    writers: dict[str, str] = {}
    labels = [node.name or f"{node.op_type}_{index}" for index, node in enumerate(graph.node)]
    for node, label in zip(graph.node, labels):
        for out in node.output:
            if out in writers or (out and out in defined):
                first = writers.get(out, "an input or initializer")
                raise MorphNetError(f"{name}: tensor {out!r} is written twice ({first} and node {label!r}); "
                                    f"the graph is malformed: re-export the model")
            writers[out] = f"node {label!r}"
    for node, label in zip(graph.node, labels):
        for read in sorted(node_reads(node)):
            if read in defined:
                continue
            if read in writers:
                raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) reads {read!r} before {writers[read]} "
                                    f"writes it (nodes out of topological order, or a cycle); re-export the model")
            raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) reads {read!r}, which no node, input or "
                                f"initializer provides (a missing initializer?); re-export the model")
        defined.update(node.output)
    for output in graph.output:
        if output.name not in defined:
            raise MorphNetError(f"{name}: the model output {output.name!r} is computed by no node; re-export the model")
    _check_schemas(graph, labels, onnx_opset(model), name)
    _check_tensor_sizes(graph, name)


# Element types whose stored size is not dims x itemsize (strings; 4-bit types packed two per byte).
_UNSIZED = {onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _check_tensor_sizes(graph: onnx.GraphProto, name: str) -> None:
    """Every stored initializer holds as many values as its dims say (a truncated or hand-edited
    file otherwise fails wherever the tensor is first decoded)."""
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type in _UNSIZED:
            continue
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        if tensor.HasField("raw_data"):
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
            stored, wanted = len(tensor.raw_data), count * itemsize
            unit = "bytes"
        else:
            per_value = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
            stored, wanted = sum(len(getattr(tensor, f)) for f in _TYPED_FIELDS), count * per_value
            unit = "values"
        if stored != wanted:
            raise MorphNetError(f"{name}: initializer {tensor.name!r} of dims {list(tensor.dims)} holds {stored} "
                                f"{unit}, not {wanted} (a truncated or damaged file?); re-export the model")


# Sizes that must be positive: onnx's shape inference divides by strides (a zero stride kills the
# process with SIGFPE), and the analysis by group. Pads (but Pad's own) must not be negative:
# onnxruntime's Conv crashes the process (SIGSEGV) on them.
POSITIVE_ATTRIBUTES = {"strides", "dilations", "kernel_shape", "group"}


def _check_schemas(graph: onnx.GraphProto, labels: list[str], opset: int, name: str) -> None:
    """Standard ops exist at the model's opset and get as many inputs and outputs as their schema
    allows (shape inference skips what follows an op it does not know, so it cannot be relied on)."""
    for node, label in zip(graph.node, labels):
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            raise MorphNetError(f"{name}: node {label!r} has op type {node.op_type!r}, not an ONNX operator at "
                                f"opset {opset}; re-export the model") from None
        inputs = len(node.input)
        while inputs and not node.input[inputs - 1]:
            inputs -= 1  # trailing empty names are omitted optional inputs
        if not schema.min_input <= inputs <= schema.max_input or \
                not schema.min_output <= len(node.output) <= schema.max_output:
            raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) has {inputs} inputs and {len(node.output)} "
                                f"outputs, its schema allows {schema.min_input}..{schema.max_input} and "
                                f"{schema.min_output}..{schema.max_output}; re-export the model")
        for attribute in node.attribute:
            wanted = schema.attributes.get(attribute.name)
            if wanted is None:  # onnx's checker refuses it too, in every model the tool would write
                raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) has an attribute {attribute.name!r} its "
                                    f"schema at opset {opset} does not know; re-export the model")
            if int(wanted.type) != int(attribute.type):
                raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) has its attribute {attribute.name!r} of "
                                    f"type {onnx.AttributeProto.AttributeType.Name(attribute.type)}, its schema wants "
                                    f"{onnx.AttributeProto.AttributeType.Name(int(wanted.type))}; re-export the model")
            if attribute.type not in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS):
                continue
            value = onnx.helper.get_attribute_value(attribute)
            least = 1 if attribute.name in POSITIVE_ATTRIBUTES else 0 if (
                attribute.name == "pads" and node.op_type != "Pad") else None
            if least is not None and any(v < least for v in np.atleast_1d(value)):
                raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) has {attribute.name} {value}, which must "
                                    f"be {'above 0' if least else '0 or more'}; re-export the model")


def check_parameter_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], name: str) -> None:
    """Weights and per-channel parameters fit the channels they read and scale (each op family's
    `check_shapes`: a conv's input channels and bias, a Gemm's or MatMul's contracted features, a
    channel norm's scale, shift and statistics). onnx's shape inference checks none of these, and a
    model that breaks them would otherwise fail deep in surgery or in onnxruntime."""

    def known(tensor: str) -> tuple[int, ...] | None:
        shape = shapes.get(tensor) if tensor else None
        return shape if shape is not None and all(d >= 0 for d in shape) else None

    for index, node in enumerate(model.graph.node):
        info = op_info(node.op_type, node.domain)
        if info is None or info.check_shapes is None or not node.input:
            continue
        problem = info.check_shapes(node, known)
        if problem:
            label = node.name or f"{node.op_type}_{index}"
            raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) {problem}; the model is inconsistent: "
                                f"re-export it")
