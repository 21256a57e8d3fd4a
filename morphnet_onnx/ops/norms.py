"""Normalizations. BatchNormalization and InstanceNormalization normalize each channel over space:
channels pass through, and their per-channel scale (input 1) gates the channel, which is what
MorphNet's gamma regularizer drives to zero (shift 2; BatchNormalization's running mean 3 and
variance 4 are statistics, frozen in training). LayerNormalization and MeanVarianceNormalization
normalize over axes (pinned when those include a channel axis); GroupNormalization and LRN mix
neighbouring channels (pinned).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from .base import Op, keep_on, per_channel_problem
from .elementwise import same_channels
from .reductions import over_axes

if TYPE_CHECKING:
    from ..analysis.context import Context
    from ..surgery.rewrite import Rewrite

MIXING = {
    "LRN": "LRN normalizes each channel by its neighbours",
    "GroupNormalization": "GroupNormalization normalizes over groups of channels",
}


def mixes_channels(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Ops whose result for one channel depends on the others: channels pass through, unprunable."""
    ids = ctx.get(node.input[0])
    ctx.fix(ids, f"{op}: {MIXING[node.op_type]}")
    ctx.set(node.output[0], ids)


def cut_norm(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    keep = keep_on(rw, node.input[0], 1)
    if keep is None:
        return
    for index in range(1, len(node.input)):
        if node.input[index]:
            rw.set_input(node, index, rw.value_of(node.input[index]).take(keep, axis=0))


def check_norm_shapes(node: onnx.NodeProto, shape_of) -> str | None:
    """Scale, shift (and statistics) have one value per channel of axis 1."""
    x = shape_of(node.input[0])
    if not x or len(x) < 2:
        return None
    return per_channel_problem(node, shape_of, OPS[node.op_type].layer_slots, x[1])


_CHANNEL_NORM = dict(check_shapes=check_norm_shapes, rule=same_channels, cut=cut_norm, gates_by_scale=True, bias=2, trainable=(1, 2),
                     memory_bound=True, init_transparent=True, channels_at="first")
OPS = {
    "BatchNormalization": Op(buffers=(3, 4), fresh={1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0}, positive=(1, 4),
                             layer_slots=(1, 2, 3, 4), **_CHANNEL_NORM),
    "InstanceNormalization": Op(fresh={1: 1.0, 2: 0.0}, positive=(1,), layer_slots=(1, 2), **_CHANNEL_NORM),
    "LayerNormalization": Op(rule=over_axes, trainable=(1, 2), fresh={1: 1.0, 2: 0.0}, layer_slots=(1, 2),
                             channels_at="last"),
    "MeanVarianceNormalization": Op(rule=over_axes),
    "GroupNormalization": Op(rule=mixes_channels, fresh={1: 1.0, 2: 0.0}, layer_slots=(1, 2), channels_at="first"),
    "LRN": Op(rule=mixes_channels, channels_at="first"),
}
