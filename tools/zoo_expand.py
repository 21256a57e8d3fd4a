#!/usr/bin/env python3
"""Sweep `expand` over real exports: widening with `--init keep` must compute exactly what the input
model computes, and narrowing with `--init fresh` must write a valid model.

    .venv/bin/python tools/zoo_expand.py tests/data/torchvision/*.onnx [--multiplier 1.5] [--json out.json]

Per model: FLOPs ratio of the widened model, the largest output difference relative to the
output's magnitude (random input, batch 1), the groups kept at their width, and the seconds taken.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from morphnet_onnx import MorphNetError, expand
from morphnet_onnx.surgery.pruning import prepare
from morphnet_onnx.loading.runtime import make_session, random_feeds


def sweep_one(path: Path, multiplier: float, narrow: float) -> dict:
    start = time.perf_counter()
    loaded, _ = prepare(path, seed=0)  # placeholder weights of the light exports made real
    wide = expand(loaded.model, multiplier=multiplier, init="keep", seed=0)
    feeds = random_feeds(loaded.model, loaded.shapes, 1, 0)
    before = make_session(loaded.model).run(None, feeds)
    after = make_session(wide.model).run(None, feeds)
    error = max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-6)) for a, b in zip(before, after))
    thin = expand(loaded.model, multiplier=narrow, init="fresh", seed=0)
    return {"model": path.name, "flops_ratio_wide": wide.flops_after / wide.flops_before,
            "relative_error": error, "kept_width_notes": len(wide.notes),
            "flops_ratio_narrow": thin.flops_after / thin.flops_before, "seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--multiplier", type=float, default=1.5, help="widening multiplier (--init keep)")
    parser.add_argument("--narrow", type=float, default=0.5, help="narrowing multiplier (--init fresh)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest relative output difference")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    rows, failed = [], 0
    for path in args.models:
        try:
            row = sweep_one(path, args.multiplier, args.narrow)
        except MorphNetError as exc:
            row = {"model": path.name, "error": str(exc)}
        ok = "error" not in row and row["relative_error"] <= args.tolerance
        failed += not ok
        rows.append(row)
        if "error" in row:
            print(f"{path.name:40s} ERROR {row['error']}", flush=True)
        else:
            print(f"{path.name:40s} wide x{row['flops_ratio_wide']:.2f} FLOPs, error {row['relative_error']:.1e}, "
                  f"{row['kept_width_notes']} groups kept; narrow x{row['flops_ratio_narrow']:.2f}; "
                  f"{row['seconds']:.1f} s {'ok' if ok else 'FAIL'}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{len(rows) - failed}/{len(rows)} exact within {args.tolerance:g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
