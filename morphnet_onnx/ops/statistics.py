"""Statistics over the channels: a LayerNormalization over the embedding width, and the sums and
means over the channels that RMSNorm (`x * rsqrt(mean(x^2) + eps)`) and decomposed norms are
written with. Removing channels changes what they compute over the channels that stay, unless the
removed channels' values are added back: surgery knows what every removed channel holds (a
constant once its gates are zero, ops/../surgery/values.py) and rewrites these ops over the kept
channels with the full width's divisor and the removed channels' sums added as constants, which
is exact. A removed channel that still carries data (trained, not gated to zero) changes the
statistics of the others: `inspect` says so in its cautions, and fine-tuning follows.

Where training follows the cut (`shrink`, `expand`; surgery's `approximate_norms`), the ops stay as
they are over the kept channels: a LayerNormalization written out exactly takes 15 elementwise ops
that onnxruntime does not fuse back, and a ReduceMean turned into a sum breaks its RMSNorm fusion.
(Measured, 1 thread, every group at half its width: the tiny ViT export of tests/data/transformers
ran at 1.031x the full model's time written out and 0.626x kept; ViT-B/16 0.274x and 0.276x.)

Example (Llama's RMSNorm): ReduceMean(x^2 over 64 channels) with 16 removed becomes
ReduceSum(x^2 over the 48 kept) + (the removed channels' sum of squares) times 1/64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..graph_utils import attr
from .base import channel_axes

if TYPE_CHECKING:
    from ..analysis.context import Context
    from ..surgery.rewrite import Rewrite

# Reductions that stay exact when the removed channels' values are added back.
SUMMING = ("ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2")
CAUTION = ("{op} ({op_type}) computes over the channels of group(s) that may be pruned: exact when the "
           "removed channels hold constants (their gates zero; surgery adds their values back), otherwise "
           "the statistics of the kept channels change (fine-tune after pruning)")
# What surgery's `approximate_norms` keeps as one op over the kept channels: normalizations and the
# mean a decomposed LayerNorm or an RMSNorm is written with (a sum stays exact: one Add more).
KEPT_OVER_KEPT = ("LayerNormalization", "ReduceMean")


def over_kept_channels(surgeon, node: onnx.NodeProto) -> bool:
    """Whether surgery keeps this statistic over the kept channels alone (approximate_norms)."""
    return surgeon.approximate_norms and node.op_type in KEPT_OVER_KEPT


def caution(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Say once per op type that statistics over prunable channels are exact only for gated channels."""
    seen = ctx.memo.setdefault("statistics_caution", set())
    if node.op_type not in seen:
        seen.add(node.op_type)
        ctx.cautions.append(CAUTION.format(op=op, op_type=node.op_type) + f" (and every other {node.op_type} so)")


def layer_norm(ctx: Context, node: onnx.NodeProto, op: str, axes: list[int]) -> bool:
    """A LayerNormalization whose normalized axes hold every channel axis passes the channels
    through (its scale gates them, like a BatchNormalization's); False when it does not apply."""
    ids = ctx.get(node.input[0])
    if ids is None or not channel_axes(ids) or not set(channel_axes(ids)) <= set(axes) or len(node.output) > 1:
        return False
    caution(ctx, node, op)
    ctx.set(node.output[0], ids)
    return True


# ---- surgery --------------------------------------------------------------------------------------

def _removed(rw: Rewrite, tensor: str, axes: list[int], fn) -> tuple[np.ndarray | None, int]:
    """(the sum over `axes` of fn(value) over the removed positions, keepdims, None when zero; how
    many positions one slice over `axes` loses)."""
    shape = tuple(rw.s.shapes[tensor])
    dead = ~rw.s.alive(tensor)
    one = dead
    for axis in range(dead.ndim):
        if axis not in axes:
            one = one.take([0], axis=axis)
    per_slice = int(np.count_nonzero(one)) * int(np.prod([shape[a] for a in axes if one.shape[a] == 1]))
    value = rw.s.val.get(tensor)
    if value is None or not per_slice:
        return None, per_slice
    contribution = np.where(np.broadcast_to(dead, shape), fn(np.broadcast_to(value, shape).astype(np.float64)), 0.0)
    total = contribution.sum(axis=tuple(axes), keepdims=True)
    return (total if np.any(total) else None), per_slice


