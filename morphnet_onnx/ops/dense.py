"""Gemm and MatMul by a constant weight (Linear layers): sources of one channel per output feature,
on the last axis. Gemm's weight is [K, N] ([N, K] with transB), bias input 2; MatMul's is [K, N]. A
MatMul of two activations (attention) is costed but its channels are pinned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from ..graph_utils import attr
from .base import Op, Unsupported, along, keep_on, take_axes
from .conv import fix_inputs_and_cost

if TYPE_CHECKING:
    from ..analysis.context import Context
    from ..surgery.rewrite import Rewrite


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
        fix_inputs_and_cost(ctx, node, op, "weight B computed at run time", 2.0 * rows * k * n, 0)
        return
    ids = ctx.get(a)
    in_ids = along(ids, 0 if trans_a else 1, k)
    if ids is not None and in_ids is None:
        ctx.fix(ids, f"{op}: channels on the row axis")
    out_ids = ctx.new_source(op, node.op_type, out, n)
    dtype_bytes = ctx.dtype_bytes(b)
    bias = n * dtype_bytes if len(node.input) > 2 and node.input[2] else 0
    ctx.add_cost(op, node.op_type, flops_coeff=2.0 * rows, size_coeff=1.0, in_ids=in_ids, out_ids=out_ids,
                 in_fixed=k, in_act_per_channel=rows, out_act_per_channel=rows, dtype_bytes=dtype_bytes,
                 weight_bytes_extra=bias)
    ctx.set(out, out_ids.reshape(1, n))


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
        fix_inputs_and_cost(ctx, node, op, "MatMul of two activations (attention) is not pruned",
                            2.0 * rows * k * n, 0)
        return
    if len(b_shape) != 2:
        fix_inputs_and_cost(ctx, node, op, f"MatMul by a {len(b_shape)}-D constant is not pruned",
                            2.0 * rows * k * n, k * n)
        return
    ids = ctx.get(a)
    in_ids = along(ids, len(a_shape) - 1, k)
    if ids is not None and in_ids is None:
        ctx.fix(ids, f"{op}: channels on an axis other than the contracted one")
    out_ids = ctx.new_source(op, node.op_type, out, n)
    ctx.add_cost(op, node.op_type, flops_coeff=2.0 * rows, size_coeff=1.0, in_ids=in_ids, out_ids=out_ids,
                 in_fixed=k, in_act_per_channel=rows, out_act_per_channel=rows, dtype_bytes=ctx.dtype_bytes(b))
    ctx.set(out, out_ids.reshape((1,) * (len(out_shape) - 1) + (n,)))


def cut_gemm(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    keep_in = keep_on(rw, node.input[0], 0 if attr(node, "transA", 0) else 1)
    keep_out = keep_on(rw, node.output[0], 1)
    if keep_in is None and keep_out is None:
        return
    weight = rw.value_of(node.input[1])
    trans_b = attr(node, "transB", 0)
    weight = take_axes(weight, {0 if trans_b else 1: keep_out, 1 if trans_b else 0: keep_in})
    rw.set_input(node, 1, weight)
    if len(node.input) > 2 and node.input[2] and keep_out is not None:
        bias = rw.value_of(node.input[2])
        if bias.ndim >= 1 and bias.shape[-1] > 1:
            rw.set_input(node, 2, bias.take(keep_out, axis=-1))


def cut_matmul(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    if not rw.s.view.is_stored(node.input[1]):
        return  # two activations: their channels are fixed
    keep_in = keep_on(rw, node.input[0], -1)
    keep_out = keep_on(rw, node.output[0], -1)
    if keep_in is None and keep_out is None:
        return
    rw.set_input(node, 1, take_axes(rw.value_of(node.input[1]), {1: keep_out, 0: keep_in}))


def check_dense_shapes(node: onnx.NodeProto, shape_of) -> str | None:
    """The features a Gemm or MatMul contracts fit its weight."""
    x, w = shape_of(node.input[0]), shape_of(node.input[1]) if len(node.input) > 1 else None
    if not x or not w:
        return None
    if node.op_type == "Gemm" and len(x) == 2 and len(w) == 2:
        k_x, k_w = x[0 if attr(node, "transA", 0) else 1], w[1 if attr(node, "transB", 0) else 0]
    elif node.op_type == "MatMul" and len(w) >= 2:
        k_x, k_w = x[-1], w[-2]
    else:
        return None
    return f"multiplies {k_x} features by weights {list(w)} made for {k_w}" if k_x != k_w else None


def _gemm_layout(node: onnx.NodeProto) -> tuple[int, int, int]:
    return (0, 1, 1) if attr(node, "transB", 0) else (1, 0, 1)


def _matmul_layout(node: onnx.NodeProto) -> tuple[int, int, int]:
    return -1, -2, 1


OPS = {
    "Gemm": Op(rule=gemm, cut=cut_gemm, layout=_gemm_layout, bias=2, trainable=(1, 2), layer_slots=(2,),
               channels_at="last", check_shapes=check_dense_shapes),
    "MatMul": Op(rule=matmul, cut=cut_matmul, layout=_matmul_layout, trainable=(1,), channels_at="last",
                 check_shapes=check_dense_shapes),
}
