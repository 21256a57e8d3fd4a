#!/usr/bin/env python3
"""Zoo sweep of the measured latency table: `inspect --hardware measure` over many models (DEV-ONLY
tool; results go in docs/coverage.md).

For every model, in its own subprocess (a crash or hang of one cannot stop the sweep), with an empty
cache so that every table is measured now::

    <python> -m morphnet_onnx.cli inspect MODEL --hardware measure --latency-threads T --json

and one row per model: the full model's and the floor's measured time (every prunable group at its
minimum: what no budget can go below), how well the table's fit predicts the timed copies (RMS over
all, and on copies left out), the share of kernel time no attribution rule claimed, the seconds the
table took, or the one-line error.

Model sources as in tools/zoo_check.py: ``--light`` (the onnx wheel's light CNNs), ``--torchvision-light``
(tests/data/torchvision, graph only: random weights), ``--transformers`` (tests/data/transformers),
``--dir DIR``, positional paths; ``--models REGEX`` filters. Run from the repository root::

    .venv/bin/python tools/zoo_latency.py --light --torchvision-light --transformers --models '_bn|light|dynamo' \\
        --markdown /tmp/latency_zoo.md --json /tmp/latency_zoo.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import markdown_table  # tools/harness.py
from zoo_check import collect

REPO = Path(__file__).resolve().parent.parent


def models(args) -> list[Path]:
    """zoo_check's model discovery (--light, --torchvision-light, --dir, paths, --models), with
    --transformers as one more folder."""
    if args.transformers:
        args.dir = [*(args.dir or []), str(REPO / "tests" / "data" / "transformers")]
    return [model.path for model in collect(args)]


def measure(path: Path, threads: int, timeout: float) -> dict:
    """One model's table, measured in a child process with an empty cache."""
    with tempfile.TemporaryDirectory(prefix="zoo-latency-") as cache:
        env = dict(os.environ, XDG_CACHE_HOME=cache)
        command = [sys.executable, "-m", "morphnet_onnx.cli", "inspect", str(path), "--hardware", "measure",
                   "--latency-threads", str(threads), "--json"]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
        except subprocess.TimeoutExpired:
            return {"model": path.name, "status": "timeout", "seconds": timeout}
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return {"model": path.name, "status": f"rc {done.returncode}", "seconds": seconds,
                "error": lines[-1] if lines else ""}
    table = json.loads(done.stdout)["hardware"]["measured"]
    return {"model": path.name, "status": "ok", "seconds": seconds, "table_seconds": table["seconds"],
            "full_ms": table["full"]["median_s"] * 1e3, "floor_ms": table["floor"]["median_s"] * 1e3,
            "floor_share": table["floor"]["median_s"] / table["full"]["median_s"],
            "fit_rms": table["fit_error"]["rms"], "fit_max": table["fit_error"]["max"],
            "held_out": table["cross_validated"], "unattributed": table["unattributed_share"],
            "block": table["block"], "levels": table["levels"], "loadavg": table["loadavg"]}


def markdown(rows: list[dict], threads: int) -> str:
    cells = [[row["model"], f"{row['full_ms']:.4g}", f"{row['floor_share']:.3f}x",
              f"{row['fit_rms']:.1%} ({row['fit_max']:.1%})", f"{row['held_out']:.1%}", f"{row['unattributed']:.1%}",
              f"{row['table_seconds']:.0f}"] if row["status"] == "ok"
             else [row["model"], f"{row['status']}: {row.get('error', '')}", "", "", "", "", ""] for row in rows]
    measured = sum(row["status"] == "ok" for row in rows)
    return (markdown_table(["model", "full (ms)", "floor", "fit RMS (max)", "left out", "unattributed", "table (s)"],
                           cells, ["---"] + ["--:"] * 6)
            + f"\n\n{measured} of {len(rows)} models measured ({threads} thread{'s' if threads != 1 else ''})\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="*", help="extra .onnx files")
    parser.add_argument("--light", action="store_true", help="the onnx wheel's light_*.onnx CNNs")
    parser.add_argument("--torchvision-light", action="store_true", help="tests/data/torchvision/*.onnx")
    parser.add_argument("--transformers", action="store_true", help="tests/data/transformers/*.onnx")
    parser.add_argument("--dir", action="append", metavar="DIR", help="every .onnx in DIR (repeatable)")
    parser.add_argument("--models", metavar="REGEX", help="only files whose name matches (re.search)")
    parser.add_argument("--threads", type=int, default=1, help="--latency-threads (default 1)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per model (default 600)")
    parser.add_argument("--markdown", metavar="OUT.md")
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args()
    paths = models(args)
    if not paths:
        parser.error("no models: name some, or --light/--torchvision-light/--transformers/--dir")
    rows = []
    for index, path in enumerate(paths, 1):
        row = measure(path, args.threads, args.timeout)
        rows.append(row)
        said = (f"{row['full_ms']:.4g} ms, floor {row['floor_share']:.3f}x, fit {row['fit_rms']:.1%} RMS"
                if row["status"] == "ok" else f"{row['status']} {row.get('error', '')}")
        print(f"[{index}/{len(paths)}] {path.name}: {said} ({row['seconds']:.0f} s)", flush=True)
    text = markdown(rows, args.threads)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
