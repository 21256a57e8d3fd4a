"""How to cut one op: per-op functions that slice weights, parameters and shape constants to the
kept channels of the op's inputs and outputs (the analysis decided *what* goes; these say *how*).

Each cutter gets the rewrite state, a copy of the node (to edit in place) and the node's name.
Sliced tensors are new initializers, so an initializer shared by several ops is copied apart.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from ..analysis.handlers import removes_whole_groups
from ..errors import MorphNetError
from ..graph_utils import attr, drop_dead_nodes


class Rewrite:
    """The new graph under construction."""

    def __init__(self, surgeon) -> None:
        self.s = surgeon
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: dict[str, onnx.TensorProto] = {}
        self.used_names = {t.name for t in surgeon.graph.initializer} | {
            o for n in surgeon.graph.node for o in n.output} | {i.name for i in surgeon.graph.input}

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.used_names:
            k += 1
            name = f"{base}_{k}"
        self.used_names.add(name)
        return name

    def add_constant(self, base: str, value: np.ndarray) -> str:
        name = self.unique(base)
        self.new_inits[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    def set_input(self, node: onnx.NodeProto, index: int, value: np.ndarray, suffix: str = "pruned") -> None:
        node.input[index] = self.add_constant(f"{node.input[index]}__{suffix}", value)

    def keep_node(self, node: onnx.NodeProto) -> None:
        self.nodes.append(node)

    def slice_value(self, tensor: str, value: np.ndarray) -> np.ndarray:
        """A value of a tensor (batch-1 broadcastable), cut to the tensor's kept channels."""
        for axis, kept in self.s.keep(tensor).items():
            if value.shape[axis] > 1:
                value = value.take(kept, axis=axis)
        return value

    def add_to_output(self, node: onnx.NodeProto, name: str, contribution: np.ndarray) -> None:
        """Add a constant to the op's output: into its bias when uniform, else through an Add."""
        out = node.output[0]
        contribution = self.slice_value(out, contribution).astype(np.float32)
        rank = contribution.ndim
        axis = 1 if node.op_type in ("Conv", "ConvTranspose") else rank - 1
        uniform = all(contribution.shape[a] == 1 for a in range(rank) if a != axis)
        if uniform and node.op_type in ("Conv", "ConvTranspose", "Gemm"):
            vector = contribution.reshape(-1)
            if len(node.input) > 2 and node.input[2]:
                bias = self.value_of(node.input[2])
                vector = np.broadcast_to(bias, np.broadcast_shapes(bias.shape, vector.shape)) + vector
                self.set_input(node, 2, vector.astype(np.float32), "folded")
            else:
                while len(node.input) < 2:
                    node.input.append("")
                node.input.append(self.add_constant(f"{name}.bias__folded", vector))
            return
        hidden = self.unique(f"{out}__before_fold")
        node.output[0] = hidden
        constant = self.add_constant(f"{name}__folded", contribution)
        self.nodes.append(onnx.helper.make_node("Add", [hidden, constant], [out], name=self.unique(f"{name}/fold")))

    def value_of(self, tensor: str) -> np.ndarray:
        if tensor in self.new_inits:
            return numpy_helper.to_array(self.new_inits[tensor])
        value = self.s.const(tensor)
        if value is None:
            raise MorphNetError(f"internal: {tensor!r} is not a constant")
        return value

    def finish(self) -> onnx.ModelProto:
        graph = self.s.graph
        new_graph = onnx.helper.make_graph(self.nodes, graph.name, list(graph.input), list(graph.output),
                                           list(graph.initializer) + list(self.new_inits.values()))
        # Drop ops nothing reads any more (shape arithmetic of removed branches, unused constants).
        drop_dead_nodes(new_graph)
        inits = {t.name for t in new_graph.initializer}
        original_inits = {t.name for t in graph.initializer}
        kept_inputs = [i for i in graph.input if i.name not in original_inits or i.name in inits]
        del new_graph.input[:]
        new_graph.input.extend(kept_inputs)
        new_graph.doc_string = graph.doc_string
        model = onnx.ModelProto()
        model.CopyFrom(self.s.model)
        model.graph.CopyFrom(new_graph)
        if model.ir_version < 4:
            # Old IR versions require every initializer to be a graph input as well.
            model.ir_version = 4
        return model


def _keep_on(rw: Rewrite, tensor: str, axis: int) -> np.ndarray | None:
    if not tensor:
        return None
    keep = rw.s.keep(tensor)
    return keep.get(axis % max(len(rw.s.shapes.get(tensor, (0, 0))), 1))


Cutter = Callable[[Rewrite, onnx.NodeProto, str], None]
CUTTERS: dict[str, Cutter] = {}


def cuts(*op_types: str):
    def register(fn: Cutter) -> Cutter:
        for op_type in op_types:
            CUTTERS[op_type] = fn
        return fn
    return register


