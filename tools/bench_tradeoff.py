#!/usr/bin/env python3
"""Accuracy against FLOPs at equal compute: `shrink` as written against Torch-Pruning and the uniform
width multiplier (DEV-ONLY: needs the `bench` extra, `pip install -e .[bench]`: torch, torch-pruning,
matplotlib).

    python tools/bench_tradeoff.py [--quick] [--out docs/benchmarks] [--work DIR] [--jobs 2] [--resume]

The protocol is the one users compare tools by: every arm spends the same number T of optimizer
steps at the same batch size (64) and with the same recipe (AdamW, one-cycle, lr 3e-3, weight decay
1e-4), from the same weights, and is scored on the same validation set. Two starting points, per
seed s:

- scratch: init_s, the task's network with fresh weights (expand(original, multiplier=1.0,
  init="fresh", seed=s)): every arm starts from these weights;
- trained: dense_s, init_s trained T steps (`train`): every arm starts from these weights, as a user
  runs `shrink trained.onnx`.

The arms, at each budget B in the task's budgets (FLOPs, fraction of the original):

- shrink-as-written: shrink(start, budget=Bx, steps=T) with the package's default recipe (its
  regularized steps and the training after its cut together are T; a `--variant` changes the
  recipe, for the ablations of docs/benchmarks.md);
- torch-pruning: the same network in torch, loaded with the start's weights, Torch-Pruning 1.6's
  README recipe: GroupNormPruner with GroupMagnitudeImportance(p=2) (group norm), its default reg
  (1e-4) applied after every backward (`pruner.regularize`) for the sparse-training steps
  (`--tp-sparse-share` of T), then iterative pruning: `--tp-iterative-steps` rounds, each pruning
  (the classifier ignored; global pruning, one ranking over every layer, and local pruning, its
  default, the same ratio in every layer: both are run, and the better at each budget is the
  baseline) to the next point of a linear FLOPs schedule down to B
  (tp.utils.count_ops_and_params), the rounds spread over the first half of the rest of T, which is
  one fine-tune (one schedule) of the network being pruned: its second half trains the final
  structure. One sparse training per seed and start serves every budget;
- uniform: one width multiplier to B (expand(start, budget=Bx)) trained T steps: from scratch with
  fresh weights; from the trained start with its strongest channels kept (init="keep"). The scratch
  start also trains the full width (the multiplier 1.0 point: dense_s);
- (scratch start, `--paper-arms`, MorphNet's own protocol, for the figures kept from issue 12)
  shrink-retrained: the learned structure trained from scratch T steps; expand: that structure
  expanded to 1.0x, trained from scratch T steps;
- (--diagnostics) torch-dense: init_s trained T steps in torch with the same recipe (the gap between
  onnxruntime-training and torch on the same net, weights and steps).

Every arm's row records the optimizer steps it took (counted where they are taken), and
tests/test_bench_tradeoff.py checks that each is T.

Tasks: `mnist1d` (the bundled example, models/resnet1d_mnist1d.onnx), `digits` (the 2-D ResNet of
tools/export_digits_resnet.py at widths 8-16-32 on the 28x28 digit set of models/digits.py) and
`patterns` (the same 2-D ResNet at widths 12-24-48 on models/patterns.py's 16x16 texture task, 16
classes of 3 modes each: made here because the digit set saturates near 99.4% at every width; its
uniform curve spans tens of points).

Headline figures (docs/benchmarks/tradeoff.json, per task and start, from the per-budget means over
seeds): `as_written_vs_torch_pruning` (shrink-as-written minus torch-pruning, points, per budget:
goal >= 0 at every budget), `as_written_vs_uniform` (the mean over budgets of shrink-as-written
minus uniform at the same budget: goal >= +1.0 where the uniform curve spans more than 3 points
over the budgets), `cut_cost` (the accuracy of shrink's training session just before its cut minus
that of the cut model before any further training, points: goal <= 2 at every budget), `landing`
(written FLOPs over the budget) and, from the scratch start, the figures kept from issue 12:
`flops_saved_at_equal_accuracy` and `expand_accuracy_gain` (shrink-retrained and expand against the
uniform curve) and `vs_torch_pruning` (shrink-retrained against torch-pruning's curve). Results of
every finished job are kept in --work (`--resume` skips them), so a killed run loses at most the
jobs in flight.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT / "tools", ROOT / "models"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

METHODS = ("uniform", "shrink-as-written", "torch-pruning", "dense", "shrink-retrained", "expand", "torch-dense")
STARTS = ("scratch", "trained")
# Linear interpolation may reach this far (relative) past the end of a curve's FLOPs range:
# a budget lands just below its target (0.499x for 0.5x), a baseline point may land just above.
FLOPS_TOLERANCE = 0.02
# The recipe of every training (TrainOptions), whatever the arm.
RECIPE = {"batch_size": 64, "lr": 3e-3, "optimizer": "adamw", "schedule": "onecycle", "weight_decay": 1e-4}
# Goals of issue 21.
GOAL_VS_UNIFORM = 1.0  # points, mean over budgets, where the uniform curve spans more than...
UNIFORM_SPAN = 3.0  # points over the budgets
GOAL_CUT_COST = 2.0  # points at most
# Torch-Pruning's pruner steps 1/TP_GRANULARITY of the way to removing everything at a time; its
# pruning rounds take such steps until the FLOPs goal (count_ops_and_params after each: 100 keeps
# that under a few seconds per round and lands within about 1% of the budget).
TP_GRANULARITY = 100


# ---- pure functions (tests/test_bench_tradeoff.py) --------------------------------------------------

def upper_envelope(curve: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(flops, accuracy) sorted by FLOPs, each accuracy raised to the best at no more FLOPs: the best
    a method reaches within a FLOPs budget. Noise that makes a wider model score lower than a narrower
    one then flattens the curve instead of folding it (which would make the inverse ambiguous)."""
    best = -math.inf
    out = []
    for flops, accuracy in sorted(curve):
        best = max(best, accuracy)
        out.append((float(flops), float(best)))
    return out


