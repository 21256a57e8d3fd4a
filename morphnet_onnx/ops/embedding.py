"""Embeddings: a Gather from a constant table by indices known only at run time (a token
embedding, `wte[input_ids]`) is a source of the embedding width, one channel per column of the
table, on the output's last axis.

Example (GPT-2): `Gather(wte [V, D], input_ids [1, T])` -> [1, T, D] creates D channels; position
embeddings added to it are per-channel parameters (ops/elementwise.py), the residual Adds tie every
attention and MLP output projection to them, and the tied output head reads them as input
features: one group, the embedding width. Removing channel c removes column c of the table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from ..graph_utils import attr
from .base import keep_on, take_axes

if TYPE_CHECKING:
    from ..analysis.context import Context
    from ..surgery.rewrite import Rewrite


def is_embedding(ctx: Context, node: onnx.NodeProto) -> bool:
    """Gather along axis 0 of a constant 2-D table by indices computed at run time."""
    if node.op_type != "Gather" or len(node.input) < 2 or attr(node, "axis", 0) != 0:
        return False
    table = ctx.shape(node.input[0]) if ctx.is_constant(node.input[0]) else None
    return table is not None and len(table) == 2 and not ctx.is_constant(node.input[1])


def embedding(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """One new channel per column of the table, on the output's last axis. Looking up costs no
    FLOPs; the table is the op's weights (MorphNet's model size: V x channels)."""
    vocab, width = ctx.require_shape(node.input[0])
    out = node.output[0]
    rank = len(ctx.require_shape(out))
    out_ids = ctx.new_source(op, node.op_type, out, width)
    ctx.add_cost(op, node.op_type, flops_coeff=0.0, size_coeff=float(vocab), in_ids=None, out_ids=out_ids,
                 in_fixed=1, dtype_bytes=ctx.dtype_bytes(node.input[0]))
    ctx.set(out, out_ids.reshape((1,) * (rank - 1) + (width,)))


def cut_embedding(rw: Rewrite, node: onnx.NodeProto, name: str) -> bool:
    """The table loses the removed columns; False when this Gather reads no stored table. A table
    gathered by constant positions (a position embedding) carries channel ids of its own
    (ops/elementwise.py: adopt_constant)."""
    if not rw.s.view.is_stored(node.input[0]):
        return False
    if rw.s.ids.get(node.input[0]) is not None:
        keep = rw.s.keep(node.input[0])
        if keep:
            rw.set_input(node, 0, take_axes(rw.value_of(node.input[0]), keep))
        return True
    keep = keep_on(rw, node.output[0], -1)
    if keep is not None:
        rw.set_input(node, 0, rw.value_of(node.input[0]).take(keep, axis=1))
    return True


def embedding_layout(node: onnx.NodeProto) -> tuple[int, int, int]:
    """The table [V, D]: channels on its last axis (read by gates, regularizers and initialization)."""
    return -1, 0, 1