@cuts("Conv", "ConvTranspose")
def cut_conv(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    transposed = node.op_type == "ConvTranspose"
    keep_in = _keep_on(rw, node.input[0], 1)
    keep_out = _keep_on(rw, node.output[0], 1)
    if keep_in is None and keep_out is None:
        return  # untouched: its weights may be computed at run time (a quantized conv, pinned)
    weight = rw.value_of(node.input[1])
    groups = attr(node, "group", 1)
    c_in = rw.s.shapes[node.input[0]][1]
    in_per_group = c_in // groups
    out_axis, in_axis = (1, 0) if transposed else (0, 1)
    new_groups = groups
    if groups == 1:
        if keep_out is not None:
            weight = weight.take(keep_out, axis=out_axis)
        if keep_in is not None:
            weight = weight.take(keep_in, axis=in_axis)
    elif removes_whole_groups(groups, in_per_group):
        # Whole groups go: a group's input and output channels are kept or removed together.
        if transposed:
            if keep_in is not None:
                weight = weight.take(keep_in, axis=0)
                new_groups = len(keep_in) // in_per_group
        elif keep_out is not None:
            c_out = rw.s.shapes[node.output[0]][1]
            weight = weight.take(keep_out, axis=0)
            new_groups = len(keep_out) // (c_out // groups)
    else:
        # The same in-group indices go in every group; the group count stays.
        c_out = rw.s.shapes[node.output[0]][1]
        out_per_group = c_out // groups
        if transposed:
            if keep_in is not None:
                weight = weight.take(keep_in, axis=0)
            if keep_out is not None:
                weight = weight.take(keep_out[keep_out < out_per_group], axis=1)
        else:
            if keep_out is not None:
                weight = weight.take(keep_out, axis=0)
            if keep_in is not None:
                weight = weight.take(keep_in[keep_in < in_per_group], axis=1)
    rw.set_input(node, 1, weight)
    if len(node.input) > 2 and node.input[2] and keep_out is not None:
        rw.set_input(node, 2, rw.value_of(node.input[2]).take(keep_out, axis=0))
    if new_groups != groups:
        for a in node.attribute:
            if a.name == "group":
                a.i = new_groups


@cuts("Gemm")
def cut_gemm(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    keep_in = _keep_on(rw, node.input[0], 0 if attr(node, "transA", 0) else 1)
    keep_out = _keep_on(rw, node.output[0], 1)
    if keep_in is None and keep_out is None:
        return
    weight = rw.value_of(node.input[1])
    trans_b = attr(node, "transB", 0)
    if keep_out is not None:
        weight = weight.take(keep_out, axis=0 if trans_b else 1)
    if keep_in is not None:
        weight = weight.take(keep_in, axis=1 if trans_b else 0)
    rw.set_input(node, 1, weight)
    if len(node.input) > 2 and node.input[2] and keep_out is not None:
        bias = rw.value_of(node.input[2])
        if bias.ndim >= 1 and bias.shape[-1] > 1:
            rw.set_input(node, 2, bias.take(keep_out, axis=-1))


@cuts("MatMul")
def cut_matmul(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    if not rw.s.view.is_stored(node.input[1]):
        return  # two activations: their channels are fixed
    keep_in = _keep_on(rw, node.input[0], -1)
    keep_out = _keep_on(rw, node.output[0], -1)
    if keep_in is None and keep_out is None:
        return
    weight = rw.value_of(node.input[1])
    if keep_out is not None:
        weight = weight.take(keep_out, axis=1)
    if keep_in is not None:
        weight = weight.take(keep_in, axis=0)
    rw.set_input(node, 1, weight)


@cuts("BatchNormalization", "InstanceNormalization")
def cut_norm(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    keep = _keep_on(rw, node.input[0], 1)
    if keep is None:
        return
    for index in range(1, len(node.input)):
        if node.input[index]:
            rw.set_input(node, index, rw.value_of(node.input[index]).take(keep, axis=0))


@cuts("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal", "Greater",
      "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift")
def cut_elementwise(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    """Per-channel constant operands (biases, scales, PRelu slopes) lose the removed channels."""
    out_keep = rw.s.keep(node.output[0])
    if not out_keep:
        return
    rank = len(rw.s.shapes[node.output[0]])
    for index, tensor in enumerate(node.input):
        if not tensor or not rw.s.view.is_stored(tensor):
            continue  # activations, or constants already cut (left by removed branches)
        value = rw.value_of(tensor)
        aligned = value.reshape((1,) * (rank - value.ndim) + value.shape)
        changed = False
        for axis, kept in out_keep.items():
            if aligned.shape[axis] > 1:
                aligned = aligned.take(kept, axis=axis)
                changed = True
        if changed:
            rw.set_input(node, index, aligned.reshape(aligned.shape[rank - value.ndim:]))


def _axis_keep(rw: Rewrite, node: onnx.NodeProto) -> tuple[tuple[int, ...], int, np.ndarray | None]:
    """(input shape, the op's `axis`, kept indices of the input along it) for Split and Gather."""
    in_shape = rw.s.shapes[node.input[0]]
    axis = attr(node, "axis", 0) % len(in_shape)
    return in_shape, axis, _keep_on(rw, node.input[0], axis)


def _set_ints(node: onnx.NodeProto, name: str, values: list[int]) -> None:
    for a in node.attribute:
        if a.name == name:
            del a.ints[:]
            a.ints.extend(values)


@cuts("Split")
def cut_split(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    in_shape, axis, keep = _axis_keep(rw, node)
    if keep is None:
        return
    sizes, start = [], 0
    for out in node.output:
        size = rw.s.shapes[out][axis]
        sizes.append(int(np.count_nonzero((keep >= start) & (keep < start + size))))
        start += size
    # An output whose channels all went keeps size 0 (onnxruntime accepts it); nothing reads it.
    if len(node.input) > 1 and node.input[1]:
        rw.set_input(node, 1, np.array(sizes, dtype=np.int64))
    elif any(a.name == "split" for a in node.attribute):
        _set_ints(node, "split", sizes)
    else:  # equal split by output count (opset 18 num_outputs, or implicit)
        if len(set(sizes)) != 1:
            if rw.s.opset >= 13:
                node.input.append(rw.add_constant(f"{name}.split", np.array(sizes, dtype=np.int64)))
                for a in list(node.attribute):
                    if a.name == "num_outputs":
                        node.attribute.remove(a)
            else:
                node.attribute.append(onnx.helper.make_attribute("split", sizes))


@cuts("Slice")
def cut_slice(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    in_shape = rw.s.shapes[node.input[0]]
    in_keep = rw.s.keep(node.input[0])
    if not in_keep:
        return
    use_inputs = len(node.input) > 1
    if use_inputs:
        starts = [int(v) for v in rw.s.shape_value(node.input[1]).reshape(-1)]
        ends = [int(v) for v in rw.s.shape_value(node.input[2]).reshape(-1)]
        axes = ([int(v) for v in rw.s.shape_value(node.input[3]).reshape(-1)]
                if len(node.input) > 3 and node.input[3] else list(range(len(starts))))
    else:
        starts, ends = list(attr(node, "starts")), list(attr(node, "ends"))
        axes = list(attr(node, "axes", list(range(len(starts)))))
    changed = False
    for i, axis in enumerate(axes):
        axis %= len(in_shape)
        if axis not in in_keep:
            continue
        start, end, _ = slice(starts[i], ends[i], 1).indices(in_shape[axis])
        kept = in_keep[axis]
        starts[i] = int(np.count_nonzero(kept < start))
        ends[i] = int(np.count_nonzero(kept < end))
        changed = True
    if not changed:
        return
    if use_inputs:
        rw.set_input(node, 1, np.array(starts, dtype=np.int64))
        rw.set_input(node, 2, np.array(ends, dtype=np.int64))
    else:
        _set_ints(node, "starts", starts)
        _set_ints(node, "ends", ends)


@cuts("Gather")
def cut_gather(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    in_shape, axis, keep = _axis_keep(rw, node)
    if keep is None:
        return
    indices = rw.s.shape_value(node.input[1])
    new_position = np.full(in_shape[axis], -1, dtype=np.int64)
    new_position[keep] = np.arange(len(keep))
    mapped = new_position[indices.astype(np.int64) % in_shape[axis]]
    if mapped.ndim:
        mapped = mapped[mapped >= 0]
    elif mapped < 0:
        raise MorphNetError(f"internal: {name} gathers a removed channel")
    rw.set_input(node, 1, mapped.astype(indices.dtype))


def _rewrite_shape(rw: Rewrite, node: onnx.NodeProto, name: str, index: int) -> None:
    """A constant target shape (Reshape, Expand) gets the new sizes of the channel axes."""
    out = node.output[0]
    out_keep = rw.s.keep(out)
    if not out_keep or len(node.input) <= index or not rw.s.view.is_stored(node.input[index]):
        return
    target = rw.value_of(node.input[index]).astype(np.int64).copy()
    for axis, kept in out_keep.items():
        if axis < len(target) and target[axis] > 0:
            target[axis] = len(kept)
    rw.set_input(node, index, target)


@cuts("Reshape")
def cut_reshape(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    _rewrite_shape(rw, node, name, 1)


@cuts("Expand")
def cut_expand(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    _rewrite_shape(rw, node, name, 1)


@cuts("Resize")
def cut_resize(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    _rewrite_shape(rw, node, name, 3)


def cut_default(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    """Ops with nothing to cut (activations, pooling, Concat, Transpose, Flatten...)."""
