"""Conv and ConvTranspose: sources of channels (one per filter) that contract their input channels.

Weight [C_out, C_in / group, *kernel] (ConvTranspose: [C_in, C_out / group, *kernel]), bias input 2,
channels on axis 1 of the activations. Grouped convs either lose whole groups (depthwise, ResNeXt)
or keep their group count and lose the same in-group indices in every group (a few large groups).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..graph_utils import attr
from .base import Op, along, keep_on, per_channel_problem, take_axes

if TYPE_CHECKING:
    from ..analysis.context import Context
    from ..surgery.rewrite import Rewrite


def removes_whole_groups(groups: int, in_per_group: int) -> bool:
    """Grouped convs with many small groups (depthwise, ResNeXt) lose whole groups; those with a few
    large groups keep their group count and lose the same in-group indices in every group."""
    return groups >= in_per_group


def fix_inputs_and_cost(ctx: Context, node: onnx.NodeProto, op: str, reason: str, flops: float,
                        weight_elems: float) -> None:
    """A weighted op the analysis cannot prune (weights computed at run time): pinned, still costed."""
    for name in node.input:
        ctx.fix(ctx.get(name), f"{op}: {reason}")
    ctx.add_cost(op, node.op_type, flops_coeff=flops, size_coeff=weight_elems, in_ids=None, out_ids=None,
                 in_fixed=1, out_fixed=1)


def conv(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """A Conv creates one channel per filter; its input channels are contracted.

    Grouped and depthwise convs (group > 1) tie each group's input channels to its output channels:
    pruning removes whole groups (for a depthwise conv, channel c in and out together), so the conv
    stays a valid grouped conv with fewer groups.
    """
    x, w = node.input[0], node.input[1]
    out = node.output[0]
    w_shape = ctx.require_shape(w)
    x_shape = ctx.require_shape(x)
    out_shape = ctx.require_shape(out)
    groups = attr(node, "group", 1)
    transposed = node.op_type == "ConvTranspose"
    kernel = int(np.prod(w_shape[2:]))
    c_in = x_shape[1]
    c_out = out_shape[1]
    # MorphNet: 2 x (output spatial size) x (kernel size) per (input, output) channel pair; for a
    # transposed conv the kernel is applied at every input position instead.
    spatial = int(np.prod(x_shape[2:] if transposed else out_shape[2:]))
    in_per_group = c_in // groups
    in_act = float(np.prod(x_shape[2:]))
    out_act = float(np.prod(out_shape[2:]))
    dtype_bytes = ctx.dtype_bytes(w)
    bias_bytes = (c_out * dtype_bytes) if len(node.input) > 2 and node.input[2] else 0
    ids = ctx.get(x)
    if not ctx.is_constant(w):
        fix_inputs_and_cost(ctx, node, op, "weights computed at run time",
                            2.0 * spatial * kernel * in_per_group * c_out, kernel * in_per_group * c_out)
        return
    in_ids = along(ids, 1, c_in)
    if ids is not None and in_ids is None:
        ctx.fix(ids, f"{op}: input channels are not on axis 1")
    if groups == 1:
        out_ids = ctx.new_source(op, node.op_type, out, c_out)
        ctx.add_cost(op, node.op_type, flops_coeff=2.0 * spatial * kernel, size_coeff=kernel,
                     in_ids=in_ids, out_ids=out_ids, in_fixed=c_in, in_act_per_channel=in_act,
                     out_act_per_channel=out_act, dtype_bytes=dtype_bytes, weight_bytes_extra=bias_bytes)
    elif removes_whole_groups(groups, in_per_group):
        # Many small groups (depthwise, ResNeXt): whole groups go, each group's input channels tied
        # to its output channels; the cost is linear in the output channels alive.
        out_per_group = c_out // groups
        if in_ids is not None:
            by_group = in_ids.reshape(groups, in_per_group)
            for column in range(1, in_per_group):
                ctx.tie(by_group[:, 0], by_group[:, column])
            out_ids = np.repeat(by_group[:, 0], out_per_group)
        else:
            out_ids = ctx.new_source(op, node.op_type, out, c_out)
            ctx.fix(out_ids, f"{op}: grouped conv over input channels that cannot change")
        # The input side is fixed at one "channel" (the cost is linear in the outputs), so the input
        # activations a group reads are charged to its output channels: all of them, not one's worth.
        ctx.add_cost(op, node.op_type, flops_coeff=2.0 * spatial * kernel * in_per_group,
                     size_coeff=kernel * in_per_group, in_ids=None, out_ids=out_ids, in_fixed=1,
                     out_act_per_channel=out_act + in_act * in_per_group / out_per_group,
                     dtype_bytes=dtype_bytes, weight_bytes_extra=bias_bytes)
    else:
        # A few large groups (ShuffleNet v1, early RegNet stages): every group keeps the same channel
        # indices, inputs and outputs independently, so the group count stays.
        out_ids = ctx.new_source(op, node.op_type, out, c_out)
        _tie_across_groups(ctx, out_ids, groups)
        if in_ids is not None:
            _tie_across_groups(ctx, in_ids, groups)
        ctx.add_cost(op, node.op_type, flops_coeff=2.0 * spatial * kernel / groups, size_coeff=kernel / groups,
                     in_ids=in_ids, out_ids=out_ids, in_fixed=c_in, in_act_per_channel=in_act,
                     out_act_per_channel=out_act, dtype_bytes=dtype_bytes, weight_bytes_extra=bias_bytes)
    ctx.set(out, out_ids.reshape([1, c_out] + [1] * (len(out_shape) - 2)))


def _tie_across_groups(ctx: Context, ids: np.ndarray, groups: int) -> None:
    by_group = ids.reshape(groups, -1)
    for row in range(1, groups):
        ctx.tie(by_group[0], by_group[row])


def cut_conv(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    transposed = node.op_type == "ConvTranspose"
    keep_in = keep_on(rw, node.input[0], 1)
    keep_out = keep_on(rw, node.output[0], 1)
    if keep_in is None and keep_out is None:
        return  # untouched: its weights may be computed at run time (a quantized conv, pinned)
    weight = rw.value_of(node.input[1])
    groups = attr(node, "group", 1)
    c_in = rw.s.shapes[node.input[0]][1]
    in_per_group = c_in // groups
    out_axis, in_axis = (1, 0) if transposed else (0, 1)
    new_groups = groups
    if groups == 1:
        weight = take_axes(weight, {out_axis: keep_out, in_axis: keep_in})
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


def check_conv_shapes(node: onnx.NodeProto, shape_of) -> str | None:
    """Input channels fit the weight (times the groups), the bias has one value per output channel."""
    x, w = shape_of(node.input[0]), shape_of(node.input[1]) if len(node.input) > 1 else None
    if not x or len(x) < 2 or not w:
        return None
    groups = attr(node, "group", 1)
    wanted = w[1] * groups if node.op_type == "Conv" else w[0]
    if len(w) < 2 or x[1] != wanted:
        return f"reads {x[1]} channels, its weights {list(w)} (group {groups}) want {wanted}"
    return per_channel_problem(node, shape_of, [2], w[0] if node.op_type == "Conv" else w[1] * groups)


def _conv_layout(node: onnx.NodeProto) -> tuple[int, int, int]:
    return 0, 1, attr(node, "group", 1)


def _conv_transpose_layout(node: onnx.NodeProto) -> tuple[int, int, int]:
    return 1, 0, attr(node, "group", 1)


_CONV = dict(rule=conv, cut=cut_conv, bias=2, trainable=(1, 2), layer_slots=(2,), channels_at="first",
             check_shapes=check_conv_shapes)
OPS = {
    "Conv": Op(layout=_conv_layout, **_CONV),
    "ConvTranspose": Op(layout=_conv_transpose_layout, **_CONV),
}
