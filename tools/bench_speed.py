#!/usr/bin/env python3
"""Speed of morphnet-onnx, every figure a ratio measured in one run on one machine (DEV-ONLY; issue 12).

One process runs four parts and prints one report (markdown tables on stdout, everything in `--json`):

1. models: `inspect`, `check` and `prune` of a ResNet-50 and a ViT-B/16 (torchvision graphs with real
   random weights, 102.5 MB and 346.7 MB) against `onnx.load` + `onnx.save` of the same file, alternated;
   `check` also against tools/bench_check.py's baseline (load + save + two onnxruntime runs).
2. latency: onnxruntime CPU inference latency of pruned models against the original's, next to their
   FLOP ratio, with and without `round_to=8`, at batch 1 and a larger batch, fixed threads.
   Goal: latency ratio <= FLOP ratio + 0.10 with `round_to=8`.
3. depth: `inspect`, `check` and `prune` of synthetic residual nets of growing depth, time per block.
4. training: tools/bench_train_step.py in a subprocess (the bundled 1-D ResNet): a regularized (MorphNet)
   step against a plain step (goal <= 1.05x), and the onnxruntime-training step against PyTorch's on CPU
   for the same net (goal <= 1.0x).

The pruned models of parts 1-3 are `check`'s random structures (`morphnet_onnx.checking.random_structure`:
the same fraction of every prunable group's channels removed at random) applied with
`prune(..., approximate_borders=True)`, so that every chosen channel goes, as it does after `shrink`
zeroed its gates (without it `prune` keeps the channels whose BatchNormalization shift a padded Conv
would read, and the FLOPs barely drop).

Models: `--resnet50` / `--vit` take ONNX files; by default the full exports of tools/export_torchvision.py
(~/.cache/morphnet-onnx/torchvision/*_bn.onnx) when they exist, otherwise the repository's light copies of the same
exports (tests/data/torchvision/*_bn.onnx) with every `ConstantOfShape` placeholder turned back into an
initializer of seeded random values (He-scaled; positive for norm scales and variances), written once
to `--work`. Either way the file has the export's graph and its full-size weights.

    .venv/bin/python tools/bench_speed.py --json /tmp/bench_speed.json           # full run
    .venv/bin/python tools/bench_speed.py --quick --json /tmp/bench_speed_quick.json

Exit status: 0 when the issue's three goals are met, 1 when one is missed, 2 on a missing input.
Ratios only mean something within one run on one machine: never turn them into timed tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import numpy_helper

from bench_inspect import linear_fit, residual_net  # tools/bench_inspect.py
from harness import ZOO, machine_info, timed, write_json  # tools/harness.py
import morphnet_onnx
from morphnet_onnx import check, inspect, prune
from morphnet_onnx.surgery.checking import random_structure
from morphnet_onnx.ops import POSITIVE_SLOTS
from morphnet_onnx.surgery.pruning import prepare

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(__file__).resolve().parent
CACHE = ZOO
LIGHT = ROOT / "tests" / "data" / "torchvision"
MNIST1D = ROOT / "models" / "resnet1d_mnist1d.onnx"

REGULARIZED_GOAL = 1.05
TORCH_GOAL = 1.0
LATENCY_MARGIN = 0.10
SHAPE_SUFFIX = "__SHAPE"  # how export_torchvision's light copies name a placeholder's shape

# Settings of the full run and of --quick (a smoke run: every part, fewer repeats and runs).
SETTINGS = {
    "full": {"repeats": 3, "depths": "50,100,200,400", "depth_repeats": 3, "fractions": "0.3,0.5,0.7",
             "latency_rounds": 5, "latency_budget_s": 20.0, "threads": "1,2",
             "train_args": []},
    "quick": {"repeats": 1, "depths": "16,32,64", "depth_repeats": 1, "fractions": "0.3,0.7",
              "latency_rounds": 3, "latency_budget_s": 3.0, "threads": "1",
              "train_args": ["--steps", "70", "--repeats", "1", "--paired-blocks", "4", "--no-fixed"]},
}


# ---- helpers ---------------------------------------------------------------------------------------

def med(values: list[float]) -> float:
    return statistics.median(values)


def materialize(model: onnx.ModelProto, seed: int = 0) -> tuple[onnx.ModelProto, int]:
    """The light copy's `ConstantOfShape(<name>__SHAPE) -> <name>` placeholders as initializers of seeded
    random values: He-scaled for tensors of 2 or more dims, U(0.5, 1.5) for norm scales and variances,
    N(0, 0.05) for other vectors. The model's own ConstantOfShape nodes (other names) stay."""
    rng = np.random.default_rng(seed)
    graph = model.graph
    stored = {t.name: t for t in graph.initializer}
    constant_nodes = {n.output[0]: i for i, n in enumerate(graph.node) if n.op_type == "Constant" and n.output}
    positive = {n.input[i] for n in graph.node for i in POSITIVE_SLOTS.get(n.op_type, ()) if i < len(n.input)}
    weights, dropped_nodes, dropped_inits = [], set(), set()
    for index, node in enumerate(graph.node):
        if node.op_type != "ConstantOfShape" or node.input[0] != node.output[0] + SHAPE_SUFFIX:
            continue
        source = node.input[0]
        if source in stored:
            shape_tensor = stored[source]
            dropped_inits.add(source)
        else:
            shape_tensor = graph.node[constant_nodes[source]].attribute[0].t
            dropped_nodes.add(constant_nodes[source])
        shape = [int(d) for d in numpy_helper.to_array(shape_tensor).reshape(-1)]
        fill = next(a.t for a in node.attribute if a.name == "value")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(fill.data_type)
        name = node.output[0]
        if name in positive:
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) > 1:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / int(np.prod(shape[1:])))
        else:
            value = rng.normal(0.0, 0.05, shape)
        weights.append(numpy_helper.from_array(value.astype(dtype), name))
        dropped_nodes.add(index)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(n for i, n in enumerate(graph.node) if i not in dropped_nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend([t for t in graph.initializer if t.name not in dropped_inits] + weights)
    return out, len(weights)


def model_file(name: str, given: str | None, work: Path) -> tuple[Path, str]:
    """(path, where it came from) of torchvision's `name` export (BatchNormalization kept)."""
    if given:
        return Path(given), "given"
    full = CACHE / f"{name}_bn.onnx"
    if full.is_file():
        return full, "full export (tools/export_torchvision.py)"
    light = LIGHT / f"{name}_bn.onnx"
    out = work / f"{name}_bn_random.onnx"
    origin = f"{light.relative_to(ROOT)} with its placeholders made random initializers (seed 0)"
    if not out.is_file():
        model, count = materialize(onnx.load(str(light)))
        onnx.checker.check_model(model)
        onnx.save(model, str(out))
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {count} weights made random)", flush=True)
    return out, origin


