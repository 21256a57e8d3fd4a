"""Pictures of a diff: the per-layer plot (PNG or SVG, with matplotlib) and a self-contained HTML page
(totals, the plot, a drawing of the topology, every op) that opens without network access.

The topology is laid out here, without a graph library's renderer: every op sits on the row of its
depth (the longest path from the inputs over the ops of both models), so a removed branch keeps its
place beside the skip or the other towers it ran along.
"""

from __future__ import annotations

import html
import importlib.util
import io
import os
from pathlib import Path

import networkx as nx

from ..errors import MorphNetError
from ..loading.writing import check_output_path, write_atomic_bytes
from .diff import ModelDiff, short_summary
from .tables import branch_span, human, pair_text, seconds_text

PLOT_FORMATS = {".png": "png", ".svg": "svg"}
HTML_SUFFIXES = (".html", ".htm")
MISSING_MATPLOTLIB = "needs matplotlib: pip install 'morphnet-onnx[plot]'"
BEFORE_COLOR, AFTER_COLOR, REMOVED_COLOR, ADDED_COLOR = "#9e9e9e", "#1f77b4", "#c62828", "#2e7d32"
# (fill, stroke) of an op box by status.
STATUS_COLORS = {"same": ("#ffffff", "#9e9e9e"), "changed": ("#fff8e1", "#f9a825"),
                 "narrower": ("#ffe0b2", "#ef6c00"), "wider": ("#e1f5fe", "#0277bd"),
                 "removed": ("#ffcdd2", REMOVED_COLOR), "added": ("#c8e6c9", ADDED_COLOR)}
BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN, LABELS_W = 210, 40, 36, 26, 16, 420
MAX_NAME = 30


def check_picture_paths(plot: str | os.PathLike | None = None, html_path: str | os.PathLike | None = None) -> None:
    """Refuse a plot or page path that cannot be written (before a long run, not after it)."""
    for path, suffixes, option in ((plot, tuple(PLOT_FORMATS), "--plot"), (html_path, HTML_SUFFIXES, "--html")):
        if path is None:
            continue
        path = Path(path)
        if path.suffix.lower() not in suffixes:
            raise MorphNetError(f"{option} {path}: the file name must end in {' or '.join(suffixes)}")
        check_output_path(path, option)
        if importlib.util.find_spec("matplotlib") is None:
            raise MorphNetError(f"{option} {MISSING_MATPLOTLIB}")


def write_pictures(d: ModelDiff, plot: str | os.PathLike | None = None,
                   html_path: str | os.PathLike | None = None) -> list[Path]:
    """Write the plot (PNG or SVG by its extension) and/or the HTML page of a diff; the paths written.

    >>> write_pictures(diff("m.onnx", "small.onnx"), plot="widths.png", html_path="diff.html")  # doctest: +SKIP
    """
    check_picture_paths(plot, html_path)
    written = []
    if plot is not None:
        write_atomic_bytes(plot, plot_bytes(d, PLOT_FORMATS[Path(plot).suffix.lower()]))
        written.append(Path(plot))
    if html_path is not None:
        write_atomic_bytes(html_path, html_page(d))
        written.append(Path(html_path))
    return written


# ---- the plot ---------------------------------------------------------------------------------------------

def _matplotlib():
    # matplotlib is an optional extra: imported here so that everything else works without it.
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MorphNetError(f"--plot and --html {MISSING_MATPLOTLIB}") from exc
    return matplotlib, Figure


def plot_bytes(d: ModelDiff, fmt: str = "png") -> bytes:
    """Per-layer widths of both models side by side along the depth, and FLOPs per layer ("png" or "svg")."""
    matplotlib, Figure = _matplotlib()
    # A fixed salt for the SVG's element ids, and no date: the same diff gives the same file.
    with matplotlib.rc_context({"svg.hashsalt": "morphnet-onnx"}):
        return _plot(Figure, d, fmt)


