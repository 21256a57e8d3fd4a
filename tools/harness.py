"""What every benchmark and sweep under tools/ shares (dev tools only): the machine, versions and
commit recorded with each result, one timed call, a summary of repeated timings, a markdown table,
and the JSON file of results."""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx

import morphnet_onnx
from morphnet_onnx.cost.latency import machine_name

ROOT = Path(__file__).resolve().parent.parent
# Where tools/export_torchvision.py writes the full torchvision exports (outside the repository):
# $MORPHNET_ZOO, by default the user's cache folder.
ZOO = Path(os.environ.get("MORPHNET_ZOO", Path.home() / ".cache" / "morphnet-onnx" / "torchvision"))


def machine_info() -> dict:
    cpu = machine_name().rsplit(", ", 1)[0]  # the CPU's model name, as the latency cache keys it
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    try:
        from google.protobuf import __version__ as pb_version
        from google.protobuf.internal import api_implementation
        pb = f"{pb_version} ({api_implementation.Type()})"
    except ImportError:
        pb = None
    commit = None
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "morphnet_onnx"],
                               capture_output=True, text=True, check=True).stdout.strip()
        if dirty:
            commit += " + uncommitted changes in morphnet_onnx/"
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "nproc": nproc, "cpu": cpu, "python": platform.python_version(), "onnx": onnx.__version__,
        "onnxruntime": ort_version, "numpy": np.__version__, "protobuf": pb,
        "morphnet_onnx": morphnet_onnx.__version__, "git_commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "loadavg_start": list(os.getloadavg()),
    }


def machine_line(m: dict) -> str:
    return (f"{m['nproc']} cores, {m['cpu']}; Python {m['python']}, onnx {m['onnx']}, "
            f"onnxruntime {m['onnxruntime']}, numpy {m['numpy']}, protobuf {m['protobuf']}")


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call, after a gc.collect() outside the timed region."""
    gc.collect()
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs_s": times}


def markdown_table(head: list[str], rows: list[list], align: list[str] | None = None) -> str:
    """A markdown table; `align` holds one of ---, :-:, --: per column (default ---)."""
    align = align or ["---"] * len(head)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | os.PathLike, doc, indent: int = 1) -> None:
    """The results as one JSON document (values JSON does not know, such as paths, as text)."""
    Path(path).write_text(json.dumps(doc, indent=indent, default=str) + "\n")