class Emitter:
    """Nodes written before the cut node, which becomes the last op of the rewritten computation."""

    def __init__(self, rw: Rewrite, node: onnx.NodeProto, name: str, dtype) -> None:
        self.rw, self.node, self.name, self.dtype = rw, node, name, dtype

    def const(self, value) -> str:
        return self.rw.add_constant(f"{self.name}/c", np.asarray(value, dtype=self.dtype))

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.rw.unique(f"{self.name}/{op_type.lower()}")
        self.rw.keep_node(onnx.helper.make_node(op_type, inputs, [out], name=self.rw.unique(out), **attrs))
        return out

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int) -> str:
        # ReduceSum takes its axes as an input from opset 13, the other reductions from opset 18.
        as_input = self.rw.s.opset >= (13 if op_type == "ReduceSum" else 18)
        if as_input:
            return self.op(op_type, [x, self.rw.add_constant(f"{self.name}/axes", np.array(axes, dtype=np.int64))],
                           keepdims=keepdims)
        return self.op(op_type, [x], axes=axes, keepdims=keepdims)

    def finish(self, op_type: str, inputs: list[str]) -> None:
        """Turn the cut node into the last op, writing the original output."""
        node = self.node
        node.op_type = op_type
        node.domain = ""
        del node.input[:]
        node.input.extend(inputs)
        del node.attribute[:]


def _channel_axes(rw: Rewrite, tensor: str) -> list[int]:
    ids = rw.s.ids.get(tensor)
    return [] if ids is None else [a for a in range(ids.ndim) if ids.shape[a] > 1]


def computes_over_channels(surgeon, node: onnx.NodeProto) -> bool:
    """Whether a reduction or LayerNormalization computes over channel axes of its input (surgery
    then needs the removed channels' values; over space they pass through)."""
    ids = surgeon.ids.get(node.input[0])
    if ids is None:
        return False
    rank = ids.ndim
    axes = list(range(attr(node, "axis", -1) % rank, rank)) if node.op_type == "LayerNormalization" \
        else _axes_of(surgeon, node, rank)
    return any(ids.shape[a] > 1 for a in axes)


def _axes_of(surgeon, node: onnx.NodeProto, rank: int) -> list[int]:
    if len(node.input) > 1 and node.input[1]:
        value = surgeon.shape_value(node.input[1])
        axes = [] if value is None else [int(a) for a in value.reshape(-1)]
    else:
        axes = list(attr(node, "axes", []) or [])
    if not axes and not attr(node, "noop_with_empty_axes", 0):
        axes = list(range(rank))
    return sorted(a % rank for a in axes)


