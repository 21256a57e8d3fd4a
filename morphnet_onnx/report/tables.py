"""Human-readable output: tables and number formatting."""

from __future__ import annotations

import sys
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..cost.inspection import Inspection

if TYPE_CHECKING:  # diffing imports the formatting below
    from .diff import Branch, ModelDiff


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (SI prefixes, 3 significant digits)."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def _ops_cell(sources: list[str], ops: list[str], limit: int = 3) -> str:
    shown = sources[:limit]
    extra = len(set(ops) - set(shown))
    return ", ".join(shown) + (f" (+{extra} ops)" if extra else "")


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """rich exits 1 when stdout's reader goes away; the CLI ends such a run itself (cli.main)."""
        self.quiet = True
        raise BrokenPipeError


def make_console() -> Console:
    """Wide enough for the tables when piped to a file."""
    return _Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def _widths_cell(widths: list[int]) -> str:
    """The widths worth having, short: "x16" when those in the upper half of the range are the
    multiples of 16, "any" when every width is, else the first few."""
    if not widths:
        return ""
    if len(widths) == widths[-1]:
        return "any"
    upper = [w for w in widths[:-1] if w >= widths[-1] // 2]
    step = int(np.gcd.reduce(upper)) if len(upper) > 1 else 1
    if step > 1:
        return f"x{step}"
    return ", ".join(map(str, widths[:4])) + (f", ... {widths[-1]}" if len(widths) > 4 else "")


def print_inspection(report: Inspection, console: Console | None = None) -> None:
    console = console or make_console()
    costs = report.costs
    measured = bool(report.fast_widths)
    table = Table(title=f"Channel groups of {report.loaded.name}", title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("width", justify="right")
    table.add_column("FLOPs share", justify="right")
    table.add_column("FLOPs/channel", justify="right")
    if measured:
        table.add_column("latency share", justify="right")
        table.add_column("µs/channel", justify="right")
        table.add_column("fast widths")
    table.add_column("prunable", max_width=48)
    table.add_column("source ops (+ other member ops)")
    for group in report.analysis.groups:
        gc = costs.groups[group.id]
        status = "yes" if group.prunable else f"no: {group.reasons[0]}"
        share = gc.removable_flops / costs.flops if costs.flops else 0.0
        cells = [str(group.id), str(group.width), f"{share:.1%}", human(gc.marginal_flops)]
        if measured:
            removable = report.removable_latency.get(group.id)
            cells += [f"{removable / costs.latency_s:.1%}" if removable is not None and costs.latency_s else "",
                      f"{gc.marginal_latency_s * 1e6:.3g}", _widths_cell(report.fast_widths.get(group.id, []))]
        table.add_row(*cells, status, _ops_cell(group.sources, group.ops))
    console.print(table)
    console.print("FLOPs share: the FLOPs that vanish if the whole group goes; FLOPs/channel: the cost of one "
                  "more channel (MorphNet's marginal cost)")
    if measured:
        console.print("latency share, µs/channel: the same for the measured latency; fast widths: the widths no "
                      "wider width runs as fast as (xN: the multiples of N)")
    n_prunable = len(report.analysis.prunable_groups)
    console.print(
        f"FLOPs {human(costs.flops)} (MACs {human(costs.macs)}), params {human(costs.params)}, "
        f"weights {human(costs.param_bytes, 'B')}, latency {costs.latency_s * 1e3:.3g} ms "
        f"{'' if measured else 'on '}{costs.hardware.name}")
    if measured:
        for line in latency_table_lines(costs.hardware):
            console.print(line)
    console.print(f"{n_prunable} of {len(report.analysis.groups)} groups prunable, holding "
                  f"{report.prunable_flops_share:.1%} of the FLOPs")
    if report.loaded.upgraded_from is not None:
        console.print(f"[W] opset {report.loaded.upgraded_from} upgraded to {report.loaded.opset} for analysis")
    for note in report.analysis.notes:
        console.print(f"[W] not understood, channels kept: {note}")
    for caution in report.analysis.cautions:
        console.print(f"[W] {caution}")


def latency_table_lines(table) -> list[str]:
    """What a measured latency table rests on, in a few lines."""
    error = table.fit_error()
    full, floor = table.full, table.floor
    steps = f"blocks of {table.block} channels" if table.block > 1 else "no padding block"
    if table.levels:
        steps += f", slower off multiples of {', '.join(map(str, table.levels))}"
    return [
        f"measured: full model {full.median_s * 1e3:.4g} ms ± {full.noise:.1%}, floor (every prunable group at its "
        f"minimum) {floor.median_s * 1e3:.4g} ms ({floor.median_s / full.median_s:.3f}x); onnxruntime "
        f"{table.onnxruntime}, {table.clock} clock, {table.machine}",
        f"fit: {error['copies']} timed copies, fitted vs measured {error['rms']:.1%} RMS (max {error['max']:.1%}), "
        f"{table.cross_validated:.1%} on copies left out; steps: {steps}; unattributed kernel time "
        f"{table.unattributed_share:.1%}",
        f"table: {table.path or 'not saved'} (measured {table.date} in {table.seconds:.0f} s, load average "
        f"{', '.join(f'{v:.1f}' for v in table.loadavg)})",
    ]


def print_cycle(result, console: Console | None = None) -> None:
    """The rounds of `cycle`: cost and validation accuracy of every round, the original first."""
    console = console or make_console()
    table = Table(title=f"cycle: budget {human(result.target)} {result.resource} ({result.out_dir})")
    for column in ("round", "multiplier", "FLOPs", "params", "latency", "top-1", "top-5", "model"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in result.rows:
        accuracy = f"{row.accuracy:.2%}" if row.accuracy is not None else f"mse {row.mse:.4g}"
        table.add_row("original" if row.round == 0 else str(row.round),
                      f"{row.multiplier:.3f}" if row.multiplier is not None else "",
                      human(row.flops), human(row.params), f"{row.latency_s * 1e6:.1f} us", accuracy,
                      f"{row.top5:.2%}" if row.top5 is not None else "", row.model)
    console.print(table)


# ---- diff ------------------------------------------------------------------------------------------------

STATUS_STYLE = {"removed": "bold red", "added": "bold green", "narrower": "yellow", "wider": "cyan",
                "changed": "", "same": "dim"}


def change_text(before: float, after: float, fmt) -> str:
    """'36.5M -> 19.9M (-45.4%)'."""
    pct = f" ({(after - before) / before:+.1%})" if before else ""
    return f"{fmt(before)} -> {fmt(after)}{pct}"


def seconds_text(value: float) -> str:
    """Latency with a readable unit: '6.62 us', '1.3 ms'."""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def branch_span(branch: Branch) -> str:
    """'conv2 .. bn3 (5 ops, from conv1.relu, into add4)'."""
    ops = branch.ops[0] if len(branch.ops) == 1 else f"{branch.ops[0]} .. {branch.ops[-1]} ({len(branch.ops)} ops"
    where = []
    if branch.entry:
        where.append(f"from {', '.join(branch.entry[:2])}")
    if branch.exit:
        where.append(f"into {', '.join(branch.exit[:2])}")
    if len(branch.ops) == 1:
        return f"{ops} ({', '.join(where)})" if where else ops
    return f"{ops}{', ' + ', '.join(where) if where else ''})"


def pair_text(before, after, attribute: str, fmt) -> str:
    """A layer's value on both sides ('16 -> 8', '16' when equal, '-' for a missing side, '?' unknown)."""
    def cell(side) -> str:
        if side is None:
            return "-"
        value = getattr(side, attribute)
        return "?" if value is None else fmt(value)

    left, right = cell(before), cell(after)
    return left if left == right and before is not None and after is not None else f"{left} -> {right}"


def print_diff(d: ModelDiff, console: Console | None = None) -> None:
    """The diff as tables: layers with FLOPs, removed and added branches, totals, op counts."""
    console = console or make_console()
    # Layers with FLOPs, and any other op whose own costs changed (an Add now reading a constant).
    rows = [layer for layer in d.layers if layer.is_compute or layer.status == "changed"] or d.layers
    console.print(f"[bold]{escape(d.before)} -> {escape(d.after)}[/]", highlight=False)
    table = Table()
    for name, justify in (("op", "left"), ("type", "left"), ("width", "right"), ("FLOPs", "right"),
                          ("params", "right"), ("", "left")):
        table.add_column(name, justify=justify)
    for layer in rows:
        b, a = layer.before, layer.after
        name = layer.op if not (b and a and a.op != b.op) else f"{b.op} (now {a.op})"
        table.add_row(escape(name), layer.op_type, pair_text(b, a, "width", str), pair_text(b, a, "flops", human),
                      pair_text(b, a, "params", human), layer.status, style=STATUS_STYLE[layer.status])
    console.print(table)
    for title, branches, style in (("removed", d.removed, "red"), ("added", d.added, "green")):
        for branch in branches:
            if branch.kind not in ("bypassed", "inserted"):
                console.print(f"[{style}]{title}[/] {escape(branch_span(branch))}: {branch.description}; "
                              f"FLOPs {human(branch.flops)}, params {human(branch.params)}", highlight=False)
        # Ops spliced out or in (norms folded, Identities dropped) go on one line.
        spliced = [branch for branch in branches if branch.kind in ("bypassed", "inserted")]
        if spliced:
            ops = [op for branch in spliced for op in branch.ops]
            shown = ", ".join(ops[:3]) + (f" (+{len(ops) - 3})" if len(ops) > 3 else "")
            console.print(f"[{style}]{title}[/] {len(ops)} ops {escape(spliced[0].description)}: {escape(shown)}",
                          highlight=False)
    totals = Table(title="Totals", title_justify="left")
    for name, justify in (("", "left"), ("before", "right"), ("after", "right"), ("change", "right")):
        totals.add_column(name, justify=justify)
    t = d.totals
    shown = (("FLOPs", t["flops"], human), ("MACs", t["macs"], human), ("params", t["params"], human),
             ("weights", t["param_bytes"], lambda v: human(v, "B")),
             (f"latency ({d.hardware})", t["latency_s"], seconds_text),
             ("ops", (sum(b for b, _ in d.op_counts.values()), sum(a for _, a in d.op_counts.values())), str))
    for label, (before, after), fmt in shown:
        totals.add_row(label, fmt(before), fmt(after), *_change_cell(before, after))
    for op_type, (before, after) in d.op_counts.items():
        if before != after:
            totals.add_row(f"  {op_type}", str(before), str(after), *_change_cell(before, after))
    console.print(totals)
    status = d.counts()
    by = Counter(layer.matched_by for layer in d.layers if layer.matched_by)
    hidden = sum(1 for layer in d.layers if layer not in rows and layer.status in ("narrower", "wider"))
    console.print(f"{by['name'] + by['position']} ops matched ({by['name']} by name, {by['position']} by "
                  f"position), {status['removed']} removed, {status['added']} added"
                  + (f"; {hidden} ops without FLOPs changed width with their layers (--json lists every op)"
                     if hidden else ""), highlight=False)


def _change_cell(before: float, after: float) -> tuple[str]:
    if before == after:
        return ("[dim]=[/]",)
    if not before:
        return ("[red]new[/]",)
    style = "green" if after < before else "red"
    return (f"[{style}]{(after - before) / before:+.1%}[/]",)