def accuracy_at_flops(curve: list[tuple[float, float]], flops: float,
                      tolerance: float = FLOPS_TOLERANCE) -> float | None:
    """The envelope's accuracy at `flops`, linear between its points; None outside its FLOPs range
    (beyond `tolerance`, relative, where the end value is used)."""
    env = upper_envelope(curve)
    if not env:
        return None
    low, high = env[0][0], env[-1][0]
    if flops < low * (1 - tolerance) or flops > high * (1 + tolerance):
        return None
    if flops <= low:
        return env[0][1]
    if flops >= high:
        return env[-1][1]
    for (f0, a0), (f1, a1) in zip(env, env[1:]):
        if f0 <= flops <= f1:
            return a0 if f1 == f0 else a0 + (a1 - a0) * (flops - f0) / (f1 - f0)
    return None  # unreachable


def flops_at_accuracy(curve: list[tuple[float, float]], accuracy: float) -> float | None:
    """The fewest FLOPs at which the envelope reaches `accuracy`, linear between its points; None when
    `accuracy` is above the best the curve reaches or below its cheapest point (no extrapolation)."""
    env = upper_envelope(curve)
    if not env or accuracy > env[-1][1] or accuracy < env[0][1]:
        return None
    if accuracy == env[0][1]:
        return env[0][0]
    for (f0, a0), (f1, a1) in zip(env, env[1:]):
        if a0 < accuracy <= a1:
            return f0 + (f1 - f0) * (accuracy - a0) / (a1 - a0)
    return None  # unreachable


def flops_saved_at_equal_accuracy(baseline: list[tuple[float, float]],
                                  points: list[tuple[float, float]]) -> dict:
    """For each (flops, accuracy) point: 1 - flops / (the baseline's FLOPs at that accuracy). `mean`
    over the points the baseline's accuracy range covers (None when none is)."""
    rows = []
    for flops, accuracy in points:
        needed = flops_at_accuracy(baseline, accuracy)
        rows.append({"flops": flops, "accuracy": accuracy, "baseline_flops": needed,
                     "saved": None if needed is None else 1.0 - flops / needed})
    values = [r["saved"] for r in rows if r["saved"] is not None]
    return {"mean": float(np.mean(values)) if values else None, "points": rows,
            "covered": len(values), "of": len(rows)}


def accuracy_gain_at_equal_flops(baseline: list[tuple[float, float]],
                                 points: list[tuple[float, float]]) -> dict:
    """For each (flops, accuracy) point: accuracy - the baseline's accuracy at those FLOPs, in the
    accuracies' unit. `mean` over the points inside the baseline's FLOPs range."""
    rows = []
    for flops, accuracy in points:
        reference = accuracy_at_flops(baseline, flops)
        rows.append({"flops": flops, "accuracy": accuracy, "baseline_accuracy": reference,
                     "gain": None if reference is None else accuracy - reference})
    values = [r["gain"] for r in rows if r["gain"] is not None]
    return {"mean": float(np.mean(values)) if values else None, "points": rows,
            "covered": len(values), "of": len(rows)}


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (method, start, variant, point): FLOPs, params, accuracy and steps, mean and std
    (ddof 1) over seeds; for shrink also the cut cost (mean and worst seed) and the learned step."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["method"], row.get("start", "scratch"), row.get("variant", "default"), str(row["point"]))
        groups.setdefault(key, []).append(row)
    table = []
    for (method, start, variant, point), members in groups.items():
        acc = np.array([m["accuracy"] for m in members], dtype=float)
        flops = np.array([m["flops"] for m in members], dtype=float)
        params = np.array([m["params"] for m in members], dtype=float)
        many = len(members) > 1
        entry = {"method": method, "start": start, "variant": variant, "point": point, "seeds": len(members),
                 "flops_mean": float(flops.mean()), "flops_std": float(flops.std(ddof=1)) if many else 0.0,
                 "params_mean": float(params.mean()),
                 "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)) if many else 0.0,
                 "steps": sorted({m.get("steps") for m in members}, key=lambda s: (s is None, s))}
        cuts = [m["cut_cost"] for m in members if m.get("cut_cost") is not None]
        if cuts:
            entry.update(cut_cost_mean=float(np.mean(cuts)), cut_cost_max=float(np.max(cuts)))
        table.append(entry)
    order = {m: i for i, m in enumerate(METHODS)}
    table.sort(key=lambda r: (r["start"], order.get(r["method"], 99), r["variant"], r["flops_mean"]))
    return table


def curve(table: list[dict], method: str, start: str = "scratch", variant: str = "default") -> list[tuple[float, float]]:
    return sorted((r["flops_mean"], r["accuracy_mean"]) for r in at_budget(table, method, start, variant).values())


def at_budget(table: list[dict], method: str, start: str, variant: str = "default") -> dict[str, dict]:
    """The rows of a method and start by point; torch-pruning: at each point the better of its modes
    (global and local pruning), so that shrink is compared with the stronger one."""
    if method == "torch-pruning":
        best: dict[str, dict] = {}
        for r in table:
            if r["method"] == method and r["start"] == start and (
                    r["point"] not in best or r["accuracy_mean"] > best[r["point"]]["accuracy_mean"]):
                best[r["point"]] = r
        return best
    return {r["point"]: r for r in table if r["method"] == method and r["start"] == start and r["variant"] == variant}


def width_span(table: list[dict], start: str = "scratch", budgets: tuple[float, ...] | None = None) -> float | None:
    """Uniform accuracy (points) at the largest point minus at the smallest (only the budgets when given)."""
    rows = sorted((r for r in table if r["method"] == "uniform" and r["start"] == start
                   and (budgets is None or float(r["point"]) in budgets)), key=lambda r: r["flops_mean"])
    return 100 * (rows[-1]["accuracy_mean"] - rows[0]["accuracy_mean"]) if len(rows) > 1 else None


