"""FiGS: MorphNet's probabilistic gating regularizer (morph-net's `logistic_sigmoid` regularizers).

Every prunable group gets one trainable logit per channel. In the training graph each channel is
multiplied by a relaxed Bernoulli sample of its gate (a concrete / hard-concrete style relaxation:
s = sigmoid((logit + log u - log(1 - u)) / T), u uniform noise fed every step), placed after the
ops that create the group's channels (after their BatchNormalization where they have one, so that
normalisation cannot undo the gate). The regularization vector is the gate's probability of being
on, p = sigmoid(logit), weighted by each channel's marginal cost exactly as gamma is: the expected
cost of the network. A channel is alive when p > 0.5. The gates live only in the training graph:
the written model is the user's graph with the dead channels removed (alive gates count as 1, as at
morph-net's inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..analysis.gates import channel_axis, gate_ops, prunable_groups_at
from ..analysis.groups import Analysis
from ..loading.model import LoadedModel
from ..ops import CHANNEL_NORMS as NORMS
from .regularizers import GroupRegularizer, Member

FIGS_THRESHOLD = 0.5  # on the probability of the gate being on
INITIAL_LOGIT = 3.0  # p = 0.95: every channel starts on
TEMPERATURE = 0.5
NOISE = "morphnet_figs_noise"


@dataclass
class GatePlacement:
    """Multiply tensor `tensor` along `axis` by the gates: position i takes the gate of channel
    `index[i]` of group `group_id` (index == width: a position of another group, left ungated)."""

    tensor: str
    axis: int
    rank: int
    group_id: int
    index: np.ndarray


def logit_name(group_id: int) -> str:
    return f"morphnet_figs_logits_{group_id}"


def figs_regularizers(analysis: Analysis, loaded: LoadedModel) -> tuple[list[GroupRegularizer], list[GatePlacement]]:
    """One gate member per prunable group with a place to gate it, and where the gates go."""
    prunable = {g.id for g in analysis.prunable_groups}
    by_group: dict[int, dict[bool, list[GatePlacement]]] = {}
    for node, _, positions in gate_ops(analysis, loaded):
        out = node.output[0]
        rank = len(loaded.shapes[out])
        for group_id, mine, channels in prunable_groups_at(analysis, positions, prunable):
            index = np.where(mine, channels, analysis.groups[group_id].width).astype(np.int64)
            placement = GatePlacement(out, channel_axis(node, rank), rank, group_id, index)
            by_group.setdefault(group_id, {}).setdefault(node.op_type in NORMS, []).append(placement)
    regs, placements = [], []
    for group in analysis.prunable_groups:
        kinds = by_group.get(group.id)
        if not kinds:
            continue
        placements.extend(kinds.get(True) or kinds[False])  # after the norms where there are some
        member = Member(logit_name(group.id), "figs", None, [np.arange(group.width)], np.ones(group.width, np.float32))
        regs.append(GroupRegularizer(group.id, group.width, [member]))
    return regs, placements


def insert_gates(model: onnx.ModelProto, regs: list[GroupRegularizer], placements: list[GatePlacement]) -> list[str]:
    """Add the logits (initializers), the noise input and the gating products to a training graph,
    in place; return the logits' names (to be trained)."""
    graph = model.graph
    width = sum(r.width for r in regs)
    offsets = np.concatenate([[0], np.cumsum([r.width for r in regs])]).astype(np.int64)
    offset_of = {r.group_id: int(o) for r, o in zip(regs, offsets[:-1])}
    width_of = {r.group_id: r.width for r in regs}
    graph.input.append(helper.make_tensor_value_info(NOISE, onnx.TensorProto.FLOAT, [width]))
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    logits = [const(logit_name(r.group_id), np.full(r.width, INITIAL_LOGIT, np.float32)) for r in regs]
    all_logits = "morphnet/figs/logits"
    nodes.append(helper.make_node("Concat", logits, [all_logits], axis=0) if len(logits) > 1
                 else helper.make_node("Identity", logits, [all_logits]))
    # s = sigmoid((logit + log u - log(1 - u)) / T), one sample per channel and step.
    log_u = "morphnet/figs/log_u"
    log_1mu = "morphnet/figs/log_1mu"
    one = const("morphnet/figs/one", np.array(1.0, np.float32))
    nodes += [helper.make_node("Log", [NOISE], [log_u]),
              helper.make_node("Sub", [one, NOISE], ["morphnet/figs/1mu"]),
              helper.make_node("Log", ["morphnet/figs/1mu"], [log_1mu]),
              helper.make_node("Add", [all_logits, log_u], ["morphnet/figs/a"]),
              helper.make_node("Sub", ["morphnet/figs/a", log_1mu], ["morphnet/figs/b"]),
              helper.make_node("Mul", ["morphnet/figs/b", const("morphnet/figs/inv_t", np.array(1 / TEMPERATURE,
                                                                                               np.float32))],
                               ["morphnet/figs/c"]),
              helper.make_node("Sigmoid", ["morphnet/figs/c"], ["morphnet/figs/sample"])]
    # An extra 1 at the end: positions of other groups index it and stay ungated.
    padded = "morphnet/figs/sample_padded"
    nodes.append(helper.make_node("Concat", ["morphnet/figs/sample", const("morphnet/figs/pad",
                                                                           np.ones(1, np.float32))], [padded], axis=0))
    renamed: dict[str, str] = {}
    for k, placement in enumerate(placements):
        source = renamed.get(placement.tensor, placement.tensor)
        index = np.where(placement.index < width_of[placement.group_id],
                         placement.index + offset_of[placement.group_id], width)
        shape = [1] * placement.rank
        shape[placement.axis] = len(index)
        gate = f"morphnet/figs/gate{k}"
        gated = f"{placement.tensor}__figs{k}"
        nodes += [helper.make_node("Gather", [padded, const(f"morphnet/figs/index{k}", index.astype(np.int64))],
                                   [f"{gate}_flat"], axis=0),
                  helper.make_node("Reshape", [f"{gate}_flat", const(f"morphnet/figs/shape{k}",
                                                                     np.array(shape, np.int64))], [gate]),
                  helper.make_node("Mul", [source, gate], [gated])]
        renamed[placement.tensor] = gated
    _rewire(graph, renamed, nodes)
    return logits


def _rewire(graph: onnx.GraphProto, renamed: dict[str, str], gate_nodes: list[onnx.NodeProto]) -> None:
    """Consumers of a gated tensor read its gated version (a prunable group never reaches a graph
    output, so no output is renamed); the graph is then put back in topological order."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    nodes = _toposort(list(graph.node) + gate_nodes)
    del graph.node[:]
    graph.node.extend(nodes)


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    produced = {o: k for k, n in enumerate(nodes) for o in n.output}
    order, state = [], {}

    def visit(k: int) -> None:
        stack = [(k, False)]
        while stack:
            index, done = stack.pop()
            if done:
                state[index] = 2
                order.append(nodes[index])
                continue
            if state.get(index):
                continue
            state[index] = 1
            stack.append((index, True))
            for name in nodes[index].input:
                j = produced.get(name)
                if j is not None and not state.get(j):
                    stack.append((j, False))

    for k in range(len(nodes)):
        visit(k)
    return order
