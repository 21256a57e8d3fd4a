"""The channel-dependency analysis: which channels must be kept or removed together."""

from __future__ import annotations

import re

import numpy as np
import onnx

from ..errors import MorphNetError
from ..graph_utils import node_reads
from ..loading.model import LoadedModel
from ..ops import MEMORY_BOUND, Unsupported, op_info
from .context import Context
from .groups import Analysis, CostedOp, Group, Source, UnionFind

__all__ = ["analyze", "Analysis", "Group", "Source", "CostedOp", "node_names"]

MAX_REASONS = 5


def node_names(graph: onnx.GraphProto) -> list[str]:
    """Node names, inventing stable ones (`{op_type}_{index}`) for unnamed or duplicate nodes."""
    names, seen = [], set()
    for index, node in enumerate(graph.node):
        name = node.name if node.name and node.name not in seen else f"{node.op_type}_{index}"
        seen.add(name)
        names.append(name)
    return names


def _keep_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise MorphNetError(f"--keep {pattern!r}: not a regular expression ({exc})") from exc


def analyze(loaded: LoadedModel, keep: list[str] | None = None) -> Analysis:
    """Walk the graph once in topological order, letting each op's channel rule (ops/) tie, create or
    fix channels."""
    ctx = Context(loaded)
    keep_patterns = [_keep_pattern(p) for p in keep or []]
    graph = loaded.model.graph
    for node, op in zip(graph.node, node_names(graph)):
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        info = op_info(node.op_type, domain)
        if ctx.fold_if_constant(node):
            continue
        try:
            if info is None:
                label = f"{domain}::{node.op_type}" if domain else node.op_type
                raise Unsupported(f"op type {label} is not understood")
            info.rule(ctx, node, op)
            if node.op_type in MEMORY_BOUND:
                _memory_cost(ctx, node, op)
        except Unsupported as why:
            _boundary(ctx, node, op, str(why))
        if any(p.search(op) for p in keep_patterns):
            # The op keeps its own channels; what it reads may still shrink with its producer.
            for name in node.output:
                ctx.fix(ctx.get(name), f"{op}: kept by --keep")
        for name in list(node.input) + list(node.output):
            ids = ctx.get(name)
            if ids is not None:
                ctx.touch(op, ids)
    for output in graph.output:
        ctx.fix(ctx.get(output.name), f"reaches the model output {output.name!r}")
    return _finish(ctx, loaded.name)


def _memory_cost(ctx: Context, node: onnx.NodeProto, op: str) -> None:
    """Bytes read and written by a memory-bound op (no FLOPs in MorphNet's convention, but it moves its
    activations: at batch 1 on a V100 nearly every op is memory bound), charged to its output
    channels (linear in them)."""
    out = node.output[0]
    shape = ctx.shapes.get(out)
    if not shape or -1 in shape:
        return
    batch = ctx.batch

    def elements(name: str) -> float:
        dims = ctx.shapes.get(name)
        return float(np.prod(dims)) / batch if dims and -1 not in dims and not ctx.is_constant(name) else 0.0

    moved = sum(elements(name) for name in node.input if name) + elements(out)
    ids = ctx.get(out)
    dtype_bytes = ctx.dtype_bytes(out)
    if ids is None or not ids.size:
        ctx.add_cost(op, node.op_type, 0.0, 0.0, None, None, in_fixed=1, out_fixed=1,
                     out_act_per_channel=moved, dtype_bytes=dtype_bytes)
        return
    positions = ids.reshape(-1)
    ctx.add_cost(op, node.op_type, 0.0, 0.0, None, positions, in_fixed=1,
                 out_act_per_channel=moved / positions.size, dtype_bytes=dtype_bytes)


def _boundary(ctx: Context, node: onnx.NodeProto, op: str, why: str) -> None:
    """An op we cannot follow: everything it reads (its subgraphs too) is pinned; its outputs carry no
    channels."""
    ctx.notes.append(f"{op} ({node.op_type}): {why}")
    for name in sorted(node_reads(node)):
        ctx.fix(ctx.get(name), f"{op}: {why}")
    for name in node.output:
        ctx.ids.pop(name, None)


def _finish(ctx: Context, name: str) -> Analysis:
    n_elements = len(ctx.uf.parent)
    roots = ctx.uf.roots() if n_elements else np.zeros(0, dtype=np.int64)
    element_source = np.repeat(np.arange(len(ctx.sources)), [s.count for s in ctx.sources]).astype(np.int64)
    # Sources whose elements were tied form one group.
    source_uf = UnionFind()
    source_uf.add(len(ctx.sources))
    order = np.argsort(roots, kind="stable")
    sorted_roots, sorted_sources = roots[order], element_source[order]
    same = np.nonzero(sorted_roots[1:] == sorted_roots[:-1])[0]
    for i in same.tolist():
        source_uf.union(int(sorted_sources[i]), int(sorted_sources[i + 1]))
    source_root = np.array([source_uf.find(i) for i in range(len(ctx.sources))], dtype=np.int64)
    group_of_root = {}
    for root in source_root.tolist():  # sources are in topological order, so are group ids
        group_of_root.setdefault(root, len(group_of_root))
    source_group = np.array([group_of_root[r] for r in source_root.tolist()], dtype=np.int64)
    element_group = source_group[element_source] if n_elements else np.zeros(0, dtype=np.int64)
    # Channels: union-find classes, numbered within each group by their first element.
    element_channel = np.zeros(n_elements, dtype=np.int64)
    n_groups = len(group_of_root)
    widths = np.zeros(n_groups, dtype=np.int64)
    first_of_class: dict[int, int] = {}
    for element, root in enumerate(roots.tolist()):
        channel = first_of_class.get(root)
        if channel is None:
            group = element_group[element]
            channel = int(widths[group])
            widths[group] += 1
            first_of_class[root] = channel
        element_channel[element] = channel

    reasons: list[list[str]] = [[] for _ in range(n_groups)]
    for elements, reason in ctx.fixed:
        for group in np.unique(element_group[elements]).tolist():
            if reason not in reasons[group] and len(reasons[group]) < MAX_REASONS:
                reasons[group].append(reason)
    ops: list[dict[str, None]] = [{} for _ in range(n_groups)]
    for op, ids in ctx.touched:
        for group in np.unique(element_group[ids]).tolist():
            ops[group][op] = None
    sources_of: list[list[str]] = [[] for _ in range(n_groups)]
    for source, group in zip(ctx.sources, source_group.tolist()):
        sources_of[group].append(source.op)
    groups = [
        Group(id=g, width=int(widths[g]), sources=sources_of[g], ops=list(ops[g]),
              prunable=not reasons[g], reasons=reasons[g])
        for g in range(n_groups)
    ]
    return Analysis(name=name, groups=groups, sources=ctx.sources, costed=ctx.costed, tensor_ids=dict(ctx.ids),
                    element_channel=element_channel, element_group=element_group, notes=ctx.notes)
