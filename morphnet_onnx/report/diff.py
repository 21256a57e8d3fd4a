"""`diff`: what changed between two models (or two structures of one model), op by op.

Ops are matched by name where both models name them alike (and the names agree with the graph),
then by position along the graph: outwards from the matched inputs, outputs and ops, an op that
reads (or writes) the tensors of matched ops and has the same type and attributes is the same op.
That matches the ops of a model pruned by any tool, even one that renamed every node. What stays
unmatched was removed or added; removed ops that touch each other form one branch, named by what it
left behind: a residual block collapsed to its skip, a Concat input dropped, a squeeze-excitation
gate turned into a constant scale.

Only ops that compute on the data count: nodes that build weights or constants from constants
alone (Constant, ConstantOfShape placeholders, a Reshape of a weight) are not layers.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import onnx

from ..cost.resources import parse_hardware
from ..errors import MorphNetError
from ..loading.model import LoadedModel, load
from ..loading.shapes import InputShapes
from ..surgery.pruning import prune
from ..surgery.structure import Structure
from .matching import Matcher, OpSide, OpsView
from .tables import branch_span, change_text, human, seconds_text

MERGES = {"Add": "residual", "Sum": "residual", "Sub": "residual", "Concat": "concat", "Mul": "gate", "Div": "gate"}
BRANCH_TEXT = {
    "residual": "residual branch: the block collapsed to its skip",
    "concat": "Concat input dropped (its tower is gone)",
    "gate": "gating branch (squeeze-excitation) turned into a constant scale",
    "bypassed": "bypassed: its input goes straight on (e.g. a norm folded into its conv)",
    "inserted": "inserted between two ops that were connected",
    "branch": "branch",
    "op": "op",
}
TOTALS = ("flops", "macs", "params", "param_bytes", "latency_s")
SIDE_TYPES = (str, os.PathLike, onnx.ModelProto, LoadedModel, dict, Structure)


@dataclass
class LayerChange:
    """One op of either model: matched (both sides), removed (before only) or added (after only)."""

    before: OpSide | None
    after: OpSide | None
    matched_by: str = ""  # "name" or "position"; "" for removed and added ops

    @property
    def op(self) -> str:
        return (self.before or self.after).op

    @property
    def op_type(self) -> str:
        return (self.before or self.after).op_type

    @property
    def status(self) -> str:
        """removed, added, narrower, wider, changed (same width, other costs: its inputs changed) or same."""
        if self.after is None:
            return "removed"
        if self.before is None:
            return "added"
        b, a = self.before, self.after
        if b.width is not None and a.width is not None and a.width != b.width:
            return "narrower" if a.width < b.width else "wider"
        if (b.flops, b.params) != (a.flops, a.params):
            return "changed"
        return "same"

    @property
    def is_compute(self) -> bool:
        """A layer with FLOPs (Conv, Gemm, MatMul) in either model: the rows of the table and the plot."""
        return any(side is not None and side.flops > 0 for side in (self.before, self.after))

    def to_dict(self) -> dict:
        doc = {"op": self.op, "op_type": self.op_type, "status": self.status, "matched_by": self.matched_by or None,
               "before": self.before.to_dict() if self.before else None,
               "after": self.after.to_dict() if self.after else None}
        return doc


@dataclass
class Branch:
    """Removed (or added) ops that touch each other, with the kept ops around them."""

    ops: list[str]
    kind: str  # residual, concat, gate, bypassed, inserted (see BRANCH_TEXT), branch (several ops), op (one op)
    entry: list[str]  # kept ops (or model inputs) it read from
    exit: list[str]  # kept ops it fed
    flops: float
    params: int

    @property
    def description(self) -> str:
        return BRANCH_TEXT[self.kind]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "description": self.description, "ops": self.ops, "from": self.entry,
                "into": self.exit, "flops": self.flops, "params": self.params}


@dataclass
class ModelDiff:
    """The diff of two models: every op side by side, removed and added branches, totals.

    `layers` holds every op that computes on the data, in graph order (added ops where they sit in
    the new model); `edges` are (i, j) pairs of `layers` indices where i feeds j in either model.
    """

    before: str
    after: str
    layers: list[LayerChange]
    removed: list[Branch]
    added: list[Branch]
    totals: dict[str, tuple[float, float]]  # flops, macs, params, param_bytes, latency_s: (before, after)
    op_counts: dict[str, tuple[int, int]]  # op type: (before, after)
    edges: list[tuple[int, int]] = field(default_factory=list)
    hardware: str = ""

    @property
    def compute_layers(self) -> list[LayerChange]:
        """The layers with FLOPs (all layers where neither model has any): the plot's bars."""
        rows = [layer for layer in self.layers if layer.is_compute]
        return rows or self.layers

    def counts(self) -> Counter:
        """How many ops have each status."""
        return Counter(layer.status for layer in self.layers)

    def to_dict(self) -> dict:
        def change(before: float, after: float) -> dict:
            pct = (after - before) / before * 100 if before else None
            return {"before": before, "after": after, "change_pct": pct}

        totals = {key: change(*self.totals[key]) for key in TOTALS}
        totals["ops"] = {op_type: {"before": b, "after": a} for op_type, (b, a) in sorted(self.op_counts.items())}
        totals["op_count"] = change(sum(b for b, _ in self.op_counts.values()), sum(a for _, a in self.op_counts.values()))
        matched = [layer for layer in self.layers if layer.matched_by]
        return {
            "before": self.before, "after": self.after, "hardware": self.hardware,
            "layers": [layer.to_dict() for layer in self.layers],
            "removed": [b.to_dict() for b in self.removed],
            "added": [b.to_dict() for b in self.added],
            "totals": totals,
            "matched": {"by_name": sum(1 for m in matched if m.matched_by == "name"),
                        "by_position": sum(1 for m in matched if m.matched_by == "position")},
        }


