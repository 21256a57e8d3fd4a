"""A family of shrunk models (`shrink` with several budgets): the table of its members and the plot of
accuracy against measured latency (against the budget's resource without `--hardware measure`)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..loading.writing import write_atomic_bytes
from .pictures import PLOT_FORMATS, _matplotlib, check_picture_paths
from .tables import human, make_console


def _x(member: dict, resource: str) -> tuple[float, str]:
    if member.get("latency"):
        return member["latency"]["ratio"], "measured latency (x of the original)"
    return member["cost_ratio"], f"{resource} (x of the original)"


def print_family(result, console: Console | None = None) -> None:
    console = console or make_console()
    measured = any(m.get("latency") for m in result.members)
    table = Table(title=f"shrink family: {len(result.members)} models from one run ({result.steps} regularized "
                        f"steps + {result.finetune_steps} fine-tune steps each from {result.finetune_lr:g} x --lr = "
                        f"{result.total_steps} steps)",
                  title_justify="left")
    columns = ["budget", f"{result.resource}", "FLOPs", "params", "top-1", "before fine-tune", "decided at step"]
    if measured:
        columns[1] += " (table)" if result.resource == "latency" else ""
        columns[2:2] = ["latency measured", "table predicted", "held to (table)"]
    for column in columns + ["model"]:
        table.add_column(column, justify="left" if column in ("budget", "model") else "right")
    for m in result.members:
        cells = [m["budget"], f"{m['cost_ratio']:.3f}x", human(m["flops_after"]), human(m["params_after"]),
                 f"{m['accuracy']:.2%}" if m["accuracy"] is not None else "",
                 f"{m['cut_accuracy']:.2%}" if m["cut_accuracy"] is not None else "", str(m["decided_at_step"])]
        if measured:
            lat = m["latency"]
            held = m["decision"].get("hold_calibrations") or []  # the hold's target, as the measurement corrected it
            cells[2:2] = [f"{lat['ratio']:.3f}x ± {lat['noise']:.1%}", f"{lat['predicted_ratio']:.3f}x"] if lat else \
                ["", ""]
            cells.insert(4, f"{held[-1]['table_to']:.3f}x" if held else "")
        table.add_row(*cells, m["output"] or "")
    console.print(table)
    for m in result.members:
        for warning in m["warnings"]:
            console.print(f"[W] {m['budget']}: {warning}", markup=False, highlight=False)


def write_family_plot(result, path: str | os.PathLike) -> Path:
    """Accuracy of every member against its measured latency (or cost), labelled with its budget."""
    check_picture_paths(path)
    matplotlib, Figure = _matplotlib()
    fmt = PLOT_FORMATS[Path(path).suffix.lower()]
    with matplotlib.rc_context({"svg.hashsalt": "morphnet-onnx"}):
        fig = Figure(figsize=(6.5, 4.5), layout="constrained")
        ax = fig.subplots()
        points = [(*_x(m, result.resource), (m["accuracy"] or 0.0) * 100, m["budget"]) for m in result.members]
        ax.plot([p[0] for p in points], [p[2] for p in points], "o-", color="#1f77b4")
        for x, _, y, label in points:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, -12), fontsize=9)
        ax.set_xlabel(points[0][1])
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title(f"one shrink run, {len(points)} models ({result.total_steps} steps in all)", fontsize=10)
        ax.grid(alpha=0.3)
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
    write_atomic_bytes(path, buffer.getvalue())
    return Path(path)
