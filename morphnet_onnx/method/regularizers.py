"""MorphNet's resource-weighted regularizers, as ONNX subgraphs over the model's parameters.

Each prunable group gets a regularization vector v (one entry per channel) that combines its members'
vectors (`grouping`, morph-net's grouping regularizers): `max`, the elementwise max (MorphNet's
default), or `l2`, sqrt(sum of squares). Under `max` only the largest member of a channel feels the
regularizer, so a residual stream written by several convolutions stays alive while any one of them
does; `l2` pushes every member at once. The members:
- `gamma`: |scale| of every BatchNormalization/InstanceNormalization over the group's channels;
- `group-lasso`: the RMS of every output filter writing the group's channels, sqrt(mean(w^2)) as in
  morph-net's group-lasso regularizer (so one threshold means the same for every fan-in), for
  models exported with BN folded into Conv.

The loss adds sum_c w_c v_c, where w (a graph input fed every step) is lambda times MorphNet's
per-channel cost: for each op, C x (alive channels on the other side), so that
R_op = C (a_in r_out + a_out r_in) with the alive counts a held constant (no gradient through them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..analysis.gates import gate_ops, prunable_groups_at
from ..analysis.groups import Analysis
from ..loading.model import LoadedModel
from ..ops import CHANNEL_NORMS as NORMS
from ..ops import WeightLayout, weight_input, weight_layout, weight_rows

REGULARIZERS = ("auto", "gamma", "group-lasso", "figs")
GROUPINGS = ("max", "l2")
EPS = 1e-12


@dataclass
class Member:
    """One parameter whose per-channel magnitude gates a group's channels."""

    param: str
    kind: str  # "gamma", "rows" (filter RMS) or "figs" (a gate's logits, figs.py)
    layout: WeightLayout | None  # where a "rows" member's output channels are in its weight
    picks: list[np.ndarray]  # each: position in the member vector for every group channel
    mask: np.ndarray  # 1 where the member covers the channel
    # What adds a constant to the gated channels (the norm's shift, the conv's or Gemm's bias): held
    # at zero with the gate (progressive.py), so a held channel outputs exactly zero and its cut is exact.
    shift: str | None = None


@dataclass
class GroupRegularizer:
    group_id: int
    width: int
    members: list[Member] = field(default_factory=list)
    grouping: str = "max"  # how the members' vectors combine (GROUPINGS)


def group_regularizers(analysis: Analysis, loaded: LoadedModel, kind: str = "auto",
                       grouping: str = "max") -> list[GroupRegularizer]:
    """The gates of every prunable group, by the chosen (or automatic) regularizer, combined by `grouping`."""
    by_group: dict[int, dict[str, list[Member]]] = {}
    inits = {t.name for t in loaded.model.graph.initializer} | {
        n.output[0] for n in loaded.model.graph.node if n.op_type == "Constant"}
    prunable = {g.id for g in analysis.prunable_groups}
    for node, _, positions in gate_ops(analysis, loaded):
        member_kind = "gamma" if node.op_type in NORMS else "rows"
        param = node.input[1] if member_kind == "gamma" else weight_input(node)
        if len(node.input) < 2 or param not in inits:
            continue
        if member_kind == "rows" and node.op_type == "ConvTranspose":
            continue
        for group_id, mine, channels in prunable_groups_at(analysis, positions, prunable):
            width = analysis.groups[group_id].width
            where = np.nonzero(mine)[0]
            per_channel: list[list[int]] = [[] for _ in range(width)]
            for position in where.tolist():
                per_channel[channels[position]].append(position)
            repeats = max(len(p) for p in per_channel)
            picks = [np.array([p[min(k, len(p) - 1)] if p else 0 for p in per_channel], dtype=np.int64)
                     for k in range(repeats)]
            mask = np.array([1.0 if p else 0.0 for p in per_channel], dtype=np.float32)
            layout = weight_layout(node, inits) if member_kind == "rows" else None
            shift = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
            member = Member(param, member_kind, layout, picks, mask, shift)
            by_group.setdefault(group_id, {}).setdefault(member_kind, []).append(member)
    result = []
    for group in analysis.prunable_groups:
        kinds = by_group.get(group.id, {})
        if kind == "gamma" or (kind == "auto" and "gamma" in kinds):
            members = kinds.get("gamma", [])
        else:
            members = kinds.get("rows", [])
        if members:
            result.append(GroupRegularizer(group.id, group.width, members, grouping))
    return result