def structure_of(model, fraction: float, seed: int = 0) -> dict:
    """`check`'s random structure at `fraction` as a structure dict (made outside any timer)."""
    loaded, analysis = prepare(model)
    return random_structure(loaded, analysis, fraction, seed).to_dict(analysis)


# ---- part 1: inspect / check / prune of real-size models --------------------------------------------

def load_and_save(path: Path, out: Path) -> None:
    onnx.save(onnx.load(str(path)), str(out))


def load_save_run(path: Path, out: Path) -> None:
    """tools/bench_check.py's baseline, what `check` cannot avoid: load, save, and two onnxruntime
    sessions (original and pruned) each run once on a batch of 2 (onnxruntime's default threads)."""
    model = onnx.load(str(path))
    onnx.save(model, str(out))
    data = model.SerializeToString()
    for _ in range(2):
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        sess = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        sess.run(None, feeds(sess, 2))


def bench_models(models: dict[str, tuple[Path, str]], repeats: int, fraction: float, work: Path) -> dict:
    results = {}
    for label, (path, origin) in models.items():
        structure = structure_of(path, fraction)
        slug = label.replace("/", "_")
        resaved, pruned = work / f"{slug}_resaved.onnx", work / f"{slug}_pruned.onnx"
        ops = {
            "load+save": lambda: load_and_save(path, resaved),
            "inspect": lambda: inspect(path),
            "check": lambda: check(path, fraction=fraction, seed=0),
            "prune": lambda: prune(path, structure, pruned, approximate_borders=True),
            "load+save+2 runs": lambda: load_save_run(path, resaved),
        }
        times: dict[str, list[float]] = {k: [] for k in ops}
        cold, facts = {}, {}
        # Round 0 is the warm-up (first call in the process: imports, caches), reported apart; then the
        # five are alternated, the order rotated each round, so drift hits them alike.
        for round_ in range(repeats + 1):
            names = list(ops)
            names = names[round_ % len(names):] + names[:round_ % len(names)]
            for what in names:
                seconds, result = timed(ops[what])
                if round_ == 0:
                    cold[what] = seconds
                    if what == "inspect":
                        facts.update(groups=len(result.analysis.groups), flops=result.costs.flops,
                                     params=result.costs.params)
                    elif what == "check":
                        facts.update(check_passed=result.passed, check_flops_ratio=result.flops_after / result.flops_before)
                    elif what == "prune":
                        facts["prune_flops_ratio"] = result.flops_after / result.flops_before
                else:
                    times[what].append(seconds)
                del result
            print(f"  {label} round {round_}: " + ", ".join(
                f"{w} {(cold[w] if round_ == 0 else times[w][-1]):.3f} s" for w in ops), flush=True)
        base = med(times["load+save"])
        results[label] = {
            "path": str(path), "origin": origin, "size_bytes": path.stat().st_size, **facts,
            "fraction": fraction, "repeats": repeats, "runs_s": times, "cold_s": cold,
            "median_s": {k: med(v) for k, v in times.items()},
            "ratio": {k: med(v) / base for k, v in times.items() if k != "load+save"},
            "check_ratio_bench_check": med(times["check"]) / med(times["load+save+2 runs"]),
        }
    return results