def equal_compute(table: list[dict], start: str, budgets: tuple[float, ...], variant: str = "default") -> dict:
    """Issue 21's figures for one start: shrink as written against torch-pruning and uniform at each
    budget (points, from the means), the cut cost and where the written model landed."""
    shrink = at_budget(table, "shrink-as-written", start, variant)
    tp = at_budget(table, "torch-pruning", start)
    uniform = at_budget(table, "uniform", start)
    per = {}
    for budget in budgets:
        key = str(budget)
        s, t, u = shrink.get(key), tp.get(key), uniform.get(key)
        per[key] = {
            "shrink": None if s is None else 100 * s["accuracy_mean"],
            "torch_pruning": None if t is None else 100 * t["accuracy_mean"],
            "torch_pruning_mode": None if t is None else t["variant"],
            "uniform": None if u is None else 100 * u["accuracy_mean"],
            "vs_torch_pruning": None if s is None or t is None else 100 * (s["accuracy_mean"] - t["accuracy_mean"]),
            "vs_uniform": None if s is None or u is None else 100 * (s["accuracy_mean"] - u["accuracy_mean"]),
            "cut_cost_mean": None if s is None or "cut_cost_mean" not in s else 100 * s["cut_cost_mean"],
            "cut_cost_max": None if s is None or "cut_cost_max" not in s else 100 * s["cut_cost_max"],
            "shrink_flops_ratio": None,
        }
    vs_tp = [p["vs_torch_pruning"] for p in per.values() if p["vs_torch_pruning"] is not None]
    vs_u = [p["vs_uniform"] for p in per.values() if p["vs_uniform"] is not None]
    cuts = [p["cut_cost_max"] for p in per.values() if p["cut_cost_max"] is not None]
    span = width_span(table, start, budgets)
    return {
        "as_written_vs_torch_pruning": {"per_budget": {k: p["vs_torch_pruning"] for k, p in per.items()},
                                        "min": min(vs_tp) if vs_tp else None,
                                        "met": bool(vs_tp) and len(vs_tp) == len(budgets) and min(vs_tp) >= 0},
        "as_written_vs_uniform": {"per_budget": {k: p["vs_uniform"] for k, p in per.items()},
                                  "mean": float(np.mean(vs_u)) if vs_u else None,
                                  "uniform_span_points": span,
                                  "applies": span is not None and span > UNIFORM_SPAN,
                                  "met": (float(np.mean(vs_u)) >= GOAL_VS_UNIFORM) if vs_u and span is not None
                                  and span > UNIFORM_SPAN else None},
        "cut_cost": {"per_budget_mean": {k: p["cut_cost_mean"] for k, p in per.items()},
                     "per_budget_worst_seed": {k: p["cut_cost_max"] for k, p in per.items()},
                     "met": bool(cuts) and max(cuts) <= GOAL_CUT_COST},
        "per_budget": per,
    }


def headline(table: list[dict], budgets: tuple[float, ...] = (0.125, 0.25, 0.5), full_flops: float | None = None) -> dict:
    """Every figure of the task: issue 21's per start, and issue 12's (scratch start) kept."""
    uniform = curve(table, "uniform")
    retrained = curve(table, "shrink-retrained")
    torch_pruning = curve(table, "torch-pruning")

    def pts(c):
        return [(f, 100 * a) for f, a in c]

    saved = flops_saved_at_equal_accuracy(uniform, retrained)
    gain = accuracy_gain_at_equal_flops(pts(uniform), pts(curve(table, "expand")))
    gain_retrained = accuracy_gain_at_equal_flops(pts(uniform), pts(retrained))
    vs_tp_saved = flops_saved_at_equal_accuracy(torch_pruning, retrained)
    vs_tp_gain = accuracy_gain_at_equal_flops(pts(torch_pruning), pts(retrained))
    out = {
        "flops_saved_at_equal_accuracy": saved["mean"],
        "expand_accuracy_gain": gain["mean"],
        "vs_torch_pruning": {"flops_saved_at_equal_accuracy": vs_tp_saved["mean"],
                             "expand_accuracy_gain": vs_tp_gain["mean"]},
        "starts": {},
        "details": {
            "flops_saved_at_equal_accuracy (shrink-retrained vs uniform, scratch)": saved,
            "expand_accuracy_gain (expand vs uniform, points, scratch)": gain,
            "accuracy_gain (shrink-retrained vs uniform, points, scratch)": gain_retrained,
            "vs_torch_pruning.flops_saved_at_equal_accuracy (shrink-retrained vs torch-pruning, scratch)": vs_tp_saved,
            "vs_torch_pruning.expand_accuracy_gain (shrink-retrained vs torch-pruning at equal FLOPs, points)":
                vs_tp_gain,
            "flops_saved_at_equal_accuracy (shrink-as-written vs uniform, scratch)":
                flops_saved_at_equal_accuracy(uniform, curve(table, "shrink-as-written")),
        },
    }
    for start in STARTS:
        if any(r["start"] == start and r["method"] == "shrink-as-written" for r in table):
            figures = equal_compute(table, start, budgets)
            if full_flops:
                for key, row in at_budget(table, "shrink-as-written", start).items():
                    figures["per_budget"][key]["shrink_flops_ratio"] = row["flops_mean"] / full_flops
            out["starts"][start] = figures
    for name in ("as_written_vs_torch_pruning", "as_written_vs_uniform", "cut_cost"):
        out[name] = {start: figures[name] for start, figures in out["starts"].items()}
    return out


