"""Gate magnitudes (how alive each channel is) and gate zeroing.

A channel's *gates* are the ops that scale it: every BatchNormalization/InstanceNormalization over
it (scale gamma, shift beta) and every op with weights that writes it (filter row, bias). MorphNet
regularizes the scales; a channel whose scales fall to ~0 outputs only the shifts.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..loading.model import LoadedModel
from ..ops import CHANNEL_NORMS as NORMS
from ..ops import WEIGHTED, along, output_channel_axis, weight_layout, weight_rows
from .groups import Analysis
from .walk import node_names


def gate_ops(analysis: Analysis, loaded: LoadedModel):
    """Yield (node, name, output element ids per output channel) for every gate in the model."""
    graph = loaded.model.graph
    for node, name in zip(graph.node, node_names(graph)):
        if node.op_type not in NORMS + WEIGHTED or not node.output:
            continue
        out = node.output[0]
        ids = analysis.tensor_ids.get(out)
        if ids is None:
            continue
        axis = channel_axis(node, ids.ndim)
        positions = along(ids, axis, loaded.shapes[out][axis]) if out in loaded.shapes else None
        if positions is not None:
            yield node, name, positions


def channel_axis(node: onnx.NodeProto, rank: int) -> int:
    """The axis of a gate op's output that holds its channels."""
    return output_channel_axis(node.op_type, rank)


def prunable_groups_at(analysis: Analysis, positions: np.ndarray, prunable: set[int]):
    """Yield (group id, which positions are its, the group channel of every position) for each
    prunable group among a gate op's output positions."""
    groups = analysis.element_group[positions]
    channels = analysis.element_channel[positions]
    for group_id in np.unique(groups).tolist():
        if group_id in prunable:
            yield group_id, groups == group_id, channels


# Filter norms are computed this many values at a time: in float64 a whole 1 GB weight would take
# 2 GB, and its square 2 GB more.
NORM_CHUNK = 1 << 22


def row_norms(rows: np.ndarray) -> np.ndarray:
    """The L2 norm of every row in float64, as np.linalg.norm(rows, axis=1) (the same sums: each
    row is reduced whole), a block of rows at a time."""
    norms = np.empty(rows.shape[0], dtype=np.float64)
    step = max(1, NORM_CHUNK // max(rows.shape[1], 1))
    for begin in range(0, rows.shape[0], step):
        block = rows[begin:begin + step].astype(np.float64)
        norms[begin:begin + step] = np.sqrt(np.add.reduce(block * block, axis=1))
    return norms


def gate_magnitudes(analysis: Analysis, loaded: LoadedModel) -> dict[int, np.ndarray]:
    """Per group, per channel: max |gamma| over the group's norms; groups without one use the max
    L2 norm of the filters writing the channel (MorphNet's gamma and group-lasso criteria)."""
    view = loaded.view
    bn_mag = {g.id: np.full(g.width, -np.inf) for g in analysis.groups}
    filt_mag = {g.id: np.full(g.width, -np.inf) for g in analysis.groups}
    for node, _, positions in gate_ops(analysis, loaded):
        groups = analysis.element_group[positions]
        channels = analysis.element_channel[positions]
        if node.op_type in NORMS:
            scale = view.value(node.input[1])
            if scale is None:
                continue
            for g in np.unique(groups):
                sel = groups == g
                np.maximum.at(bn_mag[g], channels[sel], np.abs(scale.reshape(-1)[sel]))
        else:
            weight = view.value(node.input[1])
            if weight is None:
                continue
            norms = row_norms(weight_rows(weight_layout(node, {node.input[1]: weight}), weight))
            if len(norms) != len(positions):
                continue
            for g in np.unique(groups):
                sel = groups == g
                np.maximum.at(filt_mag[g], channels[sel], norms[sel])
    out = {}
    for group in analysis.groups:
        mag = bn_mag[group.id] if np.isfinite(bn_mag[group.id]).any() else filt_mag[group.id]
        out[group.id] = np.where(np.isfinite(mag), mag, 0.0)
    return out