# ---- part 2: realized onnxruntime latency of pruned models ------------------------------------------

def session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(sess: onnxruntime.InferenceSession, batch: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for value in sess.get_inputs():
        shape = [batch if i == 0 else d for i, d in enumerate(value.shape)]
        if not all(isinstance(d, int) for d in shape):
            raise SystemExit(f"{value.name}: symbolic dims besides the batch: {value.shape}")
        out[value.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def pruned_variants(label: str, path: Path, fractions: list[float], work: Path) -> list[dict]:
    """The original and, per fraction, the random structure pruned with round_to 1 and 8."""
    variants = [{"name": "original", "fraction": 0.0, "round_to": 1, "path": path, "flops_ratio": 1.0}]
    for fraction in fractions:
        structure = structure_of(path, fraction)
        for round_to in (1, 8):
            out = work / f"{label.replace('/', '_')}_f{fraction}_r{round_to}.onnx"
            seconds, result = timed(prune, path, structure, out, round_to=round_to, approximate_borders=True)
            variants.append({"name": f"f{fraction} r{round_to}", "fraction": fraction, "round_to": round_to,
                             "path": out, "flops_ratio": result.flops_after / result.flops_before,
                             "params_ratio": result.params_after / result.params_before, "prune_s": seconds})
    return variants


def measure_latency(variants: list[dict], threads: int, batch: int, rounds: int, budget_s: float) -> dict:
    """Median latency of each variant: sessions built once, warmed up, then `rounds` rounds that run
    every variant in turn (order rotated) `per_round` times, sized so the cell takes about budget_s."""
    sessions = [session(v["path"], threads) for v in variants]
    inputs = [feeds(s, batch) for s in sessions]
    estimate = []
    for s, x in zip(sessions, inputs):
        s.run(None, x)
        seconds, _ = timed(s.run, None, x)
        estimate.append(seconds)
    per_round = max(1, round(budget_s / (rounds * sum(estimate))))
    runs: list[list[float]] = [[] for _ in variants]
    for round_ in range(rounds):
        order = list(range(len(variants)))
        order = order[round_ % len(order):] + order[:round_ % len(order)]
        for i in order:
            s, x = sessions[i], inputs[i]
            for _ in range(per_round):
                start = time.perf_counter()
                s.run(None, x)
                runs[i].append(time.perf_counter() - start)
    base, base_min = med(runs[0]), min(runs[0])
    rows = []
    for v, r in zip(variants, runs):
        rows.append({"name": v["name"], "fraction": v["fraction"], "round_to": v["round_to"],
                     "flops_ratio": v["flops_ratio"], "median_s": med(r), "min_s": min(r), "runs": len(r),
                     "latency_ratio": med(r) / base, "latency_ratio_min": min(r) / base_min})
    return {"threads": threads, "batch": batch, "rounds": rounds, "per_round": per_round, "rows": rows}


def bench_latency(models: dict[str, tuple[Path, int]], fractions: list[float], threads: list[int], rounds: int,
                  budget_s: float, work: Path) -> dict:
    results = {}
    for label, (path, big_batch) in models.items():
        variants = pruned_variants(label, path, fractions, work)
        cells = []
        for t in threads:
            for batch in (1, big_batch):
                cell = measure_latency(variants, t, batch, rounds, budget_s)
                cells.append(cell)
                print(f"  {label} threads {t} batch {batch}: " + ", ".join(
                    f"{r['name']} {r['latency_ratio']:.2f}x (FLOPs {r['flops_ratio']:.2f}x)" for r in cell["rows"][1:]),
                      flush=True)
        results[label] = {"path": str(path), "variants": [
            {k: (str(v) if k == "path" else v) for k, v in var.items()} for var in variants], "cells": cells}
    return results


# ---- part 3: depth --------------------------------------------------------------------------------

def bench_depth(depths: list[int], repeats: int, fraction: float) -> dict:
    # One call of each on a small net first: the first session, imports and caches are not per block.
    warm = residual_net(4)
    inspect(warm), check(warm, fraction=fraction), prune(warm, structure_of(warm, fraction), approximate_borders=True)
    rows = []
    for blocks in depths:
        model = residual_net(blocks)
        structure = structure_of(model, fraction)
        ops = {
            "inspect": lambda m: inspect(m),
            "check": lambda m: check(m, fraction=fraction, seed=0),
            "prune": lambda m: prune(m, structure, approximate_borders=True),
        }
        times = {k: [] for k in ops}
        for _ in range(repeats):
            for what, fn in ops.items():
                copy = onnx.ModelProto()
                copy.CopyFrom(model)  # outside the timer: a fresh proto each call
                seconds, result = timed(fn, copy)
                times[what].append(seconds)
                del result
        row = {"blocks": blocks, "nodes": len(model.graph.node), "runs_s": times,
               "seconds": {k: med(v) for k, v in times.items()}}
        row["us_per_block"] = {k: v / blocks * 1e6 for k, v in row["seconds"].items()}
        rows.append(row)
        print(f"  {blocks} blocks: " + ", ".join(f"{k} {v:.3f} s" for k, v in row["seconds"].items()), flush=True)
    out = {"repeats": repeats, "fraction": fraction, "rows": rows, "per_block_ratio": {}, "fit": {}}
    if len(rows) > 1:
        for what in ("inspect", "check", "prune"):
            out["per_block_ratio"][what] = rows[-1]["us_per_block"][what] / rows[0]["us_per_block"][what]
            out["fit"][what] = linear_fit([r["blocks"] for r in rows], [r["seconds"][what] for r in rows])
    return out


# ---- part 4: training step (tools/bench_train_step.py) ----------------------------------------------

def bench_train(threads: int, extra: list[str], work: Path) -> dict:
    out = work / "bench_train_step.json"
    out.unlink(missing_ok=True)
    # PyTorch runs with this Python when it has torch (the [bench] extra), else that figure is left out.
    torch = ["--torch-python", sys.executable] if importlib.util.find_spec("torch") else ["--no-torch"]
    cmd = [sys.executable, str(TOOLS / "bench_train_step.py"), "--threads", str(threads), "--torch-threads",
           str(threads), *torch, "--json", str(out), *extra]
    print(f"  {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if not out.is_file():
        raise RuntimeError(f"bench_train_step failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    data = json.loads(out.read_text())
    s = data["summary"]
    return {
        "command": " ".join(cmd), "seconds": seconds, "exit": proc.returncode, "threads": threads,
        "plain_mean_s": s["plain"]["mean_s"], "plain_median_s": s["plain"]["median_s"],
        "morphnet_mean_s": s["morphnet"]["mean_s"], "morphnet_median_s": s["morphnet"]["median_s"],
        "torch_median_s": s.get("torch", {}).get("median_s"), "torch_mean_s": s.get("torch", {}).get("mean_s"),
        "regularized_ratio": data["mean_ratio"], "regularized_median_ratio": data["median_ratio"],
        "paired_ratio": data["paired"]["mean_ratio"] if data.get("paired") else None,
        "ort_torch_ratio": data["torch_ratio"], "run_spread": data["run_spread"],
        "steps": data["args"]["steps"], "repeats": data["args"]["repeats"], "window": data["window"],
        "stdout_tail": proc.stdout.strip()[-3000:],
    }


# ---- report ---------------------------------------------------------------------------------------

def report(results: dict) -> list[dict]:
    """Print the markdown tables; return the goal verdicts."""
    goals = []
    m = results.get("models")
    if m:
        print("\n### inspect, check and prune against onnx.load + onnx.save of the same file\n")
        print("| model | file MB | groups | GFLOPs | load+save s | inspect s | check s | prune s "
              "| inspect / base | check / base | prune / base | load+save+2 runs s | check / that |")
        print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for label, r in m.items():
            s, q = r["median_s"], r["ratio"]
            print(f"| {label} | {r['size_bytes'] / 1e6:.1f} | {r['groups']} | {r['flops'] / 1e9:.2f} | "
                  f"{s['load+save']:.3f} | {s['inspect']:.3f} | {s['check']:.3f} | {s['prune']:.3f} | "
                  f"{q['inspect']:.2f}x | {q['check']:.2f}x | {q['prune']:.2f}x | {s['load+save+2 runs']:.3f} | "
                  f"{r['check_ratio_bench_check']:.2f}x |")
        first = next(iter(m.values()))
        print(f"\nMedians of {first['repeats']} alternated rounds after a warm-up round; check and prune at "
              f"fraction {first['fraction']} (prune: approximate_borders). base = onnx.load + onnx.save. "
              f"load+save+2 runs = tools/bench_check.py's baseline (two onnxruntime sessions each run on a batch "
              f"of 2, what check cannot avoid). Models: " +
              "; ".join(f"{k}: {r['origin']}" for k, r in m.items()) + ". FLOPs kept by check / prune: " +
              ", ".join(f"{k} {r['check_flops_ratio']:.2f} / {r['prune_flops_ratio']:.2f}"
                        f"{'' if r['check_passed'] else ' (CHECK FAILED)'}" for k, r in m.items()))
    lat = results.get("latency")
    if lat:
        print("\n### onnxruntime CPU latency of pruned models against their FLOP ratio\n")
        print("| model | threads | batch | structure | round_to | FLOPs ratio | latency ratio | min ratio "
              "| latency - FLOPs | runs | original ms |")
        print("|---|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|")
        for label, r in lat.items():
            worst = None
            for cell in r["cells"]:
                base_ms = cell["rows"][0]["median_s"] * 1e3
                for row in cell["rows"][1:]:
                    gap = row["latency_ratio"] - row["flops_ratio"]
                    print(f"| {label} | {cell['threads']} | {cell['batch']} | random {row['fraction']} | "
                          f"{row['round_to']} | {row['flops_ratio']:.3f} | {row['latency_ratio']:.3f} | "
                          f"{row['latency_ratio_min']:.3f} | {gap:+.3f} | {row['runs']} | {base_ms:.2f} |")
                    if row["round_to"] == 8 and (worst is None or gap > worst[0]):
                        worst = (gap, cell["threads"], cell["batch"], row["name"])
            if worst:
                goals.append({"goal": f"{label}: pruned latency ratio <= FLOP ratio + {LATENCY_MARGIN:.2f} with "
                                      f"round_to 8 (worst row)",
                              "value": f"{worst[0]:+.3f} ({worst[1]} thread(s), batch {worst[2]}, {worst[3]})",
                              "met": worst[0] <= LATENCY_MARGIN})
    d = results.get("depth")
    if d:
        print(f"\n### time against depth (synthetic residual nets, median of {d['repeats']})\n")
        print("| blocks | nodes | inspect s | check s | prune s | inspect µs/block | check µs/block | prune µs/block |")
        print("|--:|--:|--:|--:|--:|--:|--:|--:|")
        for row in d["rows"]:
            s, u = row["seconds"], row["us_per_block"]
            print(f"| {row['blocks']} | {row['nodes']} | {s['inspect']:.3f} | {s['check']:.3f} | {s['prune']:.3f} | "
                  f"{u['inspect']:.0f} | {u['check']:.0f} | {u['prune']:.0f} |")
        if d["per_block_ratio"]:
            print("\nTime per block at the largest depth over the smallest: " + ", ".join(
                f"{k} {v:.2f}x (fit {d['fit'][k]['b_s_per_block'] * 1e6:.0f} µs/block, R² {d['fit'][k]['r2']:.3f})"
                for k, v in d["per_block_ratio"].items()))
    t = results.get("train")
    if t:
        print(f"\n### training step (tools/bench_train_step.py, {t['threads']} thread(s) each, {t['steps']} steps, "
              f"{t['repeats']} repeat(s))\n")
        print("| figure | value |")
        print("|---|--:|")
        print(f"| plain step, mean ms | {t['plain_mean_s'] * 1e3:.2f} |")
        print(f"| MorphNet step (regularizer + controller), mean ms | {t['morphnet_mean_s'] * 1e3:.2f} |")
        print(f"| MorphNet / plain (per-repeat mean ratio, median) | {t['regularized_ratio']:.3f}x |")
        if t["paired_ratio"] is not None:
            print(f"| MorphNet / plain, paired blocks | {t['paired_ratio']:.3f}x |")
        if t["torch_median_s"] is not None:
            print(f"| PyTorch step, median ms | {t['torch_median_s'] * 1e3:.2f} |")
            print(f"| onnxruntime-training plain / PyTorch (medians) | {t['ort_torch_ratio']:.3f}x |")
        goals.append({"goal": f"regularized step <= {REGULARIZED_GOAL}x plain", "value": f"{t['regularized_ratio']:.3f}x",
                      "met": t["regularized_ratio"] <= REGULARIZED_GOAL})
        if t["ort_torch_ratio"] is not None:
            goals.append({"goal": "onnxruntime-training step no slower than PyTorch's",
                          "value": f"{t['ort_torch_ratio']:.3f}x", "met": t["ort_torch_ratio"] <= TORCH_GOAL})
    if goals:
        print("\n### goals\n")
        print("| goal | measured | verdict |")
        print("|---|---|---|")
        for g in goals:
            print(f"| {g['goal']} | {g['value']} | {'met' if g['met'] else 'NOT met'} |")
    return goals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: every part, fewer repeats and runs")
    parser.add_argument("--resnet50", help="ResNet-50-sized ONNX file (default: see the docstring)")
    parser.add_argument("--vit", help="ViT-sized ONNX file (default: see the docstring)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bench_speed"),
                        help="folder for the made models and the pruned copies (kept between runs)")
    parser.add_argument("--parts", default="models,latency,depth,train", help="comma-separated subset")
    parser.add_argument("--repeats", type=int, help="alternated rounds of part 1 (full 3, quick 1)")
    parser.add_argument("--fraction", type=float, default=0.5, help="check/prune fraction in parts 1 and 3")
    parser.add_argument("--fractions", help="random-structure fractions of part 2 (full 0.3,0.5,0.7)")
    parser.add_argument("--threads", help="onnxruntime intra-op threads of part 2 (full 1,2)")
    parser.add_argument("--latency-budget", type=float, help="seconds per latency cell (full 20)")
    parser.add_argument("--depths", help="residual blocks of part 3 (full 50,100,200,400)")
    parser.add_argument("--train-threads", type=int, default=1,
                        help="threads of onnxruntime and of PyTorch in part 4 (default 1: the steadier on 2 vCPUs)")
    parser.add_argument("--json", metavar="OUT", help="also write every number as JSON to OUT")
    args = parser.parse_args(argv)
    preset = SETTINGS["quick" if args.quick else "full"]
    repeats = args.repeats or preset["repeats"]
    fractions = [float(f) for f in (args.fractions or preset["fractions"]).split(",")]
    threads = [int(t) for t in (args.threads or preset["threads"]).split(",")]
    budget = args.latency_budget or preset["latency_budget_s"]
    depths = [int(d) for d in (args.depths or preset["depths"]).split(",")]
    parts = set(args.parts.split(","))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for given in (args.resnet50, args.vit):
        if given and not Path(given).is_file():
            print(f"bench_speed: {given}: no such file", file=sys.stderr)
            return 2

    machine = machine_info()
    started = time.perf_counter()
    print(f"# bench_speed{' --quick' if args.quick else ''}, {machine['date']}, morphnet-onnx "
          f"{machine['morphnet_onnx']} ({machine['git_commit']})")
    print(f"machine: {machine['nproc']} cores, {machine['cpu']}; Python {machine['python']}, onnx {machine['onnx']}, "
          f"onnxruntime {machine['onnxruntime']}, numpy {machine['numpy']}; load average at start "
          f"{' '.join(f'{x:.2f}' for x in machine['loadavg_start'])}")
    # A script's sys.path starts at tools/, so the package is the one the venv installed (editable: its
    # checkout), which need not be this file's checkout: say which one was measured.
    package = str(Path(morphnet_onnx.__file__).resolve().parent)
    print(f"package measured: {package}", flush=True)
    results: dict = {"machine": machine, "command": " ".join([Path(sys.executable).name, *sys.argv]),
                     "package": package, "quick": args.quick, "timings_s": {}}
    resnet = model_file("resnet50", args.resnet50, work) if parts & {"models", "latency"} else None
    if "models" in parts:
        print("\n## part 1: models", flush=True)
        t0 = time.perf_counter()
        results["models"] = bench_models({"ResNet-50": resnet, "ViT-B/16": model_file("vit_b_16", args.vit, work)},
                                         repeats, args.fraction, work)
        results["timings_s"]["models"] = time.perf_counter() - t0
    if "latency" in parts:
        print("\n## part 2: latency", flush=True)
        t0 = time.perf_counter()
        results["latency"] = bench_latency({"ResNet-50": (resnet[0], 8), "resnet1d_mnist1d": (MNIST1D, 64)},
                                           fractions, threads, preset["latency_rounds"], budget, work)
        results["timings_s"]["latency"] = time.perf_counter() - t0
    if "depth" in parts:
        print("\n## part 3: depth", flush=True)
        t0 = time.perf_counter()
        results["depth"] = bench_depth(depths, args.repeats or preset["depth_repeats"], args.fraction)
        results["timings_s"]["depth"] = time.perf_counter() - t0
    if "train" in parts:
        print("\n## part 4: training step", flush=True)
        t0 = time.perf_counter()
        results["train"] = bench_train(args.train_threads, preset["train_args"], work)
        results["timings_s"]["train"] = time.perf_counter() - t0
    results["timings_s"]["total"] = time.perf_counter() - started
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    goals = report(results)
    results["goals"] = goals
    print(f"\ntook {results['timings_s']['total'] / 60:.1f} min (" + ", ".join(
        f"{k} {v:.0f} s" for k, v in results["timings_s"].items() if k != "total") + "); load average at end "
          f"{' '.join(f'{x:.2f}' for x in results['machine']['loadavg_end'])}")
    if args.json:
        write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0 if all(g["met"] for g in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