def ablation(rows: list[dict], reference: str) -> list[dict]:
    """Each variant of shrink against `reference`, per task, start and budget: means, and the mean and
    std of the per-seed differences (the same seed and start weights on both sides)."""
    by_key: dict[tuple, dict[int, float]] = {}
    for row in rows:
        if row["method"] != "shrink-as-written":
            continue
        key = (row.get("task", ""), row.get("start", "scratch"), str(row["point"]), row.get("variant", "default"))
        by_key.setdefault(key, {})[row["seed"]] = 100 * row["accuracy"]
    out = []
    for (task, start, point, variant), seeds in sorted(by_key.items()):
        if variant == reference:
            continue
        base = by_key.get((task, start, point, reference), {})
        common = sorted(set(seeds) & set(base))
        diffs = [seeds[s] - base[s] for s in common]
        out.append({"task": task, "start": start, "point": point, "variant": variant, "seeds": len(common),
                    "accuracy": float(np.mean([seeds[s] for s in common])) if common else None,
                    "reference_accuracy": float(np.mean([base[s] for s in common])) if common else None,
                    "difference_mean": float(np.mean(diffs)) if diffs else None,
                    "difference_std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else None})
    return out


# ---- tasks -------------------------------------------------------------------------------------------

@dataclass
class Task:
    name: str
    steps: int  # T: the optimizer steps of every arm
    budgets: tuple[float, ...]
    widths: tuple[int, ...] = ()  # the 2-D tasks' network
    classes: int = 10
    input: tuple[int, ...] = ()


def task_settings(quick: bool) -> dict[str, Task]:
    if quick:
        return {"mnist1d": Task("mnist1d", 60, (0.5,), input=(1, 1, 40)),
                "digits": Task("digits", 40, (0.5,), widths=(8, 16, 32), input=(1, 1, 28, 28)),
                "patterns": Task("patterns", 40, (0.5,), widths=(12, 24, 48), classes=16, input=(1, 1, 16, 16))}
    # T: what the earlier benchmark (issue 12) needed for shrink to reach its budgets on mnist1d and
    # digits; patterns: about the same wall time per run.
    budgets = (0.125, 0.25, 0.5)
    return {"mnist1d": Task("mnist1d", 600, budgets, input=(1, 1, 40)),
            "digits": Task("digits", 400, budgets, widths=(8, 16, 32), input=(1, 1, 28, 28)),
            "patterns": Task("patterns", 500, budgets, widths=(12, 24, 48), classes=16, input=(1, 1, 16, 16))}


def prepare_task(task: Task, work: Path, seeds: list[int]) -> dict:
    """The original ONNX model, the data files and every seed's starting weights (made in the parent)."""
    import morphnet_onnx as mn

    folder = work / task.name
    folder.mkdir(parents=True, exist_ok=True)
    if task.name == "mnist1d":
        files = {"model": str(ROOT / "models/resnet1d_mnist1d.onnx"), "train": str(ROOT / "models/mnist1d_train.npz"),
                 "val": str(ROOT / "models/mnist1d_val.npz")}
    else:
        if task.name == "digits":
            from digits import write_digits28

            train, val = write_digits28(folder / "data", train_copies=1, seed=0)
        else:
            import patterns

            patterns.CLASSES = task.classes
            patterns.SMOOTH_NOISE, patterns.PIXEL_NOISE = 0.45, 0.25
            train, val = patterns.write_patterns(folder / "data", seed=0)
        model = folder / "original.onnx"
        if not model.exists():
            import torch

            torch.manual_seed(0)
            export_onnx(torch_net(task), model, list(task.input))
        files = {"model": str(model), "train": str(train), "val": str(val)}
    files["input"] = list(task.input)
    files["init"] = {}
    for seed in seeds:
        init = folder / f"init_s{seed}.onnx"
        if not init.exists():
            tmp = folder / f"init_s{seed}.tmp.onnx"
            mn.expand(files["model"], tmp, multiplier=1.0, init="fresh", seed=seed)
            os.replace(tmp, init)
        files["init"][str(seed)] = str(init)
    return files


# ---- torch: the same networks ------------------------------------------------------------------------

def torch_net(task: Task):
    if task.name in ("digits", "patterns"):
        from export_digits_resnet import DigitsResNet

        return DigitsResNet(widths=task.widths, classes=task.classes)

    from torch_nets import resnet1d  # models/make_mnist1d.py's network

    return resnet1d(task.classes)


def export_onnx(net, path: Path, shape: list[int]) -> None:
    """torch's TorchScript exporter with BatchNormalization kept (as tools/export_digits_resnet.py)."""
    import torch

    net.eval()
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(net, torch.zeros(*shape), str(tmp), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False)
    os.replace(tmp, path)


def load_onnx_weights(net, path) -> None:
    """Copy an ONNX model's weights into the torch network of the same architecture: its Conv,
    BatchNormalization and Gemm nodes in graph order onto the torch Conv, BatchNorm and Linear modules
    in registration order (the two orders agree for these networks; every shape is checked)."""
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    model = onnx.load(str(path))
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            layers.append(("conv", [values[node.input[1]]] + ([values[node.input[2]]] if len(node.input) > 2
                                                                and node.input[2] else [])))
        elif node.op_type == "BatchNormalization":
            layers.append(("bn", [values[n] for n in node.input[1:5]]))
        elif node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            weight = values[node.input[1]]
            layers.append(("fc", [weight if trans_b else weight.T] + ([values[node.input[2]]] if len(node.input) > 2
                                                                       else [])))
    kinds = {nn.Conv1d: "conv", nn.Conv2d: "conv", nn.BatchNorm1d: "bn", nn.BatchNorm2d: "bn", nn.Linear: "fc"}
    modules = [(kinds[type(m)], m) for m in net.modules() if type(m) in kinds]
    if [k for k, _ in modules] != [k for k, _ in layers]:
        raise RuntimeError(f"{path}: its layers ({len(layers)}) do not match the torch network's ({len(modules)})")
    with torch.no_grad():
        for (kind, module), (_, arrays) in zip(modules, layers):
            if kind == "bn":
                slots = [module.weight, module.bias, module.running_mean, module.running_var]
            else:
                slots = [module.weight] + ([module.bias] if module.bias is not None else [])
            if len(arrays) != len(slots):
                raise RuntimeError(f"{path}: a {kind} layer has {len(arrays)} tensors, torch's {len(slots)}")
            for slot, array in zip(slots, arrays):
                if tuple(slot.shape) != tuple(array.shape):
                    raise RuntimeError(f"{path}: shape {list(array.shape)} for torch's {list(slot.shape)}")
                slot.copy_(torch.from_numpy(np.array(array, copy=True)))


# ---- jobs (run in worker processes) ------------------------------------------------------------------

def _options(task: Task, seed: int, threads: int, **kw):
    import morphnet_onnx as mn

    return mn.TrainOptions(steps=task.steps, seed=seed, threads=threads, progress=False, probe=False,
                           **dict(RECIPE, **kw))


def _measure(path, val: str, method: str, start: str, point, seed: int, seconds: float, steps: int,
             **extra) -> dict:
    import morphnet_onnx as mn

    costs = mn.inspect(path).costs
    accuracy = mn.evaluate(path, val).accuracy
    return dict(method=method, start=start, point=point, seed=seed, flops=float(costs.flops),
                params=int(costs.params), accuracy=float(accuracy), steps=int(steps), seconds=round(seconds, 1),
                model=str(path), **extra)


def start_model(files: dict, folder: Path, start: str, seed: int) -> str:
    return files["init"][str(seed)] if start == "scratch" else str(folder / f"dense_s{seed}.onnx")


def job_dense(task: Task, files: dict, folder: Path, seed: int, threads: int, spec: dict) -> list[dict]:
    """init_s trained T steps: the uniform 1.0 point of the scratch start, and the trained start."""
    import morphnet_onnx as mn

    out = folder / f"dense_s{seed}.onnx"
    started = time.time()
    tmp = folder / f"dense_s{seed}.tmp.onnx"
    result = mn.train(files["init"][str(seed)], files["train"], tmp, options=_options(task, seed, threads))
    os.replace(tmp, out)
    took = time.time() - started
    return [_measure(out, files["val"], "uniform", "scratch", 1.0, seed, took, result.steps),
            _measure(out, files["val"], "dense", "trained", 1.0, seed, took, result.steps)]


def job_uniform(task: Task, files: dict, folder: Path, seed: int, threads: int, spec: dict) -> list[dict]:
    import morphnet_onnx as mn

    start, budget = spec["start"], spec["arg"]
    out = folder / f"uniform_{start}_{budget}_s{seed}.onnx"
    started = time.time()
    grown = out.with_name(out.stem + "_init.onnx")
    expanded = mn.expand(start_model(files, folder, start, seed), grown, budget=mn.Budget("flops", f"{budget}x"),
                         init="fresh" if start == "scratch" else "keep", seed=seed)
    result = mn.train(grown, files["train"], out, options=_options(task, seed, threads))
    return [_measure(out, files["val"], "uniform", start, budget, seed, time.time() - started, result.steps,
                     multiplier=expanded.multiplier)]


def job_shrink(task: Task, files: dict, folder: Path, seed: int, threads: int, spec: dict) -> list[dict]:
    """shrink(start, budget, steps=T): the model it writes, with what its decision recorded."""
    import morphnet_onnx as mn

    start, budget, variant = spec["start"], spec["arg"], spec["variant"]
    out = folder / f"shrunk_{start}_{variant}_{budget}_s{seed}.onnx"
    started = time.time()
    learned = mn.shrink(start_model(files, folder, start, seed), files["train"], out, val=files["val"],
                        budget=mn.Budget("flops", f"{budget}x"), options=_options(task, seed, threads),
                        structure_path=out.with_suffix(".json"), **spec["shrink"])
    d = learned.decision
    cut = learned.cut_validation.accuracy if learned.cut_validation else None
    session = learned.session_accuracy
    return [_measure(out, files["val"], "shrink-as-written", start, budget, seed, time.time() - started,
                     learned.steps, variant=variant, session_accuracy=session, cut_accuracy=cut,
                     cut_cost=None if cut is None or session is None else session - cut,
                     learned_ratio=d["learned_cost"] / d["full_cost"], forced_cuts=d["forced_cuts"],
                     readmitted=d["readmitted"], learn_steps=d.get("learn_steps"),
                     finetune_steps=d.get("finetune_steps"), decided_at=d.get("decided_at"),
                     teacher=d.get("teacher"), options=spec["shrink"])]


def job_retrain(task: Task, files: dict, folder: Path, seed: int, threads: int, spec: dict) -> list[dict]:
    """MorphNet's protocol on the scratch start's learned structure: retrained from scratch T steps,
    and expanded to 1.0x then trained from scratch T steps."""
    import morphnet_onnx as mn

    budget = spec["arg"]
    shrunk = folder / f"shrunk_scratch_default_{budget}_s{seed}.onnx"
    rows = []
    for method, kw in (("shrink-retrained", {"multiplier": 1.0}),
                       ("expand", {"budget": mn.Budget("flops", "1.0x"), "reference": files["model"]})):
        started = time.time()
        out = folder / f"{method}_{budget}_s{seed}.onnx"
        fresh = out.with_name(out.stem + "_init.onnx")
        grown = mn.expand(shrunk, fresh, init="fresh", seed=seed, **kw)
        result = mn.train(fresh, files["train"], out, options=_options(task, seed, threads))
        rows.append(_measure(out, files["val"], method, "scratch", budget, seed, time.time() - started, result.steps,
                             multiplier=grown.multiplier))
    return rows


class TorchTrainer:
    """The recipe of TrainOptions (AdamW, its schedule, batch, seeded epoch order) in torch; counts the
    optimizer steps it takes."""

    def __init__(self, task: Task, files: dict, seed: int, threads: int) -> None:
        import torch

        torch.set_num_threads(max(threads, 1))
        torch.manual_seed(seed)
        with np.load(files["train"]) as d:
            self.x_all, self.y_all = torch.from_numpy(d["x"]), torch.from_numpy(d["labels"])
        with np.load(files["val"]) as d:
            self.x_val, self.y_val = torch.from_numpy(d["x"]), d["labels"]
        self.example = torch.zeros(*files["input"])
        self.options = _options(task, seed, threads)
        self.seed = seed
        self.steps_taken = 0

    def run(self, net, steps: int, pruner=None, offset: int = 0, total: int | None = None) -> None:
        """`steps` steps; the learning rate of step s is that of step offset + s of a run of `total`."""
        import torch
        import torch.nn as nn

        from morphnet_onnx.training.trainer import learning_rate

        options, seed, x_all, y_all = self.options, self.seed, self.x_all, self.y_all
        total = total or steps
        optimizer = torch.optim.AdamW(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        per_epoch = len(y_all) // options.batch_size
        net.train()
        if pruner is not None:
            pruner.update_regularizer()
        for local in range(steps):
            step = offset + local
            order = np.random.default_rng(seed * 7919 + step // per_epoch).permutation(len(y_all))
            b = step % per_epoch
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(options, step, total)
            index = torch.from_numpy(order[b * options.batch_size:(b + 1) * options.batch_size])
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x_all[index]), y_all[index]).backward()
            if pruner is not None:
                pruner.regularize(net)  # after backward, before the optimizer step
            optimizer.step()
            self.steps_taken += 1

    def accuracy(self, net) -> float:
        import torch

        net.eval()
        with torch.no_grad():
            return float((net(self.x_val).argmax(1).numpy() == self.y_val).mean())


def job_torch_pruning(task: Task, files: dict, folder: Path, seed: int, threads: int, spec: dict) -> list[dict]:
    """Torch-Pruning's README recipe on the same network and start weights: sparse training, then
    iterative pruning with fine-tuning between the rounds, T steps in all per budget."""
    import torch.nn as nn
    import torch_pruning as tp

    start, mode = spec["start"], spec["variant"]
    rounds, sparse_share = spec["tp_iterative_steps"], spec["tp_sparse_share"]
    trainer = TorchTrainer(task, files, seed, threads)
    example = trainer.example
    started = time.time()
    net = torch_net(task)
    load_onnx_weights(net, start_model(files, folder, start, seed))
    importance = tp.importance.GroupMagnitudeImportance(p=2)

    def pruner_for(model):
        return tp.pruner.GroupNormPruner(model, example, importance=importance, global_pruning=mode == "global",
                                         pruning_ratio=1.0, iterative_steps=TP_GRANULARITY, ignored_layers=[
                                             m for m in model.modules() if isinstance(m, nn.Linear)])

    sparse_steps = int(round(sparse_share * task.steps))
    trainer.run(net, sparse_steps, pruner_for(net))
    sparse_seconds = time.time() - started
    base_ops, _ = tp.utils.count_ops_and_params(net, example)
    finetune_steps = task.steps - sparse_steps
    rows = []
    for target in task.budgets:
        started = time.time()
        trainer.steps_taken = sparse_steps  # this budget's run shares the sparse training
        pruned = copy.deepcopy(net)
        pruner = pruner_for(pruned)
        ratio, done = 1.0, 0
        before_finetune = None
        # Round k prunes at fine-tune step (k - 1) T_f / (2 K): the rounds fall in the first half of
        # the fine-tune (rising and peak learning rate), the second half trains the final structure;
        # one schedule spans the fine-tune.
        marks = [finetune_steps * (k - 1) // (2 * rounds) for k in range(1, rounds + 1)] + [finetune_steps]
        for k in range(1, rounds + 1):
            goal = 1.0 - (1.0 - target) * k / rounds  # linear in FLOPs, as its linear ratio scheduler
            pruned.eval()
            while ratio > goal and pruner.current_step < pruner.iterative_steps:
                pruner.step()
                ops, _ = tp.utils.count_ops_and_params(pruned, example)
                ratio = ops / base_ops
            if k == rounds:
                before_finetune = trainer.accuracy(pruned)
            share = marks[k] - done
            trainer.run(pruned, share, offset=done, total=finetune_steps)
            done += share
        path = folder / f"torch_pruning_{start}_{mode}_{target}_s{seed}.onnx"
        export_onnx(pruned, path, files["input"])
        rows.append(_measure(path, files["val"], "torch-pruning", start, target, seed,
                             time.time() - started + sparse_seconds, trainer.steps_taken, tp_ops_ratio=ratio,
                             torch_accuracy=trainer.accuracy(pruned), accuracy_before_last_finetune=before_finetune,
                             sparse_steps=sparse_steps, finetune_steps=done, rounds=rounds, variant=mode))
    return rows


def job_torch_dense(task: Task, files: dict, folder: Path, seed: int, threads: int, spec: dict) -> list[dict]:
    """Diagnostic: init_s trained T steps in torch (onnxruntime-training's dense_s trains the same)."""
    trainer = TorchTrainer(task, files, seed, threads)
    net = torch_net(task)
    load_onnx_weights(net, files["init"][str(seed)])
    started = time.time()
    trainer.run(net, task.steps)
    path = folder / f"torch_dense_s{seed}.onnx"
    export_onnx(net, path, files["input"])
    return [_measure(path, files["val"], "torch-dense", "scratch", 1.0, seed, time.time() - started,
                     trainer.steps_taken, torch_accuracy=trainer.accuracy(net))]


JOBS = {"dense": job_dense, "uniform": job_uniform, "shrink": job_shrink, "retrain": job_retrain,
        "torch-pruning": job_torch_pruning, "torch-dense": job_torch_dense}


def run_job(spec: dict) -> dict:
    """Worker entry: run one job, write its rows (or its error) to spec['result']."""
    os.environ.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    task = Task(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["task"].items()})
    start = time.time()
    try:
        rows = JOBS[spec["kind"]](task, spec["files"], Path(spec["folder"]), spec["seed"], spec["threads"], spec)
        for row in rows:
            row["task"] = task.name
        record = {"name": spec["name"], "rows": rows, "seconds": time.time() - start}
    except Exception as exc:  # recorded and reported, the other jobs go on
        record = {"name": spec["name"], "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                  "seconds": time.time() - start}
    tmp = Path(spec["result"] + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(tmp, spec["result"])
    return record


# ---- orchestration -----------------------------------------------------------------------------------

# The recipe before issue 21 (the "without" side of the ablations): cut after 10/11 of the steps, a
# fine-tune of 1/11 at a tenth of the learning rate, no holding, no distillation.
BEFORE = {"cut": "end", "hold": False, "proximal": False, "reach": 0.5 / 1.1, "finetune_share": 1 / 11,
          "finetune_lr": 0.1, "finetune_schedule": "cosine", "distill": "off"}
VARIANTS = {"default": {}, "before": BEFORE}
ARMS = ("uniform", "shrink", "torch-pruning", "retrain", "torch-dense")
# Relative cost of a step (full width, one thread), measured: a digits step ~2x an mnist1d step.
STEP_COST = {"mnist1d": 1.0, "digits": 2.0, "patterns": 1.2}


def parse_variant(text: str) -> tuple[str, dict]:
    """NAME or NAME:key=value,key=value (ShrinkOptions fields; true/false, numbers, words)."""
    name, _, body = text.partition(":")
    options = dict(VARIANTS.get(name, {})) if not body else {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        low = value.lower()
        if low in ("true", "false"):
            options[key] = low == "true"
        else:
            try:
                options[key] = int(value)
            except ValueError:
                try:
                    options[key] = float(value)
                except ValueError:
                    options[key] = value
    if not body and name not in VARIANTS:
        raise SystemExit(f"--variant {text}: unknown name (known: {', '.join(VARIANTS)}); give NAME:key=value,...")
    return name, options


def job_specs(task: Task, files: dict, work: Path, seeds: list[int], threads: int, starts: list[str],
              arms: list[str], variants: dict[str, dict], tp_settings: dict, paper: bool) -> list[dict]:
    folder = work / task.name
    (folder / "results").mkdir(parents=True, exist_ok=True)
    base = {"task": asdict(task), "files": files, "folder": str(folder), "threads": threads, **tp_settings}
    specs = []

    def add(kind, seed, weight, start="scratch", arg=None, variant="", needs=(), **extra):
        name = f"{task.name}/{kind}_{start}" + (f"_{variant}" if variant else "") + \
            (f"_{arg}" if arg is not None else "") + f"_s{seed}"
        specs.append(dict(base, kind=kind, seed=seed, start=start, arg=arg, variant=variant, name=name,
                          result=str(folder / "results" / (name.split("/", 1)[1] + ".json")), needs=list(needs),
                          weight=weight * task.steps * STEP_COST.get(task.name, 1.0), **extra))
        return specs[-1]["result"]

    dense = {}
    if "trained" in starts or "uniform" in arms:
        for seed in seeds:
            dense[seed] = add("dense", seed, 1.0)
    for start in starts:
        for seed in seeds:
            needs = [dense[seed]] if start == "trained" else []
            if "torch-pruning" in arms:
                for mode in tp_settings["tp_modes"]:
                    add("torch-pruning", seed, 0.3 + 0.3 * sum(task.budgets), start, variant=mode, needs=needs)
            for budget in task.budgets:
                if "uniform" in arms:
                    add("uniform", seed, 0.2 + budget, start, budget, needs=needs)
                if "shrink" in arms:
                    for variant, options in variants.items():
                        shrunk = add("shrink", seed, 0.7 + budget, start, budget, variant, needs=needs, shrink=options)
                        if paper and start == "scratch" and variant == "default" and "retrain" in arms:
                            add("retrain", seed, 1.4 + budget, start, budget, needs=[shrunk])
    if "torch-dense" in arms:
        for seed in seeds:
            add("torch-dense", seed, 0.6)
    return specs


def run_all(specs: list[dict], jobs: int, resume: bool, log) -> list[dict]:
    """Every job, `jobs` at a time, longest first among those whose inputs are ready."""
    records: dict[str, dict] = {}
    todo = []
    for spec in specs:
        path = Path(spec["result"])
        if resume and path.exists():
            record = json.loads(path.read_text())
            if "error" not in record:
                records[spec["result"]] = dict(record, reused=True)
                log(f"[resume] {spec['name']}: done before")
                continue
        todo.append(spec)
    todo.sort(key=lambda s: -s["weight"])
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        pending: dict = {}
        while todo or pending:
            for spec in list(todo):
                if len(pending) >= jobs:
                    break
                failed = [n for n in spec["needs"] if n in records and "error" in records[n]]
                if failed:
                    todo.remove(spec)
                    records[spec["result"]] = {"name": spec["name"], "error": f"needs {failed[0]}, which failed"}
                    log(f"[E] {spec['name']}: {records[spec['result']]['error']}")
                    continue
                if all(n in records for n in spec["needs"]):
                    todo.remove(spec)
                    pending[pool.submit(run_job, spec)] = spec
            if not pending:
                if todo:  # inputs that will never come
                    for spec in todo:
                        records[spec["result"]] = {"name": spec["name"], "error": "its inputs were never made"}
                    todo = []
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                spec = pending.pop(future)
                try:
                    record = future.result()
                except Exception as exc:  # the worker died (a native crash)
                    record = {"name": spec["name"], "error": f"worker died: {exc}", "seconds": None}
                records[spec["result"]] = record
                if "error" in record:
                    log(f"[E] {spec['name']}: {record['error']}")
                else:
                    accs = ", ".join(f"{r['method']} {r['point']} {100 * r['accuracy']:.2f}% "
                                     f"{r['flops'] / 1e6:.2f}M {r['steps']} steps" for r in record["rows"])
                    log(f"[done] {spec['name']} in {record['seconds']:.0f}s: {accs}")
    return list(records.values())


STYLES = {"uniform": ("k", "o", "-"), "shrink-as-written": ("tab:blue", "s", "-"),
          "torch-pruning": ("tab:orange", "D", "-"), "dense": ("k", "*", ""),
          "shrink-retrained": ("tab:cyan", "v", "--"), "expand": ("tab:green", "^", ""),
          "torch-dense": ("tab:brown", "x", "")}


def plot(task: str, table: list[dict], full_flops: float, path: Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = [s for s in STARTS if any(r["start"] == s for r in table)]
    fig, axes = plt.subplots(1, len(starts), figsize=(6 * len(starts), 4.8), squeeze=False)
    for ax, start in zip(axes[0], starts):
        for method in METHODS:
            rows = sorted(at_budget(table, method, start).values(), key=lambda r: r["flops_mean"])
            if not rows:
                continue
            color, marker, line = STYLES[method]
            ax.errorbar([r["flops_mean"] / full_flops for r in rows], [100 * r["accuracy_mean"] for r in rows],
                        yerr=[100 * r["accuracy_std"] for r in rows], color=color, marker=marker,
                        linestyle=line or "none", capsize=3, label=method, markersize=8 if marker == "*" else 5)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("FLOPs (fraction of the original network, log scale)")
        ax.set_ylabel("validation top-1 (%)")
        ax.grid(alpha=0.3)
        ax.set_title(f"{task}, {start} start: equal steps, mean ± std over seeds" + (" (--quick)" if quick else ""),
                     fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown_table(table: list[dict], full_flops: float) -> str:
    lines = ["| start | method | variant | point | FLOPs (x) | params | top-1 mean | std | seeds | steps | cut cost (mean / worst) |",
             "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for r in table:
        cut = (f"{100 * r['cut_cost_mean']:.2f} / {100 * r['cut_cost_max']:.2f}" if "cut_cost_mean" in r else "")
        lines.append(f"| {r['start']} | {r['method']} | {r['variant']} | {r['point']} | "
                     f"{r['flops_mean'] / full_flops:.3f} | {r['params_mean'] / 1e3:.1f}K | "
                     f"{100 * r['accuracy_mean']:.2f}% | {100 * r['accuracy_std']:.2f} | {r['seeds']} | "
                     f"{','.join(str(s) for s in r['steps'])} | {cut} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes: 1 seed, one budget, "
                                                             "a few dozen steps, no MorphNet-protocol arms")
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks"), help="folder for the JSON and the plots")
    parser.add_argument("--name", default=None, help="result name (default tradeoff, tradeoff_quick with --quick)")
    parser.add_argument("--work", default=None, help="folder for models and per-job results (default: "
                                                     "a folder under the system's temporary directory)")
    parser.add_argument("--tasks", default="mnist1d,digits,patterns")
    parser.add_argument("--starts", default="scratch,trained")
    parser.add_argument("--arms", default=",".join(ARMS[:4]), help=f"of {', '.join(ARMS)}")
    parser.add_argument("--budgets", default=None, help="override the budgets, e.g. 0.25,0.5")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per point (default 3; --quick 1)")
    parser.add_argument("--steps", default=None, help="override T per task, e.g. mnist1d=300,digits=150")
    parser.add_argument("--variant", action="append", default=None,
                        help="shrink's recipe: NAME (default, before) or NAME:key=value,... (ShrinkOptions "
                             "fields); repeat for an ablation (the first is the reference)")
    parser.add_argument("--tp-sparse-share", type=float, default=0.5, help="torch-pruning's sparse-training share of T")
    parser.add_argument("--tp-iterative-steps", type=int, default=5, help="torch-pruning's pruning rounds")
    parser.add_argument("--tp-modes", default="global,local",
                        help="torch-pruning's global pruning (one ranking across layers) and local pruning (its "
                             "default: the same ratio in every layer); the figures take the better at each budget")
    parser.add_argument("--jobs", type=int, default=2, help="trainings run in parallel (worker processes)")
    parser.add_argument("--threads", type=int, default=1, help="threads per training (onnxruntime and torch)")
    parser.add_argument("--resume", action="store_true", help="skip jobs whose results are in --work")
    parser.add_argument("--replot", action="store_true", help="redraw the plots from the JSON, run nothing")
    args = parser.parse_args(argv)
    name = args.name or ("tradeoff_quick" if args.quick else "tradeoff")
    out = Path(args.out)
    if args.replot:
        summary = json.loads((out / f"{name}.json").read_text())
        for task_name, entry in summary["tasks"].items():
            plot(task_name, entry["table"], entry["original"]["flops"], out / f"{name}_{task_name}.png", args.quick)
        return 0

    settings = task_settings(args.quick)
    if args.steps:
        for item in args.steps.split(","):
            key, value = item.split("=")
            settings[key] = replace(settings[key], steps=int(value))
    if args.budgets:
        settings = {k: replace(t, budgets=tuple(float(b) for b in args.budgets.split(","))) for k, t in settings.items()}
    tasks = [settings[n] for n in args.tasks.split(",")]
    seeds = list(range(args.seeds if args.seeds is not None else (1 if args.quick else 3)))
    starts = [s for s in args.starts.split(",") if s]
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(starts) - set(STARTS)) + sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"unknown start or arm: {', '.join(unknown)}")
    variants = dict(parse_variant(v) for v in (args.variant or ["default"]))
    paper = not args.quick
    tp_settings = {"tp_sparse_share": args.tp_sparse_share, "tp_iterative_steps": args.tp_iterative_steps,
                   "tp_modes": [m for m in args.tp_modes.split(",") if m]}
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.gettempdir()) / (
        "bench_tradeoff_quick" if args.quick else "bench_tradeoff")  # models stay out of the repository
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "log.txt"

    def log(text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    started = time.time()
    load_before = load_average()
    log(f"start: tasks {[t.name for t in tasks]}, starts {starts}, arms {arms}, variants {variants}, seeds {seeds}, "
        f"jobs {args.jobs} x {args.threads} threads, load average {load_before}")
    import morphnet_onnx as mn

    specs, files_of = [], {}
    for task in tasks:
        files_of[task.name] = prepare_task(task, work, seeds)
        specs += job_specs(task, files_of[task.name], work, seeds, args.threads, starts, arms, variants, tp_settings,
                           paper)
    records = run_all(specs, args.jobs, args.resume, log)
    wall = time.time() - started
    load_after = load_average()

    result_path = out / f"{name}.json"
    previous = []
    if args.resume and result_path.exists():  # the runs whose results this one reuses
        old = json.loads(result_path.read_text())
        previous = old.get("previous_runs", []) + [{k: old.get(k) for k in (
            "command", "date", "commit", "machine", "wall_seconds")}]
    summary = {"command": "python tools/bench_tradeoff.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit(),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                           "load_average_before": load_before, "load_average_after": load_after},
               "wall_seconds": round(wall), "previous_runs": previous, "jobs": args.jobs, "threads": args.threads,
               "seeds": seeds, "starts": starts, "arms": arms, "variants": variants,
               "protocol": {"recipe": RECIPE, "torch_pruning": {
                   "pruner": "GroupNormPruner", "importance": "GroupMagnitudeImportance(p=2)", "reg": 1e-4,
                   "global_pruning": "both modes: global (True) and local (False, its default); the better "
                                     "at each budget is the baseline", "ignored": "the classifier (Linear)",
                   "sparse_share": args.tp_sparse_share, "iterative_steps": args.tp_iterative_steps,
                   "schedule": "linear in FLOPs to the budget; the rounds at fine-tune steps (k-1) T_f / (2 K), "
                               "one one-cycle schedule over the fine-tune; one sparse training serves every budget"}},
               # results found in --work (--resume): measured by an earlier run, not by this one
               "reused_jobs": sorted(r["name"] for r in records if r.get("reused")), "tasks": {}}
    for task in tasks:
        rows, errors = [], []
        for record in records:
            if not record["name"].startswith(task.name + "/"):
                continue
            if "error" in record:
                errors.append({"job": record["name"], "error": record["error"]})
            else:
                rows += record["rows"]
        full = mn.inspect(files_of[task.name]["model"]).costs
        table = aggregate(rows)
        entry = {"settings": asdict(task), "original": {"flops": full.flops, "params": full.params},
                 "steps_per_arm": task.steps}
        entry.update(headline(table, task.budgets, full.flops))
        if len(variants) > 1:
            entry["ablation"] = {"reference": next(iter(variants)), "rows": ablation(rows, next(iter(variants)))}
        entry.update({"table": table, "runs": rows, "errors": errors})
        summary["tasks"][task.name] = entry
        plot(task.name, table, full.flops, out / f"{name}_{task.name}.png", args.quick)
        log(f"{task.name}: vs torch-pruning {entry['as_written_vs_torch_pruning']}, vs uniform "
            f"{entry['as_written_vs_uniform']}, cut cost {entry['cut_cost']}, errors {len(errors)}")
        log("\n" + markdown_table(table, full.flops))
        for row in entry.get("ablation", {}).get("rows", []):
            log(f"ablation {row}")
    result_path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    log(f"wrote {result_path} in {wall / 60:.1f} min; load average {load_before} -> {load_after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