def cut_reduce(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    """A sum or mean over channels that lost some: the removed channels' values added back, and a
    mean divided by the full count."""
    x = node.input[0]
    alive = rw.s.alive(x)
    if alive is None or alive.all() or node.op_type not in SUMMING:
        return
    if over_kept_channels(rw.s, node):
        return  # the mean of the kept channels, where training follows
    shape = rw.s.shapes[x]
    rank = len(shape)
    axes = _axes_of(rw.s, node, rank)
    if not set(axes) & set(_channel_axes(rw, x)):
        return  # over space (global pooling): the channels pass through, nothing to add back
    keepdims = attr(node, "keepdims", 1)
    fn = {"ReduceSum": lambda v: v, "ReduceMean": lambda v: v, "ReduceL1": np.abs}.get(node.op_type, np.square)
    added, _ = _removed(rw, x, axes, fn)
    if node.op_type in ("ReduceSum", "ReduceSumSquare", "ReduceL1") and added is None:
        return  # the removed channels add nothing
    dtype = np.float32 if rw.s.loaded.dtypes.get(x, 1) == onnx.TensorProto.FLOAT else \
        onnx.helper.tensor_dtype_to_np_dtype(rw.s.loaded.dtypes.get(x, 1))
    emit = Emitter(rw, node, name, dtype)
    base = {"ReduceMean": "ReduceSum", "ReduceL2": "ReduceSumSquare"}.get(node.op_type, node.op_type)
    total = emit.reduce(base, x, axes, 1)
    if added is not None:
        total = emit.op("Add", [total, emit.const(added)])
    if not keepdims:
        total = emit.op("Squeeze", [total, rw.add_constant(f"{name}/squeeze", np.array(axes, dtype=np.int64))]) \
            if rw.s.opset >= 13 else emit.op("Squeeze", [total], axes=axes)
    if node.op_type == "ReduceMean":
        emit.finish("Mul", [total, emit.const(1.0 / int(np.prod([shape[a] for a in axes])))])
    elif node.op_type == "ReduceL2":
        emit.finish("Sqrt", [total])
    else:
        emit.finish("Identity", [total])


def cut_layer_norm(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    """LayerNormalization over channels that lost some, written out over the kept ones with the full
    width's mean and variance: mean = (sum kept + sum removed) / C; with d = x - mean over the kept,
    var = (sum d^2 + sum removed (v - mean)^2) / C, the second sum expanded as
    S2 - 2 mean S1 + n mean^2 (S1, S2: the removed values' sum and sum of squares, n: their count)."""
    x = node.input[0]
    alive = rw.s.alive(x)
    shape = rw.s.shapes[x]
    rank = len(shape)
    start = attr(node, "axis", -1) % rank
    axes = list(range(start, rank))
    keep = rw.s.keep(x)
    params, changed = {}, {}
    for slot in (1, 2):
        if len(node.input) > slot and node.input[slot]:
            value = rw.value_of(node.input[slot])
            aligned = value.reshape((1,) * (rank - start - value.ndim) + value.shape)
            for axis, kept in keep.items():
                if axis >= start and aligned.shape[axis - start] > 1:
                    aligned = aligned.take(kept, axis=axis - start)
            params[slot] = aligned
            changed[slot] = aligned.reshape(aligned.shape[aligned.ndim - value.ndim:])
    if alive is None or alive.all() or rw.s.copies is not None or not set(axes) & set(_channel_axes(rw, x)) \
            or over_kept_channels(rw.s, node):
        # Nothing removed, widening (expand), or approximated where training follows: the op stays,
        # its scale and shift cut or repeated.
        if keep:
            for slot, value in changed.items():
                rw.set_input(node, slot, value)
        return
    width = int(np.prod([shape[a] for a in axes]))
    s1, removed = _removed(rw, x, axes, lambda v: v)
    s2, _ = _removed(rw, x, axes, np.square)
    dtype = rw.value_of(node.input[1]).dtype
    emit = Emitter(rw, node, name, dtype)
    total = emit.reduce("ReduceSum", x, axes, 1)
    if s1 is not None:
        total = emit.op("Add", [total, emit.const(s1)])
    mean = emit.op("Mul", [total, emit.const(1.0 / width)])
    d = emit.op("Sub", [x, mean])
    squares = emit.reduce("ReduceSum", emit.op("Mul", [d, d]), axes, 1)
    correction = emit.op("Mul", [emit.op("Mul", [mean, mean]), emit.const(float(removed))])
    if s1 is not None:
        correction = emit.op("Sub", [correction, emit.op("Mul", [mean, emit.const(2.0 * s1)])])
    if s2 is not None:
        correction = emit.op("Add", [correction, emit.const(s2)])
    var = emit.op("Mul", [emit.op("Add", [squares, correction]), emit.const(1.0 / width)])
    inv = emit.op("Reciprocal", [emit.op("Sqrt", [emit.op("Add", [var, emit.const(attr(node, "epsilon", 1e-5))])])])
    y = emit.op("Mul", [d, inv])
    if 2 in params:
        emit.finish("Add", [emit.op("Mul", [y, emit.const(params[1])]), emit.const(params[2])])
    else:
        emit.finish("Mul", [y, emit.const(params[1])])
