"""Element-wise ops: activations and other unary maps (channel c stays channel c), and binary ops with
numpy broadcasting (a residual Add ties its operands' channels position by position).

Example: `Add(conv1_out, conv2_out)` (a residual join) ties conv1's channel i to conv2's channel i,
so both convs lose channel i together or not at all. A per-channel constant operand (a bias, a
scale, PRelu's slope) is sliced by the cutter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from .base import Op, Unsupported, align, channel_axes

if TYPE_CHECKING:
    from ..analysis.context import Context
    from ..surgery.rewrite import Rewrite


def same_channels(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Activations, pooling, normalization over space, padding, resizing: channel c stays channel c.

    The channel axes must keep their size (a Pad or Resize over channels is not understood);
    per-channel parameters (BN scale/shift, InstanceNorm scale) are sliced by surgery.
    """
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    out_shape = ctx.require_shape(node.output[0])
    if len(out_shape) != ids.ndim or any(out_shape[a] != ids.shape[a] for a in channel_axes(ids)):
        raise Unsupported("changes the size of a channel axis")
    ctx.set(node.output[0], ids)


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
    computed_constants = []
    for name in plain:
        shape = (1,) * (rank - len(ctx.require_shape(name))) + tuple(ctx.require_shape(name))
        if any(shape[a] > 1 for a in axes) and not ctx.is_constant(name):
            for ids in kept:
                ctx.fix(ids, f"{op}: combined with {name!r}, a computed tensor with no channel structure")
        elif any(shape[a] > 1 for a in axes) and ctx.is_constant(name) and name in ctx.folded:
            computed_constants.append(name)
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
    for name in computed_constants:
        adopt_constant(ctx, name, first if not skip_axes else first.take([0], axis=skip_axes[0]))
    return first


# Ops through which a constant computed from a stored one keeps its channels where they were.
ADOPTING = ("Expand", "Identity", "Cast", "Gather")


def adopt_constant(ctx: Context, name: str, ids: np.ndarray) -> None:
    """A constant computed from a stored one (a class token expanded to the batch, a position table
    gathered by positions) and combined with channels takes their ids, back to the stored tensor,
    so that surgery cuts the stored tensor and the ops in between keep working at any batch size.
    Chains through other ops are left to surgery's constant folding (ops/elementwise.py)."""
    chain, tensor = [], name
    channel = [a for a in range(ids.ndim) if ids.shape[a] > 1]
    mapping = {a: a - ids.ndim for a in channel}  # channel axis -> the same axis counted from the end
    while True:
        shape = ctx.shape(tensor)
        if shape is None or any(-axis > len(shape) or shape[axis] != ids.shape[a] for a, axis in mapping.items()):
            return
        chain.append((tensor, dict(mapping)))
        if ctx.view.is_stored(tensor):
            break
        node = ctx.folded.get(tensor, (None, None, None))[2]
        if node is None or node.op_type not in ADOPTING:
            return
        if node.op_type == "Gather":
            data = ctx.shape(node.input[0])
            if data is None or len(data) != 2 or set(mapping.values()) != {-1}:
                return  # a table [P, D] gathered by positions: only its columns carry channels
        tensor = node.input[0]
    for tensor, axes in chain:
        rank = len(ctx.shape(tensor))
        own = np.ones(rank, dtype=np.int64).tolist()
        for a, axis in axes.items():
            own[axis] = ids.shape[a]
        values = ids
        for a in range(ids.ndim):
            if a not in axes:
                values = values.take([0], axis=a)
        values = values.reshape(own)
        if tensor in ctx.ids:
            ctx.tie(ctx.ids[tensor], values)
        else:
            ctx.set(tensor, values)


def elementwise(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Binary (and n-ary) ops and Where: every operand meets the others position by position."""
    out_shape = ctx.require_shape(node.output[0])
    ctx.set(node.output[0], combine(ctx, op, list(node.input), out_shape))


def cut_elementwise(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    """Per-channel constant operands (biases, scales, PRelu slopes) lose the removed channels."""
    out_keep = rw.s.keep(node.output[0])
    if not out_keep:
        return
    rank = len(rw.s.shapes[node.output[0]])
    for index, tensor in enumerate(node.input):
        value = constant_operand(rw, tensor)
        if value is None:
            continue  # activations, or constants already cut (left by removed branches)
        aligned = value.reshape((1,) * (rank - value.ndim) + value.shape)
        changed = False
        for axis, kept in out_keep.items():
            if aligned.shape[axis] > 1:
                aligned = aligned.take(kept, axis=axis)
                changed = True
        if changed:
            rw.set_input(node, index, aligned.reshape(aligned.shape[rank - value.ndim:]))


def constant_operand(rw: Rewrite, tensor: str) -> np.ndarray | None:
    """The value of an operand that is a parameter: stored, or computed from constants (a class
    token expanded by an Expand, a position table gathered by constant indices), else None."""
    if not tensor:
        return None
    if rw.s.view.is_stored(tensor):
        return rw.value_of(tensor)
    if rw.s.ids.get(tensor) is not None or tensor in rw.s.known:
        return None
    if rw.s.symbolic_batch and rw.s.depends_on_shapes(tensor):
        return None  # its value at batch 1 would not fit other batches
    return rw.s.constant_value(tensor)


# Activations that zero (or nearly) negative inputs: the weights before them get He initialisation.
RELU_LIKE = ("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Clip", "HardSwish", "HardSigmoid", "Gelu", "Mish",
             "Softplus", "ThresholdedRelu")
# Unary ops with no FLOPs in MorphNet's convention that still move their activations (latency).
MEMORY_BOUND_UNARY = ("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                      "Clip", "Softplus", "Gelu", "Erf", "Mish")
UNARY = RELU_LIKE + (
    "Sigmoid", "Tanh", "Softsign", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Not", "IsNaN", "IsInf", "Identity", "Cast", "CastLike", "Dropout", "Shrink",
)
BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Mod", "BitShift", "Equal", "Greater",
          "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor")
# Binary ops that may read a constant in place of an operand whose branch was removed.
BROADCASTING = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow")
# A residual join leaves the initialisation of what it adds unchanged.
INIT_TRANSPARENT = ("Add", "Sum", "Sub", "Identity", "Dropout")

OPS = {
    **{op_type: Op(rule=same_channels, relu_like=op_type in RELU_LIKE, memory_bound=op_type in MEMORY_BOUND_UNARY,
                   init_transparent=op_type in INIT_TRANSPARENT) for op_type in UNARY},
    **{op_type: Op(rule=elementwise, cut=cut_elementwise, broadcasts=op_type in BROADCASTING,
                   memory_bound=op_type in ("Add", "Sub", "Mul", "Div", "Sum", "Max", "Min"),
                   init_transparent=op_type in INIT_TRANSPARENT) for op_type in BINARY},
    "Where": Op(rule=elementwise, cut=cut_elementwise, broadcasts=True),
    "PRelu": Op(rule=elementwise, cut=cut_elementwise, trainable=(1,), broadcasts=True, memory_bound=True,
                relu_like=True),
}
