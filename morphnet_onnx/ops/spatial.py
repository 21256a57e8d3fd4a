"""Ops over the spatial axes: pooling, padding, resizing. Channel c stays channel c as long as the
channel axis keeps its size; SpaceToDepth/DepthToSpace move channels into space (pinned)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from .base import Op, Unsupported, rewrite_shape_input
from .elementwise import same_channels

if TYPE_CHECKING:
    from ..analysis.context import Context
    from ..surgery.rewrite import Rewrite


def into_space(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    if ctx.get(node.input[0]) is not None:
        raise Unsupported(f"{node.op_type} moves channels into space")


def cut_resize(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    rewrite_shape_input(rw, node, 3)  # `sizes`


POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
OPS = {
    **{op_type: Op(rule=same_channels, channels_at="first",
                   init_transparent=op_type != "LpPool" and op_type != "GlobalLpPool") for op_type in POOLS},
    "Pad": Op(rule=same_channels, init_transparent=True),
    "Resize": Op(rule=same_channels, cut=cut_resize, init_transparent=True),
    "Upsample": Op(rule=same_channels),
    "MaxRoiPool": Op(rule=same_channels),
    "SpaceToDepth": Op(rule=into_space),
    "DepthToSpace": Op(rule=into_space),
}
