"""Pairing the ops of two models for `diff` (diff.py): one model's ops as layers with their widths and
parameters, then the ops of the two matched by name where the names agree with the graph, else by
position: outwards from matched inputs, outputs and ops, an op that reads (or writes) the tensors of
matched ops and has the same type and attributes is the same op."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import onnx

from ..analysis.walk import analyze, node_names
from ..cost.resources import FLOAT_TYPES, Hardware, compute_costs
from ..graph_utils import graph_input_names
from ..loading.model import LoadedModel
from ..ops import BUFFER_INPUTS, CHANNELS_FIRST, CHANNELS_LAST

# Attributes that tell two ops of one type apart. Not `group`: pruning changes it (a depthwise conv cut
# to one channel has group 1).
SIGNATURE_ATTRIBUTES = ("kernel_shape", "strides", "dilations", "axis", "axes", "perm", "transA", "transB", "mode")
# Ops of one signature competing for a pair are told apart by their neighbourhoods (see Matcher._align).
CONTEXT_DEPTH, CONTEXT_OPS, MAX_CANDIDATE_PAIRS = 6, 32, 4096


@dataclass
class OpSide:
    """One op as it is in one of the two models."""

    op: str
    op_type: str
    width: int | None  # output channels (axis 1; the last axis after Gemm/MatMul); None: not a float tensor of static shape
    flops: float  # MorphNet's convention (2 x MACs of Conv/Gemm/MatMul, batch 1)
    params: int  # float weight elements the op reads (running statistics excluded)
    latency_s: float  # roofline estimate

    def to_dict(self) -> dict:
        return {"op": self.op, "width": self.width, "flops": self.flops, "params": self.params,
                "latency_s": self.latency_s}



class OpsView:
    """The ops of one model that compute on the data, their wiring, widths and costs."""

    def __init__(self, loaded: LoadedModel, hardware: Hardware) -> None:
        graph = loaded.model.graph
        self.loaded = loaded
        self.nodes = list(graph.node)
        self.names = node_names(graph)
        data = set(graph_input_names(loaded.model))
        self.layers: list[int] = []
        self.data_inputs: dict[int, list[str]] = {}
        for index, node in enumerate(self.nodes):
            inputs = [t for t in node.input if t and t in data]
            if inputs:
                self.layers.append(index)
                self.data_inputs[index] = inputs
                data.update(o for o in node.output if o)
        self.position = {index: k for k, index in enumerate(self.layers)}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for index in self.layers:
            for t in self.nodes[index].output:
                if t:
                    self.producer[t] = index
            for t in dict.fromkeys(self.data_inputs[index]):
                self.consumers.setdefault(t, []).append(index)
        self.inputs = graph_input_names(loaded.model)
        self.outputs = [o.name for o in graph.output]
        # Real names only: invented `{op_type}_{index}` names shift when ops go and would pair the wrong ops.
        counts = Counter(n.name for n in self.nodes)
        self.by_name = {node.name: i for i, node in enumerate(self.nodes)
                        if node.name and counts[node.name] == 1 and i in self.position}
        self.signature = {i: _signature(self.nodes[i]) for i in self.layers}
        self._contexts: dict[int, Counter] = {}
        costs = compute_costs(analyze(loaded), loaded, hardware)
        self.costs = costs
        flops: Counter = Counter()
        latency: Counter = Counter()
        for op_cost in costs.ops:
            flops[op_cost.op] += op_cost.flops
            latency[op_cost.op] += op_cost.latency_s
        widths = _widths(self.nodes, self.layers, self.data_inputs, loaded)
        self.side = {i: OpSide(self.names[i], self.nodes[i].op_type, widths[i], float(flops[self.names[i]]),
                               _op_params(self.nodes[i], loaded, data), float(latency[self.names[i]]))
                     for i in self.layers}

    def op_counts(self) -> Counter:
        return Counter(self.nodes[i].op_type for i in self.layers)

    def context(self, index: int) -> Counter:
        """The signatures around an op, by signed distance: consumers' at +1, +2, ..., producers' at -1, ...
        (up to CONTEXT_DEPTH steps, CONTEXT_OPS ops each way)."""
        if index not in self._contexts:
            found: Counter = Counter()
            for direction, step in ((1, self._next_ops), (-1, self._previous_ops)):
                seen, frontier = {index}, [index]
                for depth in range(1, CONTEXT_DEPTH + 1):
                    frontier = [k for op in frontier for k in step(op) if k not in seen][:CONTEXT_OPS]
                    seen.update(frontier)
                    found.update((direction * depth, self.signature[k]) for k in frontier)
            self._contexts[index] = found
        return self._contexts[index]

    def _next_ops(self, index: int) -> list[int]:
        return [c for t in self.nodes[index].output if t for c in self.consumers.get(t, [])]

    def _previous_ops(self, index: int) -> list[int]:
        return [self.producer[t] for t in self.data_inputs[index] if t in self.producer]


def _likeness(first: Counter, second: Counter) -> int:
    """How many (distance, signature) entries two neighbourhoods share."""
    return sum((first & second).values())


def _signature(node: onnx.NodeProto) -> str:
    parts = [node.domain, node.op_type]
    for attr in sorted(node.attribute, key=lambda a: a.name):
        if attr.name in SIGNATURE_ATTRIBUTES:
            parts.append(f"{attr.name}={onnx.helper.get_attribute_value(attr)}")
    return " ".join(parts)


def _widths(nodes: list[onnx.NodeProto], layers: list[int], data_inputs: dict[int, list[str]],
            loaded: LoadedModel) -> dict[int, int | None]:
    """Output channels of every op: follows where the channel axis is (axis 1 after a Conv, the last
    axis after a Gemm/MatMul, moved by Transpose, kept by element-wise ops)."""
    axis_of: dict[str, int] = {}
    widths: dict[int, int | None] = {}
    for index in layers:
        node = nodes[index]
        out = node.output[0] if node.output else ""
        shape = loaded.shapes.get(out)
        if not shape or loaded.dtypes.get(out) not in FLOAT_TYPES:
            widths[index] = None
            continue
        rank = len(shape)
        first = node.input[0] if node.input else ""
        if node.op_type in CHANNELS_LAST:
            axis = rank - 1
        elif node.op_type in CHANNELS_FIRST:
            axis = 1 if rank > 1 else 0
        elif node.op_type == "Transpose" and first in axis_of:  # output axis k is input axis perm[k]
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(reversed(range(rank))))
            axis = perm.index(axis_of[first]) if axis_of[first] in perm else min(1, rank - 1)
        else:
            # Element-wise and other ops keep the channel axis of the data they read, rank allowing.
            known = [t for t in data_inputs[index] if t in axis_of and len(loaded.shapes.get(t, ())) == rank]
            axis = axis_of[known[0]] if known else min(1, rank - 1)
        axis_of[out] = axis
        widths[index] = int(shape[axis]) if shape[axis] > 0 else None
    return widths


def _op_params(node: onnx.NodeProto, loaded: LoadedModel, data: set[str]) -> int:
    """Float weight elements the op reads: its inputs of more than one element that are not `data`."""
    buffers = {node.input[i] for i in BUFFER_INPUTS.get(node.op_type, ()) if i < len(node.input)}
    total = 0
    for name in dict.fromkeys(node.input):
        shape = loaded.shapes.get(name)
        if (not name or name in data or name in buffers or shape is None or -1 in shape
                or loaded.dtypes.get(name) not in FLOAT_TYPES):
            continue
        count = 1
        for d in shape:
            count *= d
        total += count if count > 1 else 0
    return total


class Matcher:
    """Pairs the ops of two views: names first, then outwards along the graph (see the module docstring).

    A pair is *sure* when the walk that found it never had to choose between ops of one signature
    (two identical parallel convs, one of them removed, are told apart by order only: not sure).
    """

    def __init__(self, b: OpsView, a: OpsView) -> None:
        self.b, self.a = b, a
        self.pairs: dict[int, int] = {}
        self.back: dict[int, int] = {}
        self.how: dict[int, str] = {}
        self.sure: dict[int, bool] = {}
        self.tensors: dict[str, str] = {}
        self.tensors_back: dict[str, str] = {}
        self.queue: deque[tuple[str, object, object, bool]] = deque()

    def run(self, names: bool = True) -> None:
        if names:
            for i, j in self._name_pairs():
                self._link(i, j, "name", True)
        for tb, ta in _pair_names(self.b.inputs, self.a.inputs):
            self._link_tensor(tb, ta)
            self.queue.append(("tensor", tb, ta, True))
        outputs = _pair_names(self.b.outputs, self.a.outputs)
        while True:
            self._drain()
            # Outputs anchor the walk backwards: ops after a changed stretch are found from the end.
            linked = False
            for tb, ta in outputs:
                i, j = self.b.producer.get(tb), self.a.producer.get(ta)
                if i is not None and j is not None and i not in self.pairs and j not in self.back \
                        and self.b.signature[i] == self.a.signature[j]:
                    self._link(i, j, "position", True)
                    linked = True
            if not linked:
                break

    def _name_pairs(self) -> list[tuple[int, int]]:
        """Ops of one name and type, unless the wiring alone surely pairs either with another op:
        another tool may have reused names for other ops."""
        b, a = self.b, self.a
        structural = Matcher(b, a)
        structural.run(names=False)
        pairs = []
        for name, i in b.by_name.items():
            j = a.by_name.get(name)
            if j is None or b.nodes[i].op_type != a.nodes[j].op_type:
                continue
            other_j, other_i = structural.pairs.get(i, j), structural.back.get(j, i)
            if (other_j != j and structural.sure[i]) or (other_i != i and structural.sure[other_i]):
                continue
            pairs.append((i, j))
        return pairs

    def _link(self, i: int, j: int, how: str, sure: bool) -> None:
        self.pairs[i], self.back[j], self.how[i], self.sure[i] = j, i, how, sure
        for tb, ta in zip(self.b.nodes[i].output, self.a.nodes[j].output):
            if tb and ta:
                self._link_tensor(tb, ta)
        self.queue.append(("node", i, j, sure))

    def _link_tensor(self, tb: str, ta: str) -> None:
        self.tensors[tb], self.tensors_back[ta] = ta, tb

    def _drain(self) -> None:
        while self.queue:
            kind, x, y, sure = self.queue.popleft()
            if kind == "tensor":
                self._align(self.b.consumers.get(x, []), self.a.consumers.get(y, []), sure)
                continue
            for tb, ta in zip(self.b.nodes[x].output, self.a.nodes[y].output):
                if tb and ta:
                    self._align(self.b.consumers.get(tb, []), self.a.consumers.get(ta, []), sure)
            producers_b = [self.b.producer[t] for t in self.b.data_inputs[x] if t in self.b.producer]
            producers_a = [self.a.producer[t] for t in self.a.data_inputs.get(y, []) if t in self.a.producer]
            self._align(list(dict.fromkeys(producers_b)), list(dict.fromkeys(producers_a)), sure)

    def _align(self, before: list[int], after: list[int], sure: bool) -> None:
        """Pair unmatched ops of two ordered lists that have the same signature. Where several share
        one (a residual block's first conv and its downsample conv both read the block's input),
        the ops whose neighbourhoods look most alike pair first, then the list order decides."""
        before = [i for i in before if i not in self.pairs]
        after = [j for j in after if j not in self.back]
        groups_b: dict[str, list[int]] = {}
        groups_a: dict[str, list[int]] = {}
        for i in before:
            groups_b.setdefault(self.b.signature[i], []).append(i)
        for j in after:
            groups_a.setdefault(self.a.signature[j], []).append(j)
        for signature, ops_b in groups_b.items():
            ops_a = groups_a.get(signature, [])
            if len(ops_b) == 1 and len(ops_a) == 1:
                candidates, alone = [(ops_b[0], ops_a[0])], True
            elif len(ops_b) * len(ops_a) <= MAX_CANDIDATE_PAIRS:
                ranked = [(-_likeness(self.b.context(i), self.a.context(j)), abs(rb - ra), rb, i, j)
                          for rb, i in enumerate(ops_b) for ra, j in enumerate(ops_a)]
                candidates, alone = [(i, j) for *_, i, j in sorted(ranked)], False
            else:
                candidates, alone = list(zip(ops_b, ops_a)), False
            for i, j in candidates:
                if i not in self.pairs and j not in self.back and self._consistent(i, j):
                    self._link(i, j, "position", sure and alone)

    def _consistent(self, i: int, j: int) -> bool:
        """The op pair reads what the pairs of its producers write, both ways."""
        inputs_a, inputs_b = set(self.a.nodes[j].input), set(self.b.nodes[i].input)
        return (all(self.tensors[t] in inputs_a for t in self.b.data_inputs[i] if t in self.tensors)
                and all(self.tensors_back[t] in inputs_b for t in self.a.data_inputs[j] if t in self.tensors_back))


def _pair_names(before: list[str], after: list[str]) -> list[tuple[str, str]]:
    """Graph inputs or outputs: by name when both models use the same names, else by position."""
    if set(before) == set(after):
        return [(name, name) for name in before]
    return list(zip(before, after))
