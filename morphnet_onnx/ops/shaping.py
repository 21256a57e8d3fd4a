"""Ops that reshape or repeat a tensor (Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand, Tile)
and ops that read shapes only (Shape, Size, Constant, ConstantOfShape, Range, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..graph_utils import attr, compress
from .attention import is_head_split, split_heads
from .base import MAX_TRACE_ELEMENTS, Op, Unsupported, align, channel_axes, const_ints, rewrite_shape_input, take_axes

if TYPE_CHECKING:
    from ..analysis.context import Context
    from ..surgery.rewrite import Rewrite


def no_channels(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Their outputs carry no channels, and reading a tensor's shape does not pin its channels."""


def transpose(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    perm = attr(node, "perm", list(reversed(range(ids.ndim))))
    ctx.set(node.output[0], ids.transpose(perm))


def expand(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    out_shape = ctx.require_shape(node.output[0])
    ctx.set(node.output[0], align(ids, len(out_shape)))


def tile(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    ids = ctx.get(node.input[0])
    if ids is None:
        return
    repeats = const_ints(ctx, node, 1, "repeats")
    reps = [r if ids.shape[a] > 1 else 1 for a, r in enumerate(repeats)]
    ctx.set(node.output[0], np.tile(ids, reps))


def reshape(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Follow every channel position through the new shape (Flatten before a classifier maps channel c
    to features c*H*W .. c*H*W+H*W-1). A channel axis split into several (a channel shuffle's
    [N,G,C/G,H,W], attention heads) must stay a product to remain reshapable after pruning, so the
    positions are tied across all but the longest channel axis: each keeps or loses the same
    indices (ShuffleNet's two halves lose channel i together). A Reshape that splits attention heads
    (one reaching a MatMul of two activations) ties each head's dims instead: whole heads go.
    """
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
    axes = channel_axes(out)
    # Heads sit right before the head dimension; a single head ([B, T, 3, 1, d]) is no head split.
    if (node.op_type == "Reshape" and len(axes) > 1 and axes[-2] == axes[-1] - 1
            and is_head_split(ctx, node, out_shape[axes[-2]], out_shape[axes[-1]])):
        ctx.set(node.output[0], split_heads(ctx, out))  # attention heads (ops/attention.py)
        return
    _keep_product(ctx, out)
    ctx.set(node.output[0], out)


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


def cut_target_shape(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    """A target shape read at run time from other tensors' shapes (timm's lambda layer reshapes to
    its input's channel count, nn.MultiheadAttention to the embedding width) is rewritten with the
    new sizes (ops/base.py), so those tensors may lose channels."""
    rewrite_shape_input(rw, node, 1)


def cut_expand(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    """Expand's target, and a constant it expands (ViT's class token, given channel ids by the op
    that adds or concatenates it: ops/elementwise.py) cut to the kept channels."""
    rewrite_shape_input(rw, node, 1)
    if rw.s.view.is_stored(node.input[0]):
        keep = rw.s.keep(node.input[0])
        if keep:
            rw.set_input(node, 0, take_axes(rw.value_of(node.input[0]), keep))


OPS = {
    "Reshape": Op(rule=reshape, cut=cut_target_shape, init_transparent=True),
    **{op_type: Op(rule=reshape, init_transparent=True) for op_type in ("Flatten", "Squeeze", "Unsqueeze")},
    "Transpose": Op(rule=transpose, init_transparent=True),
    "Expand": Op(rule=expand, cut=cut_expand),
    "Tile": Op(rule=tile),
    "Shape": Op(rule=no_channels, reads_shape_only=True),
    "Size": Op(rule=no_channels, reads_shape_only=True),
    **{op_type: Op(rule=no_channels) for op_type in ("Constant", "ConstantOfShape", "Range", "EyeLike",
                                                      "RandomNormalLike", "RandomUniformLike")},
}