def _branches(view: OpsView, members: list[int], other: OpsView, partner: dict[int, int],
              tensor_map: dict[str, str], bypass: str) -> list[Branch]:
    """Connected pieces of `members` (ops only `view`'s model has), with what they read and fed;
    `partner` and `tensor_map` pair ops and tensors of `view` with those of `other`; a piece whose
    input goes straight to its consumers in `other` is of kind `bypass`."""
    graph = nx.Graph()
    graph.add_nodes_from(members)
    member_set = set(members)
    for i in members:
        for t in view.data_inputs[i]:
            p = view.producer.get(t)
            if p in member_set:
                graph.add_edge(p, i)
    pieces = sorted((sorted(c, key=view.position.get) for c in nx.connected_components(graph)),
                    key=lambda c: view.position[c[0]])
    branches = []
    for piece in pieces:
        inside = set(piece)
        produced = {o for i in piece for o in view.nodes[i].output if o}
        read = [t for i in piece for t in view.data_inputs[i] if view.producer.get(t) not in inside]
        entry = list(dict.fromkeys(view.names[view.producer[t]] if t in view.producer else t for t in read))
        exits = [c for t in produced for c in view.consumers.get(t, []) if c not in inside]
        exits = sorted(dict.fromkeys(exits), key=view.position.get)
        kind = "op" if len(piece) == 1 else "branch"
        if _bypassed(view, exits, read, other, partner, tensor_map):
            kind = bypass
        for c in exits if kind != bypass else ():
            merge = MERGES.get(view.nodes[c].op_type)
            # A merge op that also reads something outside the branch: the branch was one way among others.
            if merge and any(t not in produced for t in view.data_inputs[c]):
                kind = merge
                break
        branches.append(Branch(ops=[view.names[i] for i in piece], kind=kind, entry=entry,
                               exit=[view.names[c] for c in exits],
                               flops=sum(view.side[i].flops for i in piece),
                               params=sum(view.side[i].params for i in piece)))
    return branches


def _bypassed(view: OpsView, exits: list[int], read: list[str], other: OpsView, partner: dict[int, int],
              tensor_map: dict[str, str]) -> bool:
    """Whether the piece's input now goes straight to an op it fed (a BatchNormalization folded into
    its conv, an Identity dropped): that op reads the piece's input more often in the other model.
    A residual Add keeps reading its skip once, so a removed residual branch is not a bypass."""
    entry = set(read)
    mapped = {tensor_map[t] for t in entry if t in tensor_map}
    for c in exits:
        if c in partner:
            here = sum(t in entry for t in view.nodes[c].input)
            there = sum(t in mapped for t in other.nodes[partner[c]].input)
            if there > here:
                return True
    return False


