"""Small graph edits shared by surgery and training."""

from __future__ import annotations

import onnx


def live_tensors(graph: onnx.GraphProto) -> set[str]:
    """Names of the tensors something on the way to an output reads (graph in topological order)."""
    return _walk(graph)[0]


def _walk(graph: onnx.GraphProto) -> tuple[set[str], list[onnx.NodeProto]]:
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    return needed, kept


def drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove ops and initializers nothing on the way to an output reads (in place)."""
    needed, kept = _walk(graph)
    del graph.node[:]
    graph.node.extend(kept)
    used = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)