def _plot(Figure, d: ModelDiff, fmt: str) -> bytes:
    rows = d.compute_layers
    n = len(rows)
    x = list(range(n))
    fig = Figure(figsize=(min(40.0, max(8.0, 0.32 * n + 3)), 7.5), layout="constrained")
    ax_width, ax_flops = fig.subplots(2, 1, sharex=True)
    for ax, attribute, label in ((ax_width, "width", "width (output channels)"), (ax_flops, "flops", "FLOPs")):
        for offset, side, color, name in ((-0.2, "before", BEFORE_COLOR, "before"), (0.2, "after", AFTER_COLOR, "after")):
            values = [_value(getattr(layer, side), attribute) for layer in rows]
            ax.bar([i + offset for i in x], [v or 0 for v in values], width=0.4, color=color, label=name)
        gone = [i for i, layer in enumerate(rows) if layer.after is None]
        new = [i for i, layer in enumerate(rows) if layer.before is None]
        if gone:
            ax.plot([i + 0.2 for i in gone], [0] * len(gone), "x", color=REMOVED_COLOR, markersize=9,
                    markeredgewidth=2, label="removed", clip_on=False)
        if new:
            ax.plot([i - 0.2 for i in new], [0] * len(new), "+", color=ADDED_COLOR, markersize=10,
                    markeredgewidth=2, label="added", clip_on=False)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    flops = d.totals["flops"]
    ax_width.set_title(f"{_short(d.before, 60)} -> {_short(d.after, 60)}: FLOPs {human(flops[0])} -> {human(flops[1])}",
                       fontsize=10)
    step = max(1, -(-n // 60))
    ax_flops.set_xticks(x[::step])
    ax_flops.set_xticklabels([_short(rows[i].op, 28) for i in x[::step]], rotation=90, fontsize=7)
    ax_flops.set_xlabel("layers with FLOPs, in graph order")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
    return buffer.getvalue()


def _value(side, attribute: str):
    return None if side is None else getattr(side, attribute)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


# ---- the page ---------------------------------------------------------------------------------------------

def _inline_svg(data: bytes) -> str:
    """matplotlib's SVG without the XML prologue, to sit inside the page."""
    text = data.decode("utf-8")
    return text[text.index("<svg"):]


def _depths(d: ModelDiff) -> list[int]:
    """Row of every op: its longest path from the inputs over the wiring of both models."""
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(d.layers)))
    graph.add_edges_from(d.edges)
    if not nx.is_directed_acyclic_graph(graph):  # ops matched crosswise: fall back to the list order
        return list(range(len(d.layers)))
    depth = [0] * len(d.layers)
    for node in nx.topological_sort(graph):
        for successor in graph.successors(node):
            depth[successor] = max(depth[successor], depth[node] + 1)
    return depth


def _width_label(layer) -> str:
    b, a = layer.before, layer.after
    if a is None:
        return f"{'?' if b.width is None else b.width} \u2192 removed"
    if b is None:
        return f"added, {'?' if a.width is None else a.width}"
    return pair_text(b, a, "width", str).replace("->", "\u2192")


def _layout(d: ModelDiff, depths: list[int]) -> dict[int, tuple[float, float]]:
    """Top-left corner of every op's box: rows by depth; in a row, each op as near as it can be to
    the mean place of the ops feeding it, so a chain runs straight down and towers sit side by side."""
    rows: dict[int, list[int]] = {}
    for index, depth in enumerate(depths):
        rows.setdefault(depth, []).append(index)
    feeders: dict[int, list[int]] = {}
    for i, j in d.edges:
        feeders.setdefault(j, []).append(i)
    step = BOX_W + GAP_X
    x: dict[int, float] = {}
    for depth in sorted(rows):
        wanted = {}
        for k, index in enumerate(rows[depth]):
            placed = [x[f] for f in feeders.get(index, []) if f in x]
            wanted[index] = sum(placed) / len(placed) if placed else k * step
        order = sorted(rows[depth], key=lambda index: (wanted[index], index))
        spots: list[float] = []
        for index in order:
            spots.append(wanted[index] if not spots else max(wanted[index], spots[-1] + step))
        # Centre the row on where its ops want to be (pushing right only would drift the drawing).
        shift = sum(wanted.values()) / len(order) - sum(spots) / len(spots)
        for index, spot in zip(order, spots):
            x[index] = spot + shift
    left = min(x.values(), default=0.0)
    return {index: (MARGIN + x[index] - left, MARGIN + depths[index] * (BOX_H + GAP_Y)) for index in x}


