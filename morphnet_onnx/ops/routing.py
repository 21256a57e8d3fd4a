"""Ops that route channels: Concat lays its inputs' channels side by side (an Inception join), Split
and Slice take ranges of them, Gather picks some by index."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..errors import MorphNetError
from ..graph_utils import attr
from .base import Op, Unsupported, align, along, channel_axes, const_ints, keep_on, set_ints
from .elementwise import combine, constant_operand
from .embedding import cut_embedding, embedding, embedding_layout, is_embedding

if TYPE_CHECKING:
    from ..analysis.context import Context
    from ..surgery.rewrite import Rewrite


def concat(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Concat on a channel axis lays the inputs' channels side by side (an Inception join): no tying.
    Concat along another axis (a sequence) ties the inputs' channels like an element-wise op."""
    out_shape = ctx.require_shape(node.output[0])
    rank = len(out_shape)
    axis = attr(node, "axis") % rank
    inputs = [name for name in node.input if name]
    carried = [ctx.get(name) for name in inputs]
    if all(ids is None for ids in carried):
        return
    on_axis = any(ids is not None and align(ids, rank).shape[axis] > 1 for ids in carried)
    if not on_axis:
        ctx.set(node.output[0], _concat_other_axis(ctx, op, inputs, out_shape, axis))
        return
    parts = []
    for name, ids in zip(inputs, carried):
        shape = ctx.require_shape(name)
        if ids is None:
            ids = ctx.new_source(op, node.op_type, name, shape[axis]).reshape(
                [shape[axis] if a == axis else 1 for a in range(rank)])
            ctx.fix(ids, f"{op}: concatenated channels of {name!r} have no source op")
        else:
            positions = along(align(ids, rank), axis, shape[axis])
            if positions is None:
                raise Unsupported("inputs carry channels on different axes")
            ids = positions.reshape([shape[axis] if a == axis else 1 for a in range(rank)])
        parts.append(ids)
    ctx.set(node.output[0], np.concatenate(parts, axis=axis))


def _concat_other_axis(ctx, op, inputs, out_shape, axis):
    ids = combine(ctx, op, inputs, out_shape, skip_axes=(axis,))
    if ids is None:
        return None
    shape = list(ids.shape)
    shape[axis] = 1
    return ids.take([0], axis=axis).reshape(shape)


def cut_concat(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    """Constant inputs joined along another axis (ViT's class token before the patches) lose the
    removed channels."""
    out_keep = rw.s.keep(node.output[0])
    if not out_keep:
        return
    rank = len(rw.s.shapes[node.output[0]])
    axis = attr(node, "axis") % rank
    for index, tensor in enumerate(node.input):
        value = constant_operand(rw, tensor)
        if value is None or value.ndim != rank:
            continue
        sliced = value
        for channel_axis, kept in out_keep.items():
            if channel_axis != axis and sliced.shape[channel_axis] > 1:
                sliced = sliced.take(kept, axis=channel_axis)
        if sliced is not value:
            rw.set_input(node, index, sliced)


def split(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    axis = attr(node, "axis", 0) % ids.ndim
    start = 0
    for out in node.output:
        size = ctx.require_shape(out)[axis]
        if ids.shape[axis] > 1:
            ctx.set(out, ids.take(range(start, start + size), axis=axis))
        else:
            ctx.set(out, ids)
        start += size


def slice_(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    out_shape = ctx.require_shape(node.output[0])
    if all(out_shape[a] == ids.shape[a] for a in channel_axes(ids)):
        ctx.set(node.output[0], ids)  # slices only non-channel axes (or all of one)
        return
    starts = const_ints(ctx, node, 1, "starts")
    ends = const_ints(ctx, node, 2, "ends")
    axes = const_ints(ctx, node, 3, "axes", list(range(len(starts))))
    steps = const_ints(ctx, node, 4, "steps", [1] * len(starts))
    index: list[slice] = [slice(None)] * ids.ndim
    full = ctx.require_shape(node.input[0])
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= ids.ndim
        if ids.shape[axis] > 1:
            if step != 1:
                raise Unsupported("strided slice over channels")
            index[axis] = slice(*slice(start, end, step).indices(full[axis]))
    ctx.set(node.output[0], ids[tuple(index)])


def gather(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    ids = ctx.get(node.input[0])
    if ids is None:
        if is_embedding(ctx, node):
            embedding(ctx, node, op)
        return
    axis = attr(node, "axis", 0) % ids.ndim
    if ids.shape[axis] > 1:
        indices = ctx.value(node.input[1])
        if indices is None:
            raise Unsupported("selects channels chosen at run time")
        ctx.set(node.output[0], np.take(ids, indices.astype(np.int64) % ids.shape[axis], axis=axis))
    else:
        indices_shape = ctx.require_shape(node.input[1])
        ctx.set(node.output[0], np.take(ids, np.zeros(indices_shape, dtype=np.int64), axis=axis))


def _axis_keep(rw: Rewrite, node: onnx.NodeProto) -> tuple[tuple[int, ...], int, np.ndarray | None]:
    """(input shape, the op's `axis`, kept indices of the input along it) for Split and Gather."""
    in_shape = rw.s.shapes[node.input[0]]
    axis = attr(node, "axis", 0) % len(in_shape)
    return in_shape, axis, keep_on(rw, node.input[0], axis)


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
        set_ints(node, "split", sizes)
    else:  # equal split by output count (opset 18 num_outputs, or implicit)
        if len(set(sizes)) != 1:
            if rw.s.opset >= 13:
                node.input.append(rw.add_constant(f"{name}.split", np.array(sizes, dtype=np.int64)))
                for a in list(node.attribute):
                    if a.name == "num_outputs":
                        node.attribute.remove(a)
            else:
                node.attribute.append(onnx.helper.make_attribute("split", sizes))


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
        set_ints(node, "starts", starts)
        set_ints(node, "ends", ends)


def cut_gather(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    if cut_embedding(rw, node, name):
        return
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


OPS = {
    "Concat": Op(rule=concat, cut=cut_concat, memory_bound=True, init_transparent=True),
    "Split": Op(rule=split, cut=cut_split),
    "Slice": Op(rule=slice_, cut=cut_slice),
    # A token embedding (ops/embedding.py) is a weighted op whose weight, the table, is input 0.
    "Gather": Op(rule=gather, cut=cut_gather, layout=embedding_layout, weight=0, trainable=(0,), channels_at="last"),
}