def diff_loaded(before: LoadedModel, after: LoadedModel, hardware: str | None = None,
                cost_batch_size: int = 1) -> ModelDiff:
    """The diff of two loaded models (see `diff`)."""
    hw = parse_hardware(hardware, cost_batch_size)
    b, a = OpsView(before, hw), OpsView(after, hw)
    matcher = Matcher(b, a)
    matcher.run()
    pairs, back = matcher.pairs, matcher.back
    # Rows in the old model's order; added ops sit after the matched op that precedes them.
    keyed: list[tuple[tuple[int, int, int], str, int]] = [((b.position[i], 0, 0), "b", i) for i in b.layers]
    last, extra = -1, 0
    for j in a.layers:
        if j in back:
            last = b.position[back[j]]
        else:
            extra += 1
            keyed.append(((last, 1, extra), "a", j))
    keyed.sort()
    layers, row_b, row_a = [], {}, {}
    for row, (_, side, index) in enumerate(keyed):
        if side == "b":
            j = pairs.get(index)
            layers.append(LayerChange(b.side[index], a.side[j] if j is not None else None, matcher.how.get(index, "")))
            row_b[index] = row
            if j is not None:
                row_a[j] = row
        else:
            layers.append(LayerChange(None, a.side[index]))
            row_a[index] = row
    edges = set()
    for view, rows in ((b, row_b), (a, row_a)):
        for index in view.layers:
            for t in view.data_inputs[index]:
                if t in view.producer:
                    edges.add((rows[view.producer[t]], rows[index]))
    removed = _branches(b, [i for i in b.layers if i not in pairs], a, pairs, matcher.tensors, "bypassed")
    added = _branches(a, [j for j in a.layers if j not in back], b, back, matcher.tensors_back, "inserted")
    totals = {key: (getattr(b.costs, key), getattr(a.costs, key)) for key in TOTALS}
    counts_b, counts_a = b.op_counts(), a.op_counts()
    op_counts = {t: (counts_b.get(t, 0), counts_a.get(t, 0)) for t in sorted(set(counts_b) | set(counts_a))}
    return ModelDiff(before=before.name, after=after.name, layers=layers, removed=removed, added=added,
                     totals=totals, op_counts=op_counts, edges=sorted(edges), hardware=b.costs.hardware.name)


def _is_structure(side) -> bool:
    if isinstance(side, (dict, Structure)):
        return True
    return isinstance(side, (str, os.PathLike)) and Path(side).suffix.lower() == ".json"