def topology_svg(d: ModelDiff) -> str:
    """The ops of both models as one layered drawing: removed ops and branches marked, widths before -> after."""
    depths = _depths(d)
    place = _layout(d, depths)
    content_w = MARGIN + max((px for px, _ in place.values()), default=0.0) + BOX_W + MARGIN
    height = 2 * MARGIN + (max(depths, default=0) + 1) * (BOX_H + GAP_Y)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{content_w + LABELS_W:.0f}" height="{height:.0f}" '
             f'font-family="sans-serif" font-size="11">']
    for i, j in d.edges:
        (x1, y1), (x2, y2) = place[i], place[j]
        sx, sy, tx, ty = x1 + BOX_W / 2, y1 + BOX_H, x2 + BOX_W / 2, y2
        # Edges over several rows bend to the right, clear of the boxes they pass.
        bend = 0.8 * BOX_W if depths[j] - depths[i] > 1 else 0
        dy = (ty - sy) / 3
        gone = d.layers[i].status == "removed" or d.layers[j].status == "removed"
        new = d.layers[i].status == "added" or d.layers[j].status == "added"
        color = REMOVED_COLOR if gone else ADDED_COLOR if new else "#757575"
        dash = ' stroke-dasharray="5,3"' if gone else ""
        parts.append(f'<path d="M{sx:.1f},{sy:.1f} C{sx + bend:.1f},{sy + dy:.1f} {tx + bend:.1f},{ty - dy:.1f} '
                     f'{tx:.1f},{ty:.1f}" fill="none" stroke="{color}" stroke-width="1.3"{dash}/>')
    for index, layer in enumerate(d.layers):
        x, y = place[index]
        fill, stroke = STATUS_COLORS[layer.status]
        dash = ' stroke-dasharray="6,3"' if layer.status == "removed" else ""
        b, a = layer.before, layer.after
        tip = f"{layer.op} ({layer.op_type}): {layer.status}; width {pair_text(b, a, 'width', str)}; " \
              f"FLOPs {pair_text(b, a, 'flops', human)}"
        name = layer.op if not (b and a and a.op != b.op) else f"{b.op} / {a.op}"
        decoration = ' text-decoration="line-through"' if layer.status == "removed" else ""
        parts.append(f'<g class="op {layer.status}"><title>{html.escape(tip)}</title>'
                     f'<rect x="{x:.1f}" y="{y:.1f}" width="{BOX_W}" height="{BOX_H}" rx="5" fill="{fill}" '
                     f'stroke="{stroke}" stroke-width="1.6"{dash}/>'
                     f'<text x="{x + 7:.1f}" y="{y + 15:.1f}" font-weight="bold"{decoration}>'
                     f'{html.escape(_short(name, MAX_NAME))}</text>'
                     f'<text x="{x + 7:.1f}" y="{y + 31:.1f}">{html.escape(layer.op_type)}  '
                     f'{html.escape(_width_label(layer))}</text></g>')
    row_of_op = {layer.before.op: index for index, layer in enumerate(d.layers) if layer.before is not None}
    row_of_added = {layer.after.op: index for index, layer in enumerate(d.layers) if layer.before is None}
    used: set[float] = set()
    for title, branches, lookup, color in (("removed", d.removed, row_of_op, REMOVED_COLOR),
                                           ("added", d.added, row_of_added, ADDED_COLOR)):
        for number, branch in enumerate(branches, 1):
            y = place[lookup[branch.ops[0]]][1] + BOX_H / 2 + 4
            while y in used:
                y += 14
            used.add(y)
            label = f"{title} {number}: {branch.description} ({len(branch.ops)} op{'s' if len(branch.ops) > 1 else ''})"
            parts.append(f'<text x="{content_w + 4:.1f}" y="{y:.1f}" fill="{color}" font-weight="bold">'
                         f'\u2190 {html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


PAGE_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #212121; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #e0e0e0; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child, td.name, td.kind { text-align: left; }
tr.removed td { background: #ffcdd2; } tr.added td { background: #c8e6c9; }
tr.narrower td { background: #ffe0b2; } tr.wider td { background: #e1f5fe; } tr.changed td { background: #fff8e1; }
tr.same td { color: #757575; }
.down { color: #2e7d32; } .up { color: #c62828; }
.summary { font-family: monospace; white-space: pre-wrap; }
.scroll { overflow-x: auto; }
.legend span { display: inline-block; padding: 2px 8px; margin-right: 6px; border: 1px solid #9e9e9e; font-size: 12px; }
"""


def _change_html(before: float, after: float) -> str:
    if before == after:
        return "="
    if not before:
        return '<span class="up">new</span>'
    css = "down" if after < before else "up"
    return f'<span class="{css}">{(after - before) / before:+.1%}</span>'


def html_page(d: ModelDiff) -> str:
    """One self-contained page: summary, totals, the plot (inline SVG), the topology, every op."""
    e = html.escape
    t = d.totals
    totals = [("FLOPs", t["flops"], human), ("MACs", t["macs"], human), ("params", t["params"], human),
              ("weights", t["param_bytes"], lambda v: human(v, "B")),
              (f"latency ({d.hardware})", t["latency_s"], seconds_text),
              ("ops", (sum(b for b, _ in d.op_counts.values()), sum(a for _, a in d.op_counts.values())), str)]
    totals += [(f"\u00a0\u00a0{op_type}", counts, str) for op_type, counts in d.op_counts.items() if counts[0] != counts[1]]
    total_rows = "".join(f"<tr><td>{e(label)}</td><td>{e(fmt(b))}</td><td>{e(fmt(a))}</td><td>{_change_html(b, a)}</td></tr>"
                         for label, (b, a), fmt in totals)
    branches = "".join(f'<li><b class="{"up" if title == "removed" else "down"}">{title}</b> {e(branch_span(branch))}: '
                       f"{e(branch.description)}; FLOPs {e(human(branch.flops))}, params {e(human(branch.params))}</li>"
                       for title, group in (("removed", d.removed), ("added", d.added)) for branch in group)
    op_rows = "".join(
        f'<tr class="{layer.status}"><td>{number}</td><td class="name">{e(layer.op)}'
        f'{e(" (now " + layer.after.op + ")") if layer.before and layer.after and layer.after.op != layer.before.op else ""}'
        f'</td><td class="kind">{e(layer.op_type)}</td><td>{e(pair_text(layer.before, layer.after, "width", str))}</td>'
        f'<td>{e(pair_text(layer.before, layer.after, "flops", human))}</td>'
        f'<td>{e(pair_text(layer.before, layer.after, "params", human))}</td><td class="kind">{layer.status}</td>'
        f'<td class="kind">{layer.matched_by}</td></tr>'
        for number, layer in enumerate(d.layers, 1))
    legend = "".join(f'<span style="background:{fill};border-color:{stroke}">{status}</span>'
                     for status, (fill, stroke) in STATUS_COLORS.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>morphnet-onnx diff: {e(d.before)} -> {e(d.after)}</title>
<style>{PAGE_STYLE}</style></head><body>
<h1>{e(d.before)} &rarr; {e(d.after)}</h1>
<p class="summary">{e(chr(10).join(short_summary(d)[:2]))}</p>
<h2>Totals</h2>
<table><tr><th></th><th>before</th><th>after</th><th>change</th></tr>{total_rows}</table>
<ul>{branches}</ul>
<h2>Width and FLOPs per layer</h2>
<div class="scroll plot">{_inline_svg(plot_bytes(d, "svg"))}</div>
<h2>Topology</h2>
<p class="legend">{legend} &nbsp; every op: name, type, width before &rarr; after</p>
<div class="scroll graph">{topology_svg(d)}</div>
<h2>Every op</h2>
<table><tr><th>#</th><th>op</th><th>type</th><th>width</th><th>FLOPs</th><th>params</th><th>status</th><th>matched by</th></tr>
{op_rows}</table>
</body></html>
"""
