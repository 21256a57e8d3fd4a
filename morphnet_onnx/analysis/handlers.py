"""What each op does to channels: one small handler per op family, and the registry that maps op
types to them. A handler reads the channel ids of its inputs from the context, writes those of its
outputs, ties positions that must go together, creates new channels (sources), records costs, and
raises `Unsupported` for anything it does not understand: the caller then makes every channel the op
touches unprunable, which is always safe.

Example: `Add(conv1_out, conv2_out)` (a residual join) ties conv1's channel i to conv2's channel i,
so both convs lose channel i together or not at all.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from ..graph_utils import attr, compress
from .context import MAX_TRACE_ELEMENTS, Context, Unsupported, align, along, channel_axes
from .groups import CostedOp

Handler = Callable[[Context, onnx.NodeProto, str], None]
HANDLERS: dict[str, Handler] = {}


def handles(*op_types: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for op_type in op_types:
            HANDLERS[op_type] = fn
        return fn
    return register


# ---- channels pass through unchanged ----------------------------------------------------------

UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal",
    "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Not", "IsNaN", "IsInf", "Identity", "Cast", "CastLike",
    "Dropout", "Clip", "Shrink", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "Pad", "Resize", "Upsample",
    "SpaceToDepth", "DepthToSpace", "MaxRoiPool",
)


@handles(*UNARY)
def passthrough(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Activations, pooling, normalization over space, padding, resizing: channel c stays channel c.

    The channel axes must keep their size (a Pad or Resize over channels is not understood);
    per-channel parameters (BN scale/shift, InstanceNorm scale) are sliced by surgery.
    """
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    if node.op_type in ("SpaceToDepth", "DepthToSpace"):
        raise Unsupported(f"{node.op_type} moves channels into space")
    out_shape = ctx.require_shape(node.output[0])
    if len(out_shape) != ids.ndim or any(out_shape[a] != ids.shape[a] for a in channel_axes(ids)):
        raise Unsupported("changes the size of a channel axis")
    ctx.set(node.output[0], ids)


MIXING = {
    "LRN": "LRN normalizes each channel by its neighbours",
    "GroupNormalization": "GroupNormalization normalizes over groups of channels",
}


@handles(*MIXING)
def mixes_channels(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Ops whose result for one channel depends on the others: channels pass through, unprunable."""
    ids = ctx.get(node.input[0])
    ctx.fix(ids, f"{op}: {MIXING[node.op_type]}")
    ctx.set(node.output[0], ids)


@handles("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "MeanVarianceNormalization", "CumSum")
def over_axes(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Normalizations along some axes: removing a channel changes the result if they include a channel axis."""
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    rank = ids.ndim
    if node.op_type == "LayerNormalization":
        start = attr(node, "axis", -1) % rank
        axes = list(range(start, rank))
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
    if over:
        ctx.fix(ids, f"{op}: {node.op_type} over the channel axis {over[0]}")
    ctx.set(node.output[0], ids)


# ---- element-wise with broadcasting ------------------------------------------------------------

def combine(ctx: Context, op: str, operands: list[str], out_shape: tuple[int, ...],
            skip_axes: tuple[int, ...] = ()) -> np.ndarray | None:
    """Tie the channels of operands that meet position by position (numpy broadcasting).

    An operand broadcast across another one's channel axis (a [N,1,H,W] map added to [N,C,H,W]) cannot
    lose its only channel, so it is fixed. A constant with extent along a channel axis is a
    per-channel parameter (bias, scale) that surgery slices; a computed tensor without channel
    structure there makes the channels unprunable. Axes in `skip_axes` (Concat's) are not compared.
    """
    rank = len(out_shape)
    carried: list[tuple[np.ndarray, tuple[int, ...]]] = []
    plain: list[str] = []
    for name in operands:
        if not name:
            continue
        ids = ctx.get(name)
        shape = ctx.require_shape(name)
        shape = (1,) * (rank - len(shape)) + tuple(shape)
        if ids is None:
            plain.append(name)
        else:
            carried.append((align(ids, rank), shape))
    if not carried:
        return None
    axes = sorted({a for ids, _ in carried for a in channel_axes(ids) if a not in skip_axes})
    kept = []
    for ids, shape in carried:
        if any(shape[a] == 1 and out_shape[a] > 1 for a in axes):
            ctx.fix(ids, f"{op}: broadcast across the channels of another operand")
        else:
            kept.append(ids)
    for name in plain:
        shape = (1,) * (rank - len(ctx.require_shape(name))) + tuple(ctx.require_shape(name))
        if any(shape[a] > 1 for a in axes) and not ctx.is_constant(name):
            for ids in kept:
                ctx.fix(ids, f"{op}: combined with {name!r}, a computed tensor with no channel structure")
    if not kept:
        return None
    first = kept[0]
    for other in kept[1:]:
        if skip_axes:
            first_cmp = first.take([0], axis=skip_axes[0]) if first.shape[skip_axes[0]] > 1 else first
            other_cmp = other.take([0], axis=skip_axes[0]) if other.shape[skip_axes[0]] > 1 else other
            ctx.tie(first_cmp, other_cmp)
        else:
            ctx.tie(first, other)
    if not skip_axes:
        shape = tuple(max(k.shape[a] for k in kept) for a in range(rank))
        first = np.broadcast_to(first, shape)
    return first


ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Mod", "BitShift",
               "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor")