def member_vector(member: Member, value: np.ndarray) -> np.ndarray:
    if member.kind == "gamma":
        return np.abs(value.reshape(-1))
    if member.kind == "figs":  # the probability that the gate is on (figs.py)
        return 1.0 / (1.0 + np.exp(-value.reshape(-1).astype(np.float64)))
    return np.sqrt(np.mean(weight_rows(member.layout, value).astype(np.float64) ** 2, axis=1) + EPS)


def group_vectors(regs: list[GroupRegularizer], params: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """The regularization vectors in numpy (what the ONNX subgraph computes), for decisions.

    A channel no member covers (a Concat of a BN branch and a branch without BN, under gamma) has no
    gate: it is +inf here, alive whatever happens, never "dead by absence"."""
    out = {}
    for reg in regs:
        covered = np.zeros(reg.width, dtype=bool)
        parts = []
        for member in reg.members:
            base = member_vector(member, params[member.param])
            covered |= member.mask > 0
            parts.extend(base[pick] * member.mask for pick in member.picks)
        out[reg.group_id] = np.where(covered, combine(parts, reg.grouping), np.inf)
    return out


def combine(parts: list[np.ndarray], grouping: str) -> np.ndarray:
    """One group's vector from its members' (add_regularizer and the torch backend compute the same)."""
    if len(parts) == 1:
        return parts[0].astype(np.float64)
    if grouping == "l2":
        return np.sqrt(sum(part.astype(np.float64) ** 2 for part in parts) + EPS)
    return np.maximum.reduce([part.astype(np.float64) for part in parts])


def add_regularizer(graph: onnx.GraphProto, regs: list[GroupRegularizer], prefix: str = "morphnet") -> str:
    """Append the nodes computing the concatenated regularization vectors; return its name."""
    counter = [0]

    def name(base: str) -> str:
        counter[0] += 1
        return f"{prefix}/{base}_{counter[0]}"

    def node(op: str, inputs: list[str], **attrs) -> str:
        out = name(op.lower())
        graph.node.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(value: np.ndarray) -> str:
        tensor_name = name("const")
        graph.initializer.append(numpy_helper.from_array(value, tensor_name))
        return tensor_name

    vectors = []
    base_cache: dict[str, str] = {}
    for reg in regs:
        parts = []
        for member in reg.members:
            base = base_cache.get(member.param)
            if base is None:
                if member.kind == "gamma":
                    base = node("Abs", [member.param])
                elif member.kind == "figs":
                    base = node("Sigmoid", [member.param])
                else:
                    squared = node("Mul", [member.param, member.param])
                    rank = _rank(graph, member.param)
                    keep_axis = member.layout.out_axis % rank
                    axes = np.array([a for a in range(rank) if a != keep_axis], dtype=np.int64)
                    summed = node("ReduceSum", [squared, const(axes)], keepdims=0)
                    fan_in = int(np.prod([_dims(graph, member.param)[a] for a in axes]))
                    mean = node("Mul", [summed, const(np.array(1.0 / max(fan_in, 1), dtype=np.float32))])
                    base = node("Sqrt", [node("Add", [mean, const(np.array(EPS, dtype=np.float32))])])
                base_cache[member.param] = base
            for pick in member.picks:
                picked = node("Gather", [base, const(pick)], axis=0)
                if not member.mask.all():
                    picked = node("Mul", [picked, const(member.mask)])
                parts.append(picked)
        if len(parts) == 1:
            vectors.append(parts[0])
        elif reg.grouping == "l2":  # a chain of Adds: onnxruntime-training has no gradient for Sum
            total = const(np.array(EPS, dtype=np.float32))
            for part in parts:
                total = node("Add", [total, node("Mul", [part, part])])
            vectors.append(node("Sqrt", [total]))
        else:
            vectors.append(node("Max", parts))
    return vectors[0] if len(vectors) == 1 else node("Concat", vectors, axis=0)


def _rank(graph: onnx.GraphProto, param: str) -> int:
    return len(_dims(graph, param))


def _dims(graph: onnx.GraphProto, param: str) -> list[int]:
    for tensor in graph.initializer:
        if tensor.name == param:
            return list(tensor.dims)
    raise KeyError(param)


def channel_weights(regs: list[GroupRegularizer], marginal: dict[int, np.ndarray]) -> np.ndarray:
    """The per-channel cost weights (each channel its own marginal cost), laid out like the
    concatenated regularization vector."""
    return np.concatenate([np.asarray(marginal[reg.group_id], dtype=np.float32) for reg in regs]) \
        if regs else np.zeros(0, dtype=np.float32)
