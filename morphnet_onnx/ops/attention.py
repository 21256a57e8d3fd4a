"""Attention: the MatMuls of two activations (scores = Q @ K^T, context = scores @ V) and the head
split that feeds them.

Heads. An attention layer projects its input (`x @ Wq`, [B, T, H*d]), splits the features into
heads with a Reshape ([B, T, H, d], the *head split*), moves the heads forward ([B, H, T, d]) and
multiplies two activations per head. A head is the unit that can go: its d rows of Wq, Wk and Wv
and its d columns of the output projection, with the head count of every Reshape after it. So a
head split ties the d positions of each head into one channel (the head dimension is kept) and,
from there on, a tensor carries one channel id per head on its heads axis (the d axis carries
none: the rotary embedding's slices and concatenations along it are free).

A Reshape is a head split when it splits one channel axis into several and its output reaches a
MatMul of two activations through ops that keep the tensor's layout (Transpose, Reshape, scalar
scales, the rotary embedding's Slice/Neg/Concat/Mul/Add, the Unsqueeze/Expand of grouped-query
attention). A channel shuffle's Reshape (ShuffleNet) never reaches one, and keeps the product rule
of ops/shaping.py.

A MatMul of two activations `A[..., M, K] @ B[..., K, N]` ties the heads of its batch axes
position by position (Q's head h with K's head h: for grouped-query attention, whose K was
repeated over the query heads of its group, a KV head and all its query heads become one
channel), passes A's channels on M and B's channels on N to the output, and ties the contracted
positions of A and B when both carry channels there (a single head's dims: Q and K lose dim i
together). Its cost, 2 x (output elements) x K, is linear in the heads alive: each head pays its
two attention MatMuls, quadratic in the tokens.

Example (ViT, 4 heads of 16): q = x @ Wq [1, 17, 64] -> Reshape [1, 17, 4, 16] (a head split: ids
[1, 1, 4, 1]) -> Transpose [1, 4, 17, 16]; scores = q @ k^T [1, 4, 17, 17] ties q's head h to k's
head h; context = softmax(scores) @ v ties v's head h; Reshape [1, 17, 64] (ids: each head repeated
16 times) -> out projection. One group of width 4: a channel is a head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from .base import Unsupported, align, channel_axes

if TYPE_CHECKING:
    from ..analysis.context import Context

# Ops between a head split and the attention MatMul: they keep the heads where they are (or move
# them: Transpose, Reshape), scale them, or apply the rotary embedding along the head dimension.
# onnxruntime's transformer optimizer fuses attention and norms into contrib ops, which hide the
# heads and the embedding width inside one node: not pruned (what they read stays), with this hint.
_FUSED_HINT = ("; onnxruntime's transformer optimizer wrote it: prune the model exported by torch (before "
               "onnxruntime.transformers.optimizer), then optimize the pruned one")
FUSED = {f"com.microsoft::{op_type}": f" (fused {what}: its {kept} stay){_FUSED_HINT}" for op_type, what, kept in (
    ("Attention", "attention with its QKV weights", "heads and inputs"),
    ("MultiHeadAttention", "attention", "heads"),
    ("GroupQueryAttention", "grouped-query attention", "query and KV heads"),
    ("PackedAttention", "attention", "heads"),
    ("PackedMultiHeadAttention", "attention", "heads"),
    ("SkipLayerNormalization", "residual add and LayerNorm", "embedding width channels"),
    ("SkipSimplifiedLayerNormalization", "residual add and RMSNorm", "embedding width channels"),
    ("SimplifiedLayerNormalization", "RMSNorm", "embedding width channels"),
    ("EmbedLayerNormalization", "embeddings and LayerNorm", "embedding width channels"),
    ("BiasGelu", "bias and GELU", "MLP hidden units"),
    ("FastGelu", "bias and GELU", "MLP hidden units"),
    ("RotaryEmbedding", "rotary embedding", "heads"),
)}

HEAD_PATH = frozenset({
    "Transpose", "Reshape", "Mul", "Div", "Add", "Sub", "Neg", "Cast", "Identity", "Slice", "Concat", "Split",
    "Unsqueeze", "Squeeze", "Expand", "Tile", "Where", "Gather", "Dropout", "Sigmoid", "Tanh",
})
MAX_HEAD_PATH = 24  # ops followed from a Reshape to an attention MatMul


def is_activation_matmul(ctx: Context, node: onnx.NodeProto) -> bool:
    """A MatMul whose both operands are computed at run time (attention's two products)."""
    return (node.op_type == "MatMul" and len(node.input) == 2
            and not ctx.is_constant(node.input[0]) and not ctx.is_constant(node.input[1]))


def is_head_split(ctx: Context, node: onnx.NodeProto, heads: int, head_dim: int) -> bool:
    """Whether a Reshape's output reaches a MatMul of two activations through HEAD_PATH ops, as an
    operand whose matrix axis there is the candidate head dimension (a Q or K with `head_dim`
    contracted, a V with `head_dim` columns) or whose batch axes hold the candidate head count
    (LeViT splits each head's packed key and value dims after the Reshape).
    nn.MultiheadAttention first reshapes its packed projection to [T, B, 3, E]: neither 3 nor E
    is there, a later Reshape splits the heads."""
    found, seen, frontier = False, set(), [node.output[0]]
    while frontier and not found and len(seen) < MAX_HEAD_PATH:
        tensor = frontier.pop(0)
        for consumer in ctx.view.consumers.get(tensor, []):
            if id(consumer) in seen:
                continue
            seen.add(id(consumer))
            if is_activation_matmul(ctx, consumer):
                shape = ctx.shape(tensor) or ()
                operand_axes = (-1,) if consumer.input[0] == tensor else (-2, -1)
                if len(shape) >= 2 and (any(shape[axis] == head_dim for axis in operand_axes)
                                        or heads in shape[:-2]):
                    found = True
                    break
                continue
            if consumer.op_type in HEAD_PATH and consumer.domain in ("", "ai.onnx"):
                frontier.extend(o for o in consumer.output if o)
    return found


def split_heads(ctx: Context, out: np.ndarray) -> np.ndarray:
    """The ids of a head split's output: the last channel axis (the head dimension) tied into one
    channel per head, and every other channel axis but the heads (the one before it: a packed
    QKV's [3, H, d] keeps H) tied across; returns one id per head, on the heads axis."""
    axes = channel_axes(out)
    head_dim = axes[-1]
    heads = axes[-2]
    rep = out
    for axis in axes:
        if axis == heads:
            continue
        ctx.tie(rep, rep.take([0], axis=axis))
        rep = rep.take([0], axis=axis)
    return rep if rep.shape[head_dim] == 1 else rep.take([0], axis=head_dim)


def matmul_activations(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """`A[..., M, K] @ B[..., K, N]`, both computed: heads on the batch axes tied, A's channels on
    M and B's on N passed to the output, contracted channels tied between A and B. One it cannot
    follow is still costed (its operands are then pinned by the caller)."""
    a, b, out = node.input[0], node.input[1], node.output[0]
    a_shape, b_shape, out_shape = ctx.require_shape(a), ctx.require_shape(b), ctx.require_shape(out)
    try:
        _matmul_activations(ctx, node, op, a_shape, b_shape, out_shape)
    except Unsupported:
        flops = 2.0 * ctx.per_example(int(np.prod(out_shape))) * a_shape[-1]
        ctx.add_cost(op, node.op_type, flops_coeff=flops, size_coeff=0.0, in_ids=None, out_ids=None,
                     in_fixed=1, out_fixed=1, dtype_bytes=ctx.dtype_bytes(out))
        raise


def _matmul_activations(ctx: Context, node: onnx.NodeProto, op: str, a_shape, b_shape, out_shape) -> None:
    a, b, out = node.input[0], node.input[1], node.output[0]
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise Unsupported("MatMul of a vector")
    rank = len(out_shape)
    k = a_shape[-1]
    m_axis, k_axis_a, k_axis_b, n_axis = rank - 2, rank - 1, rank - 2, rank - 1
    ids_a, ids_b = ctx.get(a), ctx.get(b)
    full_a = None if ids_a is None else align(ids_a, rank)
    full_b = None if ids_b is None else align(ids_b, rank)
    ch_a = channel_axes(full_a) if full_a is not None else []
    ch_b = channel_axes(full_b) if full_b is not None else []
    if (m_axis in ch_a and k_axis_a in ch_a) or (k_axis_b in ch_b and n_axis in ch_b):
        raise Unsupported("an operand carries channels on both of its matrix axes")
    contracted = None
    if k_axis_a in ch_a or k_axis_b in ch_b:
        if not (k_axis_a in ch_a and k_axis_b in ch_b):
            raise Unsupported("contracts channels with an operand that has none there")
        left = full_a.take([0], axis=m_axis)  # [..., 1, K]
        right = np.swapaxes(full_b, -1, -2).take([0], axis=m_axis)  # [..., 1, K]
        ctx.tie(left, right)
        contracted = left
        for axis in range(rank - 1):
            contracted = contracted.take([0], axis=axis)
        contracted = contracted.reshape(-1)  # the K contracted positions (of the first head)
    # Batch axes: the operands meet position by position, as in an element-wise op.
    batch_a = None if full_a is None else full_a.take([0], axis=k_axis_a)  # [..., M|1, 1]
    batch_b = None if full_b is None else full_b.take([0], axis=k_axis_b)  # [..., 1, N|1]
    batch_axes = sorted({axis for axis in ch_a + ch_b if axis < rank - 2})
    for ids, shape, name in ((batch_a, a_shape, a), (batch_b, b_shape, b)):
        aligned = (1,) * (rank - len(shape)) + tuple(shape)
        if ids is None:
            if any(aligned[axis] > 1 for axis in batch_axes) and not ctx.is_constant(name):
                for other in (batch_a, batch_b):
                    ctx.fix(other, f"{op}: multiplied with {name!r}, a computed tensor with no channel structure")
        elif any(aligned[axis] == 1 and out_shape[axis] > 1 for axis in batch_axes):
            ctx.fix(ids, f"{op}: broadcast across the heads of another operand")
    if batch_a is not None and batch_b is not None and batch_axes:
        ctx.tie(batch_a.take([0], axis=m_axis), batch_b.take([0], axis=n_axis))
    if batch_a is not None and m_axis in ch_a and batch_b is not None and n_axis in ch_b:
        raise Unsupported("channels on both the rows of A and the columns of B")
    if batch_b is not None and n_axis in ch_b:
        out_ids = batch_b
    elif batch_a is not None and (m_axis in ch_a or batch_axes):
        out_ids = batch_a
    elif batch_b is not None and batch_axes:
        out_ids = batch_b
    else:
        out_ids = None
    if out_ids is not None and not channel_axes(out_ids):
        out_ids = None
    elements = ctx.per_example(int(np.prod(out_shape)))
    dtype_bytes = ctx.dtype_bytes(out)
    positions = None if out_ids is None else out_ids.reshape(-1)
    per_position = elements / (positions.size if positions is not None else 1)
    ctx.add_cost(op, node.op_type, flops_coeff=2.0 * per_position, size_coeff=0.0,
                 in_ids=contracted if contracted is not None and contracted.size == k else None,
                 out_ids=positions, in_fixed=k, out_fixed=1, dtype_bytes=dtype_bytes)
    if out_ids is not None:
        ctx.set(out, out_ids)
