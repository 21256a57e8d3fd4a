"""Channel groups: union-find over channel elements, and the result users get (`Analysis`).

Every source op (a Conv, Gemm or MatMul with a weight initializer) creates one *element* per output
channel. Each tensor that carries channels is described by an `ids` array: the element id of every
channel position, shaped like the tensor with size 1 on the axes that carry no channels (so an
NCHW activation has ids of shape [1, C, 1, 1], a flattened one [1, C*H*W] with each id repeated H*W
times). Ops that force two positions to be kept or removed together (a residual Add, a depthwise
conv) union their elements. After the pass:

- a *channel* is a union-find class of elements: the unit that is kept or removed;
- a *group* is a connected set of sources (sources whose elements were tied); its width is its
  number of channels, and its regularizer vector has one entry per channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np


@dataclass
class Source:
    """One op that creates channels: the op, the tensor it writes and how many channels."""

    op: str
    op_type: str
    tensor: str
    first: int  # first element id
    count: int


@dataclass
class CostedOp:
    """An op with a bilinear cost: cost = coeff x (input channels alive) x (output channels alive).

    `in_ids`/`out_ids` list the element of every contracted input position and every output
    channel position (a flattened feature repeats its channel's element H*W times); `None` means
    that side cannot change and `in_fixed`/`out_fixed` give its count.
    """

    op: str
    op_type: str
    flops_coeff: float  # FLOPs = flops_coeff x n_in x n_out (MorphNet: 2 x spatial x kernel, batch 1)
    size_coeff: float  # weight elements = size_coeff x n_in x n_out (MorphNet: kernel spatial size)
    in_ids: np.ndarray | None
    out_ids: np.ndarray | None
    in_fixed: int = 0
    out_fixed: int = 0
    # Bytes moved at full width other than the weights, split so that they scale with the channels.
    in_act_per_channel: float = 0.0  # input activation elements per input channel
    out_act_per_channel: float = 0.0
    dtype_bytes: int = 4
    weight_bytes_extra: float = 0.0  # biases etc. (small, kept fixed)

    def counts(self, alive: np.ndarray | None = None) -> tuple[float, float]:
        """Input and output channel counts, at full width or with only `alive` elements kept (a bool
        per element), or with every element repeated `alive[e]` times (a count per element: widths
        after expansion)."""
        return self._count(self.in_ids, self.in_fixed, alive), self._count(self.out_ids, self.out_fixed, alive)

    @staticmethod
    def _count(ids: np.ndarray | None, fixed: int, alive: np.ndarray | None) -> float:
        if ids is None:
            return float(fixed)
        return float(len(ids)) if alive is None else float(alive[ids].sum())


class UnionFind:
    """Union-find over integers that grows as elements are created (path halving, union by size)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []

    def add(self, count: int) -> int:
        first = len(self.parent)
        self.parent.extend(range(first, first + count))
        self.size.extend([1] * count)
        return first

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra

    def roots(self) -> np.ndarray:
        return np.fromiter((self.find(i) for i in range(len(self.parent))), dtype=np.int64, count=len(self.parent))


@dataclass
class Group:
    """A set of channels that MorphNet decides on together (one regularizer vector)."""

    id: int
    width: int
    sources: list[str]  # ops that create these channels
    ops: list[str]  # every op that reads or writes them
    prunable: bool
    reasons: list[str] = field(default_factory=list)  # why not prunable


@dataclass
class Analysis:
    """The channel-dependency analysis of one model. `graph` is the networkx view of it."""

    name: str
    groups: list[Group]
    sources: list[Source]
    costed: list[CostedOp]
    tensor_ids: dict[str, np.ndarray]
    element_channel: np.ndarray  # element id -> channel index within its group
    element_group: np.ndarray  # element id -> group id
    notes: list[str] = field(default_factory=list)  # ops not understood etc.
    cautions: list[str] = field(default_factory=list)  # what prunes exactly only under a condition

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def tensor_channels(self, tensor: str) -> np.ndarray | None:
        """(group, channel) of every channel position of a tensor, shaped like its ids; None if none."""
        ids = self.tensor_ids.get(tensor)
        if ids is None:
            return None
        return np.stack([self.element_group[ids], self.element_channel[ids]], axis=-1)

    @property
    def graph(self) -> nx.Graph:
        """Bipartite networkx graph: group nodes ("g<id>") linked to the op nodes that use them."""
        graph = nx.Graph()
        for group in self.groups:
            node = f"g{group.id}"
            graph.add_node(node, kind="group", width=group.width, prunable=group.prunable,
                           reasons=list(group.reasons), sources=list(group.sources))
            for op in group.ops:
                graph.add_node(op, kind="op")
                graph.add_edge(node, op, role="source" if op in group.sources else "member")
        return graph
