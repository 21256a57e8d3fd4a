"""Human-readable output: tables and number formatting."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from .inspection import Inspection


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


def make_console() -> Console:
    """Wide enough for the tables when piped to a file."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def print_inspection(report: Inspection, console: Console | None = None) -> None:
    console = console or make_console()
    costs = report.costs
    table = Table(title=f"Channel groups of {report.loaded.name}", title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("width", justify="right")
    table.add_column("FLOPs share", justify="right")
    table.add_column("FLOPs/channel", justify="right")
    table.add_column("prunable", max_width=48)
    table.add_column("source ops (+ other member ops)")
    for group in report.analysis.groups:
        gc = costs.groups[group.id]
        status = "yes" if group.prunable else f"no: {group.reasons[0]}"
        share = gc.removable_flops / costs.flops if costs.flops else 0.0
        table.add_row(str(group.id), str(group.width), f"{share:.1%}", human(gc.marginal_flops), status,
                      _ops_cell(group.sources, group.ops))
    console.print(table)
    console.print("FLOPs share: the FLOPs that vanish if the whole group goes; FLOPs/channel: the cost of one "
                  "more channel (MorphNet's marginal cost)")
    n_prunable = len(report.analysis.prunable_groups)
    console.print(
        f"FLOPs {human(costs.flops)} (MACs {human(costs.macs)}), params {human(costs.params)}, "
        f"weights {human(costs.param_bytes, 'B')}, latency {costs.latency_s * 1e3:.3g} ms on {costs.hardware.name}")
    console.print(f"{n_prunable} of {len(report.analysis.groups)} groups prunable, holding "
                  f"{report.prunable_flops_share:.1%} of the FLOPs")
    if report.loaded.upgraded_from is not None:
        console.print(f"[W] opset {report.loaded.upgraded_from} upgraded to {report.loaded.opset} for analysis")
    for note in report.analysis.notes:
        console.print(f"[W] not understood, channels kept: {note}")


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