@handles(*ELEMENTWISE)
def elementwise(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    out_shape = ctx.require_shape(node.output[0])
    ctx.set(node.output[0], combine(ctx, op, list(node.input), out_shape))


@handles("Where")
def where(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    out_shape = ctx.require_shape(node.output[0])
    ctx.set(node.output[0], combine(ctx, op, list(node.input), out_shape))


# ---- ops that read shapes only -------------------------------------------------------------------

@handles("Shape", "Size", "Constant", "ConstantOfShape", "Range", "EyeLike", "RandomNormalLike",
         "RandomUniformLike")
def no_channels(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Their outputs carry no channels, and reading a tensor's shape does not pin its channels."""


# ---- moving channels around ----------------------------------------------------------------------

@handles("Concat")
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


@handles("Split")
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


def _const_ints(ctx: Context, node: onnx.NodeProto, index: int, attr_name: str, default=None):
    """An integer list given as an input (new opsets) or an attribute (old ones)."""
    if len(node.input) > index and node.input[index]:
        value = ctx.value(node.input[index])
        if value is None:
            raise Unsupported(f"{attr_name} computed at run time")
        return [int(v) for v in value.reshape(-1)]
    value = attr(node, attr_name, default)
    return None if value is None else [int(v) for v in value]


@handles("Slice")
def slice_(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    out_shape = ctx.require_shape(node.output[0])
    if all(out_shape[a] == ids.shape[a] for a in channel_axes(ids)):
        ctx.set(node.output[0], ids)  # slices only non-channel axes (or all of one)
        return
    starts = _const_ints(ctx, node, 1, "starts")
    ends = _const_ints(ctx, node, 2, "ends")
    axes = _const_ints(ctx, node, 3, "axes", list(range(len(starts))))
    steps = _const_ints(ctx, node, 4, "steps", [1] * len(starts))
    index: list[slice] = [slice(None)] * ids.ndim
    full = ctx.require_shape(node.input[0])
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= ids.ndim
        if ids.shape[axis] > 1:
            if step != 1:
                raise Unsupported("strided slice over channels")
            index[axis] = slice(*slice(start, end, step).indices(full[axis]))
    ctx.set(node.output[0], ids[tuple(index)])


@handles("Gather")
def gather(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    ids = ctx.get(node.input[0])
    if ids is None:
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


@handles("Transpose")
def transpose(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    perm = attr(node, "perm", list(reversed(range(ids.ndim))))
    ctx.set(node.output[0], ids.transpose(perm))


@handles("Expand")
def expand(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    _pin_shape_sources(ctx, node, op)
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    out_shape = ctx.require_shape(node.output[0])
    ctx.set(node.output[0], align(ids, len(out_shape)))


@handles("Tile")
def tile(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    repeats = _const_ints(ctx, node, 1, "repeats")
    reps = [r if ids.shape[a] > 1 else 1 for a, r in enumerate(repeats)]
    ctx.set(node.output[0], np.tile(ids, reps))


@handles("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Follow every channel position through the new shape (Flatten before a classifier maps channel c
    to features c*H*W .. c*H*W+H*W-1). A channel axis split into several (a channel shuffle's
    [N,G,C/G,H,W], attention heads) must stay a product to remain reshapable after pruning, so the
    positions are tied across all but the longest channel axis: each keeps or loses the same
    indices (ShuffleNet's two halves lose channel i together, attention heads the same head dims).
    """
    if node.op_type == "Reshape":
        _pin_shape_sources(ctx, node, op)
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    in_shape = ctx.require_shape(node.input[0])
    out_shape = ctx.require_shape(node.output[0])
    _keep_product(ctx, ids)
    if int(np.prod(in_shape)) > MAX_TRACE_ELEMENTS:
        raise Unsupported(f"tensor too large to trace ({int(np.prod(in_shape))} elements)")
    full = np.broadcast_to(ids, in_shape).reshape(out_shape)
    out = compress(full)
    _keep_product(ctx, out)
    ctx.set(node.output[0], out)


def _pin_shape_sources(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """A target shape read at run time from *another* tensor (timm's lambda layer reshapes to its
    input's channel count) would stop fitting once that tensor loses channels: pin them. Reading
    the reshaped tensor's own shape is fine (ShuffleNet's x.view(n, g, c // g, h, w))."""
    for tensor in ctx.shape_sources(node.input[1]):
        if tensor != node.input[0]:
            ctx.fix(ctx.get(tensor), f"{op}: its shape sets the target of this Reshape")


def _keep_product(ctx: Context, ids: np.ndarray) -> None:
    """Make channels vary along one axis only (in union-find terms), keeping the longest axis free."""
    classes = ctx.classes(ids)
    axes = channel_axes(classes)
    if len(axes) < 2:
        return
    keep = max(axes, key=lambda a: ids.shape[a])
    for axis in axes:
        if axis != keep:
            ctx.tie(ids, ids.take([0], axis=axis))


REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")


@handles(*REDUCE)
def reduce(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    rank = ids.ndim
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [attr(node, "axis", 0) % rank]
    else:
        axes = _const_ints(ctx, node, 1, "axes")
        if axes is None or not axes:
            axes = [] if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
        axes = [a % rank for a in axes]
    keepdims = attr(node, "keepdims", 1)
    channels = channel_axes(ids)
    if any(a in channels for a in axes):
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


# ---- sources: ops with weights that create new channels --------------------------------------------

def _fix_inputs_and_cost(ctx, node, op, reason, flops, weight_elems):
    for name in node.input:
        ctx.fix(ctx.get(name), f"{op}: {reason}")
    ctx.add_cost(CostedOp(op, node.op_type, flops_coeff=flops, size_coeff=weight_elems, in_ids=None,
                          out_ids=None, in_fixed=1, out_fixed=1))


def removes_whole_groups(groups: int, in_per_group: int) -> bool:
    """Grouped convs with many small groups (depthwise, ResNeXt) lose whole groups; those with a few
    large groups keep their group count and lose the same in-group indices in every group."""
    return groups >= in_per_group


@handles("Conv", "ConvTranspose")
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
        _fix_inputs_and_cost(ctx, node, op, "weights computed at run time",
                             2.0 * spatial * kernel * in_per_group * c_out, kernel * in_per_group * c_out)
        return
    in_ids = along(ids, 1, c_in)
    if ids is not None and in_ids is None:
        ctx.fix(ids, f"{op}: input channels are not on axis 1")
    if groups == 1:
        out_ids = ctx.new_source(op, node.op_type, out, c_out)
        ctx.add_cost(CostedOp(op, node.op_type, flops_coeff=2.0 * spatial * kernel, size_coeff=kernel,
                              in_ids=in_ids, out_ids=out_ids, in_fixed=c_in, in_act_per_channel=in_act,
                              out_act_per_channel=out_act, dtype_bytes=dtype_bytes,
                              weight_bytes_extra=bias_bytes))
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
        ctx.add_cost(CostedOp(op, node.op_type, flops_coeff=2.0 * spatial * kernel * in_per_group,
                              size_coeff=kernel * in_per_group, in_ids=None, out_ids=out_ids, in_fixed=1,
                              out_act_per_channel=out_act + in_act * in_per_group / out_per_group,
                              dtype_bytes=dtype_bytes, weight_bytes_extra=bias_bytes))
    else:
        # A few large groups (ShuffleNet v1, early RegNet stages): every group keeps the same channel
        # indices, inputs and outputs independently, so the group count stays.
        out_ids = ctx.new_source(op, node.op_type, out, c_out)
        _tie_across_groups(ctx, out_ids, groups)
        if in_ids is not None:
            _tie_across_groups(ctx, in_ids, groups)
        ctx.add_cost(CostedOp(op, node.op_type, flops_coeff=2.0 * spatial * kernel / groups,
                              size_coeff=kernel / groups, in_ids=in_ids, out_ids=out_ids, in_fixed=c_in,
                              in_act_per_channel=in_act, out_act_per_channel=out_act, dtype_bytes=dtype_bytes,
                              weight_bytes_extra=bias_bytes))
    ctx.set(out, out_ids.reshape([1, c_out] + [1] * (len(out_shape) - 2)))


def _tie_across_groups(ctx: Context, ids: np.ndarray, groups: int) -> None:
    by_group = ids.reshape(groups, -1)
    for row in range(1, groups):
        ctx.tie(by_group[0], by_group[row])


@handles("Gemm")
def gemm(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Gemm with a weight initializer (a Linear layer): one new channel per output feature."""
    a, b = node.input[0], node.input[1]
    out = node.output[0]
    a_shape, out_shape = ctx.require_shape(a), ctx.require_shape(out)
    trans_a = attr(node, "transA", 0)
    rows, k = (a_shape[1], a_shape[0]) if trans_a else (a_shape[0], a_shape[1])
    rows = ctx.per_example(rows)
    n = out_shape[1]
    if not ctx.is_constant(b):
        _fix_inputs_and_cost(ctx, node, op, "weight B computed at run time", 2.0 * rows * k * n, 0)
        return
    ids = ctx.get(a)
    in_ids = along(ids, 0 if trans_a else 1, k)
    if ids is not None and in_ids is None:
        ctx.fix(ids, f"{op}: channels on the row axis")
    out_ids = ctx.new_source(op, node.op_type, out, n)
    dtype_bytes = ctx.dtype_bytes(b)
    bias = n * dtype_bytes if len(node.input) > 2 and node.input[2] else 0
    ctx.add_cost(CostedOp(op, node.op_type, flops_coeff=2.0 * rows, size_coeff=1.0, in_ids=in_ids,
                          out_ids=out_ids, in_fixed=k, in_act_per_channel=rows, out_act_per_channel=rows,
                          dtype_bytes=dtype_bytes, weight_bytes_extra=bias))
    ctx.set(out, out_ids.reshape(1, n))


@handles("MatMul")
def matmul(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """MatMul by a weight (x @ W, W of shape [K, N]) creates N channels on the last axis. A MatMul of
    two activations (attention scores, attention x values) is counted but its channels are fixed."""
    a, b = node.input[0], node.input[1]
    out = node.output[0]
    a_shape, b_shape, out_shape = ctx.require_shape(a), ctx.require_shape(b), ctx.require_shape(out)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise Unsupported("MatMul of a vector")
    k = a_shape[-1]
    rows = ctx.per_example(int(np.prod(out_shape[:-1])))
    n = out_shape[-1]
    if not ctx.is_constant(b):
        _fix_inputs_and_cost(ctx, node, op, "MatMul of two activations (attention) is not pruned",
                             2.0 * rows * k * n, 0)
        return
    if len(b_shape) != 2:
        _fix_inputs_and_cost(ctx, node, op, f"MatMul by a {len(b_shape)}-D constant is not pruned",
                             2.0 * rows * k * n, k * n)
        return
    ids = ctx.get(a)
    in_ids = along(ids, len(a_shape) - 1, k)
    if ids is not None and in_ids is None:
        ctx.fix(ids, f"{op}: channels on an axis other than the contracted one")
    out_ids = ctx.new_source(op, node.op_type, out, n)
    ctx.add_cost(CostedOp(op, node.op_type, flops_coeff=2.0 * rows, size_coeff=1.0, in_ids=in_ids,
                          out_ids=out_ids, in_fixed=k, in_act_per_channel=rows, out_act_per_channel=rows,
                          dtype_bytes=ctx.dtype_bytes(b)))
    ctx.set(out, out_ids.reshape((1,) * (len(out_shape) - 1) + (n,)))
