"""What an op is, in one place: the op families whose parameters morphnet-onnx reads, slices,
trains and initialises, with where each parameter sits among the op's inputs.

- conv-like (Conv, ConvTranspose): weight 1, bias 2; channels on axis 1 of the activations;
- dense (Gemm, MatMul with a constant weight): weight 1, bias 2 (Gemm); channels on the last axis;
- channel norms (BatchNormalization, InstanceNormalization): per-channel scale 1 and shift 2 (and
  BatchNormalization's running mean 3 and variance 4, statistics rather than learned parameters);
- other trained parameters: LayerNormalization/GroupNormalization scale and shift, PRelu slope.

Every stage asks this module: gates and regularizers (which ops gate a channel), surgery (the
shift a removed channel leaves), training (which inputs are trained), cost (which are buffers),
loading (which norm parameters belong to one layer), initialization (fresh values). The channel
rule of each op (analysis/handlers.py) and how to cut it (surgery/cutters.py) are registered by op
type in those two modules; docs/analysis.md ("Adding an op") says what a new op needs where.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .graph_utils import attr

CONV = ("Conv", "ConvTranspose")
DENSE = ("Gemm", "MatMul")
WEIGHTED = CONV + DENSE
# Norms with one scale and shift per channel of axis 1: they gate channels.
CHANNEL_NORMS = ("BatchNormalization", "InstanceNormalization")

# Input slots that hold learned parameters (trained), running statistics (frozen buffers), and the
# fresh values of norm parameters (scale 1, shift 0, running mean 0, running variance 1).
TRAINABLE_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
    "BatchNormalization": (1, 2), "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2), "PRelu": (1,),
}
BUFFER_INPUTS: dict[str, tuple[int, ...]] = {"BatchNormalization": (3, 4)}
NORM_FRESH: dict[str, dict[int, float]] = {
    "BatchNormalization": {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0}, "InstanceNormalization": {1: 1.0, 2: 0.0},
    "LayerNormalization": {1: 1.0, 2: 0.0}, "GroupNormalization": {1: 1.0, 2: 0.0},
}
# A channel norm's per-channel tensors belong to that one layer (an exporter may share equal ones).
NORM_PARAMETER_SLOTS: dict[str, tuple[int, ...]] = {"BatchNormalization": (1, 2, 3, 4),
                                                    "InstanceNormalization": (1, 2)}
# Slots that must stay positive when made up (placeholder weights): scales and variances.
POSITIVE_SLOTS: dict[str, tuple[int, ...]] = {"BatchNormalization": (1, 4), "InstanceNormalization": (1,)}


def output_channel_axis(op_type: str, rank: int) -> int:
    """The axis of a gating op's output that holds its channels (NCHW for convs and norms)."""
    return rank - 1 if op_type in DENSE else 1


def bias_input(op_type: str) -> int | None:
    """The input slot of the per-channel shift an output channel keeps when its scale is zero."""
    return 2 if op_type in CHANNEL_NORMS + CONV + ("Gemm",) else None


@dataclass(frozen=True)
class WeightLayout:
    """Where a weighted op's channels are in its weight: the output and input axes, the bias input."""

    weight: str
    bias: str | None
    out_axis: int
    in_axis: int
    groups: int = 1


def weight_layout(node: onnx.NodeProto, constants) -> WeightLayout | None:
    """The layout of a Conv/ConvTranspose/Gemm/MatMul whose weight is a constant, else None."""
    if node.op_type not in WEIGHTED or len(node.input) < 2 or node.input[1] not in constants:
        return None
    slot = bias_input(node.op_type)
    bias = node.input[slot] if slot is not None and len(node.input) > slot and node.input[slot] else None
    if node.op_type == "Conv":
        return WeightLayout(node.input[1], bias, 0, 1, attr(node, "group", 1))
    if node.op_type == "ConvTranspose":
        return WeightLayout(node.input[1], bias, 1, 0, attr(node, "group", 1))
    if node.op_type == "Gemm":
        return WeightLayout(node.input[1], bias, *((0, 1) if attr(node, "transB", 0) else (1, 0)))
    return WeightLayout(node.input[1], None, -1, -2)

