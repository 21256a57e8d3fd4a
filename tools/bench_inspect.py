#!/usr/bin/env python3
"""Benchmark `morphnet_onnx.inspect` (DEV-ONLY tool; results go in docs/benchmarks.md).

Part A, a real model: `inspect(path)` of a torchvision ResNet-50 export (about 100 MB with its
weights) against a baseline of `onnx.load(path)` + `onnx.save(model, tmp)` of the same file, the two
alternated in one process; target: median inspect time <= 2.0x the median baseline time.
The CLI end to end (Python start-up and imports included) and the first (cold) call of `inspect`
are timed once each and reported apart from the warm repeats.

Part B, scaling: synthetic residual nets of 125..1000 blocks built in memory; `inspect(model_proto)`
should grow linearly with depth: target: time per block at the largest depth <= 1.5x the time per
block at the smallest depth.

Run from the repository root with the project's venv (no torch needed)::

    .venv/bin/python tools/bench_inspect.py
    .venv/bin/python tools/bench_inspect.py --repeats 7 --depths 125,250,500,1000 --json bench.json

Exit status: 0 when both targets are met, 1 when one is missed, 2 when the model file is missing.
Ratios only mean something within one run on one machine: never turn them into timed tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from harness import ZOO, machine_info, machine_line, summary, timed, write_json  # tools/harness.py
from morphnet_onnx import inspect
from morphnet_onnx.builders import Net

DEFAULT_MODEL = str(ZOO / "resnet50_bn.onnx")
RATIO_TARGET = 2.0
SCALING_TARGET = 1.5


# ---- part A: a real model ----------------------------------------------------------------------------

def load_and_save(path: str, out: str) -> tuple[float, float]:
    """The baseline; returns its (load, save) split, timed inside the call."""
    start = time.perf_counter()
    model = onnx.load(path)
    loaded = time.perf_counter()
    onnx.save(model, out)
    return loaded - start, time.perf_counter() - loaded


def bench_model(path: str, repeats: int) -> dict:
    size = os.path.getsize(path)
    # First call of inspect in this process (lazy imports, caches, page cache as it is): timed apart.
    cold_s, report = timed(inspect, path)
    groups, flops = len(report.analysis.groups), report.costs.flops
    del report
    baseline, warm, load_only, save_only = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench_inspect_") as tmp:
        out = os.path.join(tmp, "resaved.onnx")
        for i in range(repeats):
            # Alternate the order too (ABBA...), so slow drift hits both sides alike.
            order = ("baseline", "inspect") if i % 2 == 0 else ("inspect", "baseline")
            for what in order:
                if what == "baseline":
                    seconds, (load_s, save_s) = timed(load_and_save, path, out)
                    baseline.append(seconds)
                    load_only.append(load_s)
                    save_only.append(save_s)
                else:
                    seconds, report = timed(inspect, path)
                    del report
                    warm.append(seconds)
    b, w = summary(baseline), summary(warm)
    ratio = w["median_s"] / b["median_s"]
    return {
        "model": path,
        "size_bytes": size,
        "repeats": repeats,
        "groups": groups,
        "flops": flops,
        "baseline_load_save": b,
        "baseline_load_only": summary(load_only),
        "baseline_save_only": summary(save_only),
        "inspect_warm": w,
        "inspect_cold_s": cold_s,
        "ratio_median": ratio,
        "ratio_min": w["min_s"] / b["min_s"],
        "target": RATIO_TARGET,
        "pass": ratio <= RATIO_TARGET,
        "cli": bench_cli(path),
    }


def bench_cli(path: str) -> dict:
    exe = Path(sys.executable).parent / "morphnet-onnx"
    cmd = [str(exe), "inspect", path, "--json"] if exe.exists() else [
        sys.executable, "-m", "morphnet_onnx.cli", "inspect", path, "--json"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    return {"command": " ".join(cmd) + " > /dev/null", "seconds": seconds, "returncode": proc.returncode,
            "stderr": proc.stderr.strip()[-500:]}


# ---- part B: scaling with depth ----------------------------------------------------------------------

def residual_net(blocks: int, width: int = 16, spatial: int = 8, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """input [1,W,S,S] -> blocks x (Conv3x3+BN+Relu -> Conv3x3+BN -> Add(skip) -> Relu) -> GAP -> Flatten -> Gemm."""
    net = Net(input_shape=(1, width, spatial, spatial), seed=seed)

    def conv_bn(prefix: str, x: str) -> str:
        w = net.const(net.rng.normal(0, 0.05, (width, width, 3, 3)).astype(np.float32), f"{prefix}.w")
        net.op("Conv", [x, w], name=f"{prefix}.conv", outputs=[f"{prefix}.conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        bn = [net.const(v.astype(np.float32), f"{prefix}.bn.{k}") for k, v in (
            ("scale", net.rng.uniform(0.5, 1.5, width)), ("bias", net.rng.normal(0, 0.1, width)),
            ("mean", net.rng.normal(0, 0.1, width)), ("var", net.rng.uniform(0.5, 1.5, width)))]
        return net.op("BatchNormalization", [f"{prefix}.conv", *bn], name=f"{prefix}.bn", outputs=[f"{prefix}.bn"],
                      epsilon=1e-5)

    x = "input"
    for i in range(blocks):
        p = f"block{i}"
        h = conv_bn(f"{p}.a", x)
        net.op("Relu", [h], name=f"{p}.a.relu", outputs=[f"{p}.a.relu"])
        h = conv_bn(f"{p}.b", f"{p}.a.relu")
        net.op("Add", [h, x], name=f"{p}.add", outputs=[f"{p}.add"])
        x = net.op("Relu", [f"{p}.add"], name=f"{p}.relu", outputs=[f"{p}.out"])
    net.op("GlobalAveragePool", [x], name="gap", outputs=["gap"])
    net.op("Flatten", ["gap"], name="flatten", outputs=["flat"], axis=1)
    fc_w = net.const(net.rng.normal(0, 0.05, (classes, width)).astype(np.float32), "fc.w")
    fc_b = net.const(np.zeros(classes, np.float32), "fc.b")
    net.op("Gemm", ["flat", fc_w, fc_b], name="fc", outputs=["logits"], transB=1)
    model = net.model("logits", graph_name=f"residual{blocks}", output_shapes={"logits": [1, classes]},
                      producer_name="bench_inspect")
    onnx.checker.check_model(model)
    return model


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    b, a = np.polyfit(x, y, 1)
    fit = a + b * x
    ss_res = float(((y - fit) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    dev = np.abs(y - fit)
    return {"a_s": float(a), "b_s_per_block": float(b), "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
            "max_dev_s": float(dev.max()), "max_dev_rel": float((dev / fit).max())}


def bench_scaling(depths: list[int], repeats: int) -> dict:
    rows = []
    for blocks in depths:
        model = residual_net(blocks)
        nodes = len(model.graph.node)
        times, groups = [], None
        for _ in range(repeats):
            copy = onnx.ModelProto()
            copy.CopyFrom(model)  # outside the timer: inspect gets a fresh proto each time
            seconds, report = timed(inspect, copy)
            times.append(seconds)
            groups = len(report.analysis.groups)
            del report
        expected = blocks + 2
        rows.append({"blocks": blocks, "nodes": nodes, "runs_s": times, "seconds": statistics.median(times),
                     "groups": groups, "expected_groups": expected})
    for prev, row in zip([None, *rows], rows):
        row["us_per_block"] = row["seconds"] / row["blocks"] * 1e6
        row["growth_vs_linear"] = (None if prev is None else
                                   (row["seconds"] / prev["seconds"]) / (row["blocks"] / prev["blocks"]))
    by_depth = sorted(rows, key=lambda r: r["blocks"])
    per_block_ratio = by_depth[-1]["us_per_block"] / by_depth[0]["us_per_block"]
    fit = linear_fit([r["blocks"] for r in rows], [r["seconds"] for r in rows]) if len(rows) > 1 else None
    return {"repeats": repeats, "rows": rows, "fit": fit, "per_block_ratio": per_block_ratio,
            "target": SCALING_TARGET, "pass": per_block_ratio <= SCALING_TARGET}


# ---- printing ----------------------------------------------------------------------------------------

def print_model(a: dict) -> None:
    b, w = a["baseline_load_save"], a["inspect_warm"]
    print(f"\n## Part A: {a['model']} ({a['size_bytes'] / 1e6:.1f} MB, {a['groups']} groups, "
          f"{a['flops'] / 1e9:.2f} GFLOPs), {a['repeats']} alternated repeats")
    print(f"{'what':<34} {'median s':>9} {'min s':>9} {'max s':>9}")
    print(f"{'onnx.load + onnx.save (baseline)':<34} {b['median_s']:>9.3f} {b['min_s']:>9.3f} {b['max_s']:>9.3f}")
    for label, key in (("  of which onnx.load", "baseline_load_only"), ("  of which onnx.save", "baseline_save_only")):
        p = a[key]
        print(f"{label:<34} {p['median_s']:>9.3f} {p['min_s']:>9.3f} {p['max_s']:>9.3f}")
    print(f"{'inspect(path), warm':<34} {w['median_s']:>9.3f} {w['min_s']:>9.3f} {w['max_s']:>9.3f}")
    print(f"ratio inspect / baseline: {a['ratio_median']:.2f}x of medians ({a['ratio_min']:.2f}x of mins)")
    print(f"inspect(path), first call in the process (cold): {a['inspect_cold_s']:.3f} s")
    cli = a["cli"]
    print(f"CLI end to end, once (start-up + imports included): {cli['seconds']:.3f} s "
          f"(exit {cli['returncode']}): {cli['command']}")
    if cli["returncode"]:
        print(f"  CLI stderr: {cli['stderr']}")
    print(f"{'PASS' if a['pass'] else 'FAIL'}: inspect takes {a['ratio_median']:.2f}x load+save "
          f"(target <= {a['target']:.1f}x)")


def print_scaling(s: dict) -> None:
    print(f"\n## Part B: synthetic residual nets, inspect(model_proto), median of {s['repeats']}")
    print(f"{'blocks':>6} {'nodes':>6} {'seconds':>8} {'us/block':>9} {'growth/linear':>13} {'groups':>7} "
          f"{'expected':>8}")
    for r in s["rows"]:
        growth = "-" if r["growth_vs_linear"] is None else f"{r['growth_vs_linear']:.2f}"
        mark = "" if r["groups"] == r["expected_groups"] else "  (differs)"
        print(f"{r['blocks']:>6} {r['nodes']:>6} {r['seconds']:>8.3f} {r['us_per_block']:>9.0f} {growth:>13} "
              f"{r['groups']:>7} {r['expected_groups']:>8}{mark}")
    f = s["fit"]
    if f:
        print(f"least-squares fit: time = {f['a_s'] * 1e3:.1f} ms + {f['b_s_per_block'] * 1e6:.0f} us x blocks; "
              f"R^2 = {f['r2']:.4f}; max deviation from the line {f['max_dev_s'] * 1e3:.1f} ms "
              f"({f['max_dev_rel'] * 100:.1f}%)")
    print(f"{'PASS' if s['pass'] else 'FAIL'}: time per block at the largest depth is {s['per_block_ratio']:.2f}x "
          f"that at the smallest (target <= {s['target']:.1f}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"the real model (default {DEFAULT_MODEL})")
    parser.add_argument("--repeats", type=int, default=5, help="alternated repeats for part A (default 5)")
    parser.add_argument("--depths", default="125,250,500,1000", help="residual blocks for part B (comma-separated)")
    parser.add_argument("--scaling-repeats", type=int, default=3, help="runs per depth in part B (median; default 3)")
    parser.add_argument("--skip-model", action="store_true", help="skip part A")
    parser.add_argument("--skip-scaling", action="store_true", help="skip part B")
    parser.add_argument("--json", metavar="OUT", help="also write all numbers as JSON to OUT")
    args = parser.parse_args(argv)

    if not args.skip_model and not Path(args.model).is_file():
        print(f"bench_inspect: {args.model}: no such file. Make it with the torch venv (see its docstring):\n"
              f"  /work/torchvenv/bin/python tools/export_torchvision.py --models resnet50 --variants bn \\\n"
              f"      --light-out \"$(mktemp -d)\" --no-reference   # keeps tests/data/ untouched\n"
              f"or pass --model PATH (or --skip-model).", file=sys.stderr)
        return 2
    depths = [int(d) for d in args.depths.split(",") if d.strip()]

    machine = machine_info()
    print(f"# bench_inspect, {machine['date']}, morphnet-onnx {machine['morphnet_onnx']} ({machine['git_commit']})")
    print(f"machine: {machine_line(machine)}")
    results: dict = {"machine": machine, "command": " ".join([Path(sys.executable).name, *sys.argv])}
    ok = True
    if not args.skip_model:
        results["model"] = bench_model(args.model, args.repeats)
        print_model(results["model"])
        ok &= results["model"]["pass"]
    if not args.skip_scaling and depths:
        results["scaling"] = bench_scaling(depths, args.scaling_repeats)
        print_scaling(results["scaling"])
        ok &= results["scaling"]["pass"]
    if args.json:
        write_json(args.json, results, indent=2)
        print(f"\nwrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
