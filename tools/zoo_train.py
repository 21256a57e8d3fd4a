"""Does `shrink` train on real models? A few steps on random data for every model in a folder.

For issue "Train any real model": every torchvision classification model, BN kept and BN folded
(exports from tools/export_torchvision.py), `shrink --steps N --batch-size 2 --strength 1e-12` on
random data, each in its own process with a timeout, recording whether it trained, seconds per
step and peak memory (the child's max RSS).

    .venv/bin/python tools/zoo_train.py --dir /work/cache/torchvision --markdown /tmp/zoo_train.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx


def input_shape(path: Path) -> tuple[str, list[int]]:
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    value = next(i for i in model.graph.input if i.name not in inits)
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
    return value.name, dims


def run_one(path: Path, steps: int, timeout: float, work: Path) -> dict:
    name, dims = input_shape(path)
    rng = np.random.default_rng(0)
    data = work / f"{path.stem}.npz"
    x = rng.standard_normal([4] + dims[1:]).astype(np.float32)
    np.savez(data, **{name: x, "labels": rng.integers(0, 10, 4)})
    out = work / f"{path.stem}_shrunk.onnx"
    command = [sys.executable, "-m", "morphnet_onnx.cli", "shrink", str(path), "--data", str(data), "--strength",
               "1e-12", "--steps", str(steps), "--batch-size", "2", "-o", str(out), "--no-progress", "--json"]
    start = time.perf_counter()
    peak_file = work / "peak.txt"
    command = ["/usr/bin/time", "-f", "%M", "-o", str(peak_file)] + command  # max RSS of this run, in KB
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    except subprocess.TimeoutExpired:
        code, stdout, stderr = -999, "", f"timeout after {timeout:.0f} s"
    seconds = time.perf_counter() - start
    try:
        peak = int(peak_file.read_text().strip().splitlines()[-1]) // 1024
    except (OSError, ValueError, IndexError):
        peak = None
    row = {"model": path.stem, "trains": code == 0, "seconds": round(seconds, 1), "peak_rss_mb": peak,
           "error": "" if code == 0 else (stderr.strip().splitlines() or ["crash"])[-1][:200]}
    if code == 0:
        doc = json.loads(stdout)
        row["seconds_per_step"] = round(doc["seconds"] / max(doc["steps"], 1), 3)
        out.unlink(missing_ok=True)
    data.unlink(missing_ok=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="folder of .onnx models")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--only", nargs="*", help="substrings of model names to run")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    paths = sorted(Path(args.dir).glob("*.onnx"))
    if args.only:
        paths = [p for p in paths if any(s in p.stem for s in args.only)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            row = run_one(path, args.steps, args.timeout, Path(tmp))
            rows.append(row)
            print(f"{row['model']:32s} {'trains' if row['trains'] else 'FAILS '} {row['seconds']:6.1f}s "
                  f"{row.get('seconds_per_step', '')} {row['error']}", flush=True)
    passed = sum(r["trains"] for r in rows)
    lines = [f"{passed} of {len(rows)} models train.", "",
             "| model | trains | s/step | peak RSS MB (process) | total s | error |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {'yes' if r['trains'] else 'no'} | {r.get('seconds_per_step', '')} | "
                     f"{r['peak_rss_mb'] or ''} | {r['seconds']} | {r['error'].replace('|', '/')} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