def _model_of_structure(path: Path) -> Path | None:
    """The model a structure file names (`model`), as given or beside the file; None if neither exists."""
    try:
        named = json.loads(path.read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None  # prune reports what is wrong with the file
    if not isinstance(named, str) or not named:
        return None
    for candidate in (Path(named), path.parent / named):
        if candidate.is_file():
            return candidate
    return None


def _load_side(side, model, input_shapes: InputShapes | None) -> tuple[LoadedModel, str]:
    """A side of the diff as a loaded model, and how to name it."""
    for value in (side, model):
        if value is not None and not isinstance(value, SIDE_TYPES):
            raise MorphNetError(f"diff: expected an .onnx or structure .json path, a ModelProto, a LoadedModel, "
                                f"a structure dict or a Structure, got {type(value).__name__}")
    if isinstance(side, LoadedModel):
        return side, side.name
    if not _is_structure(side):
        loaded = load(side, input_shapes)
        return loaded, loaded.name
    if model is None and isinstance(side, (str, os.PathLike)):
        model = _model_of_structure(Path(side))
    shown = str(side) if isinstance(side, (str, os.PathLike)) else "the structure"
    if model is None:
        raise MorphNetError(f"{shown}: a structure needs the model it was made for: give --model MODEL.onnx")
    if isinstance(model, LoadedModel):
        model_name, model = model.name, model.model
    else:
        model_name = str(model) if isinstance(model, (str, os.PathLike)) else (model.graph.name or "<model>")
    result = prune(model, side, input_shapes=input_shapes)
    return load(result.model, input_shapes), f"{shown} applied to {model_name}"


def diff(before, after, model=None, input_shapes: InputShapes | None = None, hardware: str | None = None,
         cost_batch_size: int = 1) -> ModelDiff:
    """What changed from `before` to `after`: every op's width and FLOPs, removed and added branches, totals.

    >>> d = diff("resnet50.onnx", "resnet50_small.onnx")              # doctest: +SKIP
    >>> d.totals["flops"], [b.kind for b in d.removed]                 # doctest: +SKIP
    ((8.18e9, 4.02e9), ['residual', 'residual'])
    >>> d.to_dict()["totals"]["params"]["change_pct"]                  # doctest: +SKIP
    -47.5

    Each side is an .onnx path, a ModelProto or a LoadedModel, or a structure (a structure .json path,
    its dict, or a `Structure`): a structure is applied to `model`, which defaults to the side that is
    a model (`diff("m.onnx", "s.json")` previews what prune would write) or to the model the
    structure file names. `input_shapes` fixes symbolic dims of both models; `hardware` and
    `cost_batch_size` set the latency roofline (see `inspect`).
    """
    parse_hardware(hardware, cost_batch_size)  # bad options fail before anything loads
    sides = (before, after)
    if model is None:
        models = [s for s in sides if not _is_structure(s)]
        if len(models) == 1 and any(_is_structure(s) for s in sides):
            model = models[0]
    (loaded_before, name_before), (loaded_after, name_after) = (_load_side(s, model, input_shapes) for s in sides)
    result = diff_loaded(loaded_before, loaded_after, hardware, cost_batch_size)
    result.before, result.after = name_before, name_after
    return result


def short_summary(d: ModelDiff, max_branches: int = 3, latency: bool = True) -> list[str]:
    """A few lines for the end of prune/shrink/expand/cycle: totals, layer changes, removed branches.
    `latency=False` leaves out the roofline latency (a command that measured latency reports that instead).

    >>> for line in short_summary(diff("m.onnx", "small.onnx")): print(line)   # doctest: +SKIP
    diff: FLOPs 36.5M -> 19.9M (-45.4%), params 76.3K -> 40.5K (-46.9%), latency (V100) 6.62 us -> 4.1 us (-38.1%)
    diff: 9 of 13 layers narrower, 0 wider, 1 branch removed (5 ops), 0 ops added
    diff: removed conv2 .. bn3 (5 ops, from conv1.relu, into add4): residual branch: the block collapsed to its skip
    """
    t = d.totals
    totals = f"diff: FLOPs {change_text(*t['flops'], human)}, params {change_text(*t['params'], human)}"
    if latency:  # a roofline, so it names its hardware (like `diff`'s table)
        totals += f", latency ({d.hardware}) {change_text(*t['latency_s'], seconds_text)}"
    lines = [totals]
    rows = d.compute_layers
    status = Counter(layer.status for layer in rows)
    branches = [branch for branch in d.removed if branch.kind != "bypassed"]
    bypassed = sum(len(branch.ops) for branch in d.removed if branch.kind == "bypassed")
    parts = [f"{status['narrower']} of {len(rows)} layers narrower", f"{status['wider']} wider",
             f"{len(branches)} branch{'es' if len(branches) != 1 else ''} removed "
             f"({sum(len(branch.ops) for branch in branches)} ops)"]
    if bypassed:
        parts.append(f"{bypassed} ops bypassed")
    parts.append(f"{sum(len(branch.ops) for branch in d.added)} ops added")
    lines.append("diff: " + ", ".join(parts))
    for branch in branches[:max_branches]:
        lines.append(f"diff: removed {branch_span(branch)}: {branch.description}")
    if len(branches) > max_branches:
        lines.append(f"diff: ... and {len(branches) - max_branches} more removed branches (morphnet-onnx diff lists them)")
    return lines
