"""Benchmark `check` against its baseline, in one process on one machine.

Target (issue "Graph surgery"): `check` of ResNet-50 takes at most 3x (onnx.load + onnx.save + the two
onnxruntime runs) of the same model. The baseline does exactly the I/O and inference `check` cannot
avoid: load the file, save it, run the model twice (original and pruned) on the same random batch.

    .venv/bin/python tools/bench_check.py [--model ~/.cache/morphnet-onnx/torchvision/resnet50_bn.onnx] [--repeats 3]

The model comes from tools/export_torchvision.py (dev-only, needs torch).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from harness import ZOO, machine_info, machine_line, write_json  # tools/harness.py
from morphnet_onnx import check
from morphnet_onnx.loading.runtime import make_session


def baseline(path: Path, tmp: Path) -> float:
    start = time.perf_counter()
    model = onnx.load(str(path))
    onnx.save(model, str(tmp / "copy.onnx"))
    session = make_session(model)
    name = session.get_inputs()[0].name
    shape = [d if isinstance(d, int) else 2 for d in session.get_inputs()[0].shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    session.run(None, {name: x})
    session = make_session(model)  # check builds a second session for the pruned model
    session.run(None, {name: x})
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ZOO / "resnet50_bn.onnx"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=3.0)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    path = Path(args.model)
    if not path.exists():
        print(f"{path}: missing; make it with tools/export_torchvision.py (torch venv)", file=sys.stderr)
        return 2
    base, checks, passed = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # alternate so drift hits both alike
            base.append(baseline(path, Path(tmp)))
            start = time.perf_counter()
            result = check(path, fraction=0.5, seed=0)
            checks.append(time.perf_counter() - start)
            passed.append(result.passed)
    ratio = statistics.median(checks) / statistics.median(base)
    machine = machine_info()
    print(f"machine: {machine_line(machine)}, commit {machine['git_commit']}")
    print(f"model: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"baseline (load + save + 2 onnxruntime runs): median {statistics.median(base):.3f} s, min {min(base):.3f} s")
    print(f"check --fraction 0.5:                         median {statistics.median(checks):.3f} s, min {min(checks):.3f} s")
    print(f"ratio of medians: {ratio:.2f}x (target <= {args.target}x): {'PASS' if ratio <= args.target else 'FAIL'};"
          f" check passed: {all(passed)}")
    if args.json:
        write_json(args.json, {"machine": machine, "baseline_s": base, "check_s": checks, "ratio": ratio,
                               "passed": passed})
    return 0 if ratio <= args.target and all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
