"""What each op is, in one place: one module per op family, one registry.

Each family module (conv, dense, norms, elementwise, spatial, routing, shaping, reductions) defines
`OPS`, a dict from op type to `Op`: its channel rule and cost (read by the analysis), its cutter
(surgery), where its weight's channels are (gates, regularizers, initialization, expand) and its
parameter slots (training, cost, loading). Every other module asks this registry; the op-type
lists below are derived from it, never written out again. docs/analysis.md ("Adding an op") walks
through teaching a new op.

Stage 1 of the flow: ops/ imports only the basis (errors, graph_utils); loading/, the next stage,
and every later one ask it. The analysis context and the rewrite state its rules and cutters are
handed are named for type checking only.
"""

from __future__ import annotations

import onnx

from . import conv, dense, elementwise, norms, reductions, routing, shaping, spatial
from .base import Op, Unsupported, WeightLayout, align, along, channel_axes, cut_nothing, weight_from_rows, weight_rows

__all__ = ["OPS", "Op", "Unsupported", "WeightLayout", "align", "along", "channel_axes", "op_info",
           "weight_layout", "weight_rows", "weight_from_rows", "output_channel_axis", "bias_input",
           "cut_nothing"]

FAMILIES = (conv, dense, norms, elementwise, spatial, routing, shaping, reductions)


def _registry() -> dict[str, Op]:
    ops: dict[str, Op] = {}
    for family in FAMILIES:
        for op_type, op in family.OPS.items():
            if op_type in ops:
                raise RuntimeError(f"op type {op_type} is taught by two families")
            ops[op_type] = op
    return ops


OPS: dict[str, Op] = _registry()


def op_info(op_type: str, domain: str = "") -> Op | None:
    """What morphnet-onnx knows about an op of the default domain, or None."""
    return OPS.get(op_type) if domain in ("", "ai.onnx") else None


def _select(predicate) -> tuple[str, ...]:
    return tuple(op_type for op_type, op in OPS.items() if predicate(op))


CONV = tuple(conv.OPS)
DENSE = tuple(dense.OPS)
WEIGHTED = _select(lambda op: op.layout is not None)
# Norms with one scale and shift per channel of axis 1: they gate channels.
CHANNEL_NORMS = _select(lambda op: op.gates_by_scale)
TRAINABLE_INPUTS = {op_type: op.trainable for op_type, op in OPS.items() if op.trainable}
BUFFER_INPUTS = {op_type: op.buffers for op_type, op in OPS.items() if op.buffers}
NORM_FRESH = {op_type: dict(op.fresh) for op_type, op in OPS.items() if op.fresh}
LAYER_PARAMETER_SLOTS = {op_type: op.layer_slots for op_type, op in OPS.items() if op.layer_slots}
POSITIVE_SLOTS = {op_type: op.positive for op_type, op in OPS.items() if op.positive}
MEMORY_BOUND = frozenset(_select(lambda op: op.memory_bound))
BROADCASTING = frozenset(_select(lambda op: op.broadcasts))
SHAPE_READERS = frozenset(_select(lambda op: op.reads_shape_only))
RELU_LIKE = frozenset(_select(lambda op: op.relu_like))
INIT_TRANSPARENT = frozenset(_select(lambda op: op.init_transparent))
CHANNELS_FIRST = frozenset(_select(lambda op: op.channels_at == "first"))
CHANNELS_LAST = frozenset(_select(lambda op: op.channels_at == "last"))


def output_channel_axis(op_type: str, rank: int) -> int:
    """The axis of a gating op's output that holds its channels (NCHW for convs and norms)."""
    return rank - 1 if op_type in CHANNELS_LAST else 1


def bias_input(op_type: str) -> int | None:
    """The input slot of the per-channel shift an output channel keeps when its scale is zero."""
    op = OPS.get(op_type)
    return op.bias if op is not None else None


def weight_layout(node: onnx.NodeProto, constants) -> WeightLayout | None:
    """The layout of a Conv/ConvTranspose/Gemm/MatMul whose weight is a constant, else None."""
    op = OPS.get(node.op_type)
    if op is None or op.layout is None or len(node.input) < 2 or node.input[1] not in constants:
        return None
    slot = op.bias
    bias = node.input[slot] if slot is not None and len(node.input) > slot and node.input[slot] else None
    out_axis, in_axis, groups = op.layout(node)
    return WeightLayout(node.input[1], bias, out_axis, in_axis, groups)

