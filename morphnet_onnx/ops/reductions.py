"""Ops along axes: reductions (ReduceMean, ArgMax, ...) and normalizations over an axis (Softmax,
LpNormalization, CumSum). Over a non-channel axis the channels pass through; over the channel axis they are pinned,
since removing a channel would change every result, except for sums and means over every channel axis
and a LayerNormalization over the channels, which surgery rewrites exactly (ops/statistics.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from ..graph_utils import attr
from .base import Op, Unsupported, channel_axes, const_ints, cut_nothing
from .statistics import SUMMING, caution, cut_reduce, layer_norm

if TYPE_CHECKING:
    from ..analysis.context import Context


def over_axes(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Normalizations along some axes: removing a channel changes the result if they include a channel axis."""
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    rank = ids.ndim
    if node.op_type == "LayerNormalization":
        start = attr(node, "axis", -1) % rank
        axes = list(range(start, rank))
    elif node.op_type == "LpNormalization":
        axes = [attr(node, "axis", -1) % rank]
    elif node.op_type == "MeanVarianceNormalization":
        axes = [a % rank for a in attr(node, "axes", [0, 2, 3])]
    elif node.op_type == "CumSum":
        axis_value = ctx.value(node.input[1])
        if axis_value is None:
            raise Unsupported("axis computed at run time")
        axes = [int(axis_value.reshape(-1)[0]) % rank]
    else:
        default = -1 if ctx.loaded.opset >= 13 else 1
        axis = attr(node, "axis", default) % rank
        # Before opset 13 Softmax flattened every axis from `axis` on into one.
        axes = [axis] if ctx.loaded.opset >= 13 else list(range(axis, rank))
    over = [a for a in channel_axes(ids) if a in axes]
    if over and node.op_type == "LayerNormalization" and layer_norm(ctx, node, op, axes):
        return  # the embedding width (ops/statistics.py)
    if over:
        ctx.fix(ids, f"{op}: {node.op_type} over the channel axis {over[0]}")
    ctx.set(node.output[0], ids)


def reduce(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    rank = ids.ndim
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [attr(node, "axis", 0) % rank]
    else:
        axes = const_ints(ctx, node, 1, "axes")
        if axes is None or not axes:
            axes = [] if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
        axes = [a % rank for a in axes]
    keepdims = attr(node, "keepdims", 1)
    channels = channel_axes(ids)
    if any(a in channels for a in axes):
        if all(a in axes for a in channels) and node.op_type in SUMMING:
            caution(ctx, node, op)  # a sum or mean over the channels: exact with the removed ones added back
            return
        ctx.fix(ids, f"{op}: {node.op_type} over the channel axis")
        if all(a in axes for a in channels):
            return  # no channels left in the result
        raise Unsupported("reduces over some channel axes but not all")
    out = ids
    for axis in sorted(set(axes), reverse=True):
        out = out.take([0], axis=axis)
        if not keepdims:
            out = out.reshape(out.shape[:axis] + out.shape[axis + 1:])
    ctx.set(node.output[0], out)


REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")

OPS = {
    **{op_type: Op(rule=reduce, cut=cut_reduce if op_type in SUMMING else cut_nothing, reads_removed=op_type in SUMMING)
       for op_type in REDUCE},
    **{op_type: Op(rule=over_axes) for op_type in ("Softmax", "LogSoftmax", "Hardmax", "CumSum",
                                                                    "LpNormalization")},
}
