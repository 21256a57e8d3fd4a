#!/usr/bin/env python3
"""Accuracy against FLOPs: MorphNet against the uniform width multiplier and against Torch-Pruning
(DEV-ONLY: needs the `bench` extra, `pip install -e .[bench]`: torch, torch-pruning, matplotlib).

    python tools/bench_tradeoff.py [--quick] [--out docs/benchmarks] [--work DIR] [--jobs 2]

Two tasks: `mnist1d` (the bundled example, models/resnet1d_mnist1d.onnx) and `digits` (the 2-D
ResNet of tools/export_digits_resnet.py, BatchNormalization kept, at smaller widths, on the 28x28
digit set of models/digits.py). Every training uses one recipe (TrainOptions: AdamW, one-cycle,
lr 3e-3, batch 64, `steps` of the task), every point is trained with `--seeds` seeds:

- uniform:            expand(original, multiplier=M, init="fresh") + train       (M in --multipliers)
- shrink-as-written:  shrink(original, budget=Bx): the model shrink writes (its N training steps
                      with the regularizer, then its 0.1 N fine-tune)
- shrink-retrained:   the learned structure retrained from scratch with the same recipe:
                      expand(shrunk, multiplier=1.0, init="fresh") + train       (the paper's protocol)
- expand:             expand(shrunk, budget=1.0x of the original, init="fresh") + train
- cycle-round2:       cycle(original, budget=1.0x, rounds=2, shrink_to=0.5): the second round
                      (its round 0 is the uniform 1.0 point, its round 1 is shrink/expand at 0.5x)
- torch-pruning:      the same network in torch; Torch-Pruning's sparse training (GroupNormPruner,
                      group-norm importance, global pruning) for N steps, then its progressive
                      pruning (iterative steps until tp.utils.count_ops_and_params reaches the FLOPs
                      target), then a fine-tune of N + 0.1 N steps: the same total steps as
                      shrink + its retrain. One sparse training per seed serves every target (its
                      regularizer does not depend on the target).

`--diagnostics` adds a second phase (after the first, reading its models; with `--resume` it runs
alone), to tell the method from the training budget in the comparison with torch-pruning:
- shrink-finetuned:   the model shrink wrote, trained on (weights kept) for N more steps with the same
                      recipe: N + 0.1 N + N steps, torch-pruning's total, with inherited weights as it has;
- torch-dense:        the unpruned torch network trained with the same recipe for N steps (point "N",
                      the framework control for uniform 1.0), then a second one-cycle run of 1.1 N
                      steps (point "2.1N": torch-pruning's two runs without pruning or regularizer).

FLOPs and parameters of every model (torch-pruning's too, exported to ONNX) are counted by
`morphnet_onnx.inspect` (MorphNet's convention: 2 x MACs of conv and linear layers, batch 1).

Headline figures (docs/benchmarks/tradeoff.json, per task), from the per-point means:
- flops_saved_at_equal_accuracy: for each shrink-retrained point, 1 - its FLOPs / the FLOPs the
  uniform curve needs for its accuracy (linear interpolation in FLOPs on the uniform curve's upper
  envelope: the best accuracy reached with at most that many FLOPs); the mean over the points that
  fall inside the uniform curve's accuracy range;
- expand_accuracy_gain: expand's accuracy minus the uniform curve's (the same envelope,
  interpolated) at expand's FLOPs, in points; the mean over the budgets; `round2_accuracy_gain`
  the same for cycle's round 2;
- vs_torch_pruning: the same two figures with the torch-pruning curve as the baseline (shrink-
  retrained points against it, at equal accuracy and at equal FLOPs).
Per-point values are kept next to each mean. Results of every finished job are kept in --work
(`--resume` skips them), so a killed run loses at most the jobs in flight.
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

METHODS = ("uniform", "shrink-retrained", "shrink-as-written", "expand", "cycle-round2", "torch-pruning",
           "shrink-finetuned", "torch-dense")
# Linear interpolation may reach this far (relative) past the end of a curve's FLOPs range:
# a budget lands just below its target (0.499x for 0.5x), a baseline point may land just above.
FLOPS_TOLERANCE = 0.02


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
    """One row per (method, point): FLOPs, params and accuracy, mean and std (ddof 1) over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], str(row["point"])), []).append(row)
    table = []
    for (method, point), members in groups.items():
        acc = np.array([m["accuracy"] for m in members], dtype=float)
        flops = np.array([m["flops"] for m in members], dtype=float)
        params = np.array([m["params"] for m in members], dtype=float)
        table.append({"method": method, "point": point, "seeds": len(members),
                      "flops_mean": float(flops.mean()), "flops_std": float(flops.std(ddof=1)) if len(members) > 1 else 0.0,
                      "params_mean": float(params.mean()),
                      "accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)) if len(members) > 1 else 0.0})
    order = {m: i for i, m in enumerate(METHODS)}
    table.sort(key=lambda r: (order.get(r["method"], 99), r["flops_mean"]))
    return table


def curve(table: list[dict], method: str) -> list[tuple[float, float]]:
    return [(r["flops_mean"], r["accuracy_mean"]) for r in table if r["method"] == method]


def headline(table: list[dict]) -> dict:
    """The issue's figures from the aggregated table (accuracies in points, savings as fractions)."""
    uniform = curve(table, "uniform")
    retrained = curve(table, "shrink-retrained")
    torch_pruning = curve(table, "torch-pruning")
    as_points = [(f, 100 * a) for f, a in uniform]

    def pts(c):
        return [(f, 100 * a) for f, a in c]

    saved = flops_saved_at_equal_accuracy(uniform, retrained)
    saved_written = flops_saved_at_equal_accuracy(uniform, curve(table, "shrink-as-written"))
    gain = accuracy_gain_at_equal_flops(as_points, pts(curve(table, "expand")))
    gain2 = accuracy_gain_at_equal_flops(as_points, pts(curve(table, "cycle-round2")))
    gain_retrained = accuracy_gain_at_equal_flops(as_points, pts(retrained))
    vs_tp_saved = flops_saved_at_equal_accuracy(torch_pruning, retrained)
    vs_tp_gain = accuracy_gain_at_equal_flops(pts(torch_pruning), pts(retrained))
    tp_vs_uniform = flops_saved_at_equal_accuracy(uniform, torch_pruning)
    finetuned = curve(table, "shrink-finetuned")
    return {
        "flops_saved_at_equal_accuracy": saved["mean"],
        "expand_accuracy_gain": gain["mean"],
        "round2_accuracy_gain": gain2["mean"],
        "vs_torch_pruning": {"flops_saved_at_equal_accuracy": vs_tp_saved["mean"],
                             "expand_accuracy_gain": vs_tp_gain["mean"]},
        "details": {
            "flops_saved_at_equal_accuracy (shrink-retrained vs uniform)": saved,
            "flops_saved_at_equal_accuracy (shrink-as-written vs uniform)": saved_written,
            "expand_accuracy_gain (expand vs uniform, points)": gain,
            "round2_accuracy_gain (cycle round 2 vs uniform, points)": gain2,
            "accuracy_gain (shrink-retrained vs uniform, points)": gain_retrained,
            "vs_torch_pruning.flops_saved_at_equal_accuracy (shrink-retrained vs torch-pruning)": vs_tp_saved,
            "vs_torch_pruning.expand_accuracy_gain (shrink-retrained vs torch-pruning at equal FLOPs, points)":
                vs_tp_gain,
            "flops_saved_at_equal_accuracy (torch-pruning vs uniform)": tp_vs_uniform,
            "diagnostic: flops_saved_at_equal_accuracy (shrink-finetuned vs torch-pruning)":
                flops_saved_at_equal_accuracy(torch_pruning, finetuned),
            "diagnostic: accuracy gain (shrink-finetuned vs torch-pruning at equal FLOPs, points)":
                accuracy_gain_at_equal_flops(pts(torch_pruning), pts(finetuned)),
            "diagnostic: accuracy gain (shrink-finetuned vs uniform at equal FLOPs, points)":
                accuracy_gain_at_equal_flops(as_points, pts(finetuned)),
        },
    }


def width_span(table: list[dict]) -> float | None:
    """Uniform accuracy (points) at the largest multiplier minus at the smallest."""
    rows = sorted((r for r in table if r["method"] == "uniform"), key=lambda r: r["flops_mean"])
    return 100 * (rows[-1]["accuracy_mean"] - rows[0]["accuracy_mean"]) if len(rows) > 1 else None


# ---- tasks -------------------------------------------------------------------------------------------

@dataclass
class Task:
    name: str
    steps: int
    multipliers: tuple[float, ...]
    budgets: tuple[float, ...]
    train_copies: int = 1  # digits only: copies of each training image (1: no shifted copies)
    widths: tuple[int, ...] = ()  # digits only
    grouping: str = "max"  # shrink's --grouping (max: MorphNet's default; l2)


def task_settings(quick: bool) -> dict[str, Task]:
    if quick:
        return {"mnist1d": Task("mnist1d", 60, (0.25, 0.5, 1.0), (0.5,)),
                "digits": Task("digits", 40, (0.25, 0.5, 1.0), (0.5,), train_copies=1, widths=(8, 16, 32))}
    # Steps: the fewest with which shrink's controller reaches the budget on this task (measured:
    # mnist1d 400 steps learned 0.92x for a 0.5x budget, 600 learned 0.32x; digits 300 steps
    # learned 1.00x for 0.125x, 400 learned 0.077x for 0.25x), so that the run fits about an hour.
    return {"mnist1d": Task("mnist1d", 600, (0.25, 0.4, 0.55, 0.7, 1.0), (0.125, 0.25, 0.5)),
            "digits": Task("digits", 400, (0.25, 0.4, 0.55, 0.7, 1.0), (0.125, 0.25, 0.5), train_copies=1,
                           widths=(8, 16, 32))}


def prepare_task(task: Task, work: Path) -> dict:
    """The original ONNX model and the data files of a task (made once, in the parent)."""
    folder = work / task.name
    folder.mkdir(parents=True, exist_ok=True)
    if task.name == "mnist1d":
        return {"model": str(ROOT / "models/resnet1d_mnist1d.onnx"), "train": str(ROOT / "models/mnist1d_train.npz"),
                "val": str(ROOT / "models/mnist1d_val.npz"), "input": [1, 1, 40]}
    from digits import write_digits28

    train, val = write_digits28(folder / "data", train_copies=task.train_copies, seed=0)
    model = folder / "original.onnx"
    if not model.exists():
        import torch

        torch.manual_seed(0)
        net = torch_net(task)
        export_onnx(net, model, [1, 1, 28, 28])
    return {"model": str(model), "train": str(train), "val": str(val), "input": [1, 1, 28, 28]}


# ---- torch: the same networks ------------------------------------------------------------------------

def torch_net(task: Task):
    if task.name == "digits":
        from export_digits_resnet import DigitsResNet

        return DigitsResNet(widths=task.widths)

    from torch_nets import resnet1d  # models/make_mnist1d.py's network

    return resnet1d()


def export_onnx(net, path: Path, shape: list[int]) -> None:
    """torch's TorchScript exporter with BatchNormalization kept (as tools/export_digits_resnet.py)."""
    import torch

    net.eval()
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(net, torch.zeros(*shape), str(tmp), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False, dynamo=False)
    os.replace(tmp, path)


# ---- jobs (run in worker processes) ------------------------------------------------------------------

def _options(task: Task, seed: int, threads: int, **kw):
    import morphnet_onnx as mn

    return mn.TrainOptions(steps=task.steps, batch_size=64, lr=3e-3, optimizer="adamw", schedule="onecycle",
                           seed=seed, threads=threads, progress=False, probe=False, **kw)


def _measure(path, val: str, method: str, point, seed: int, seconds: float, **extra) -> dict:
    import morphnet_onnx as mn

    costs = mn.inspect(path).costs
    accuracy = mn.evaluate(path, val).accuracy
    return dict(method=method, point=point, seed=seed, flops=float(costs.flops), params=int(costs.params),
                accuracy=float(accuracy), seconds=round(seconds, 1), model=str(path), **extra)


def _retrain(source: Path, output: Path, files: dict, task: Task, seed: int, threads: int, multiplier=None,
             budget=None) -> tuple[float, dict]:
    """expand(source, multiplier|budget, init fresh) + train: a structure trained from scratch."""
    import morphnet_onnx as mn

    start = time.time()
    fresh = output.with_name(output.stem + "_init.onnx")
    if budget is not None:
        grown = mn.expand(source, fresh, budget=mn.Budget("flops", budget), reference=files["model"],
                          init="fresh", seed=seed)
    else:
        grown = mn.expand(source, fresh, multiplier=multiplier, init="fresh", seed=seed)
    mn.train(fresh, files["train"], output, options=_options(task, seed, threads), init="keep")
    return time.time() - start, {"multiplier": grown.multiplier}


def job_uniform(task: Task, files: dict, folder: Path, seed: int, threads: int, multiplier: float) -> list[dict]:
    import morphnet_onnx as mn

    out = folder / f"uniform_{multiplier}_s{seed}.onnx"
    start = time.time()
    fresh = out.with_name(out.stem + "_init.onnx")
    mn.expand(files["model"], fresh, multiplier=multiplier, init="fresh", seed=seed)
    mn.train(fresh, files["train"], out, options=_options(task, seed, threads), init="keep")
    return [_measure(out, files["val"], "uniform", multiplier, seed, time.time() - start)]


def _shrink_rows(task, files, folder, seed, threads, budget, shrunk: Path, seconds: float, decision: dict,
                 cut_accuracy) -> list[dict]:
    rows = [_measure(shrunk, files["val"], "shrink-as-written", budget, seed, seconds, decision=decision,
                     cut_accuracy=cut_accuracy)]
    retrained = folder / f"retrained_{budget}_s{seed}.onnx"
    took, extra = _retrain(shrunk, retrained, files, task, seed, threads, multiplier=1.0)
    rows.append(_measure(retrained, files["val"], "shrink-retrained", budget, seed, took))
    return rows


def job_shrink(task: Task, files: dict, folder: Path, seed: int, threads: int, budget: float) -> list[dict]:
    """shrink at a budget; its structure retrained from scratch; expanded to 1.0x and retrained."""
    import morphnet_onnx as mn

    shrunk = folder / f"shrunk_{budget}_s{seed}.onnx"
    start = time.time()
    learned = mn.shrink(files["model"], files["train"], shrunk, val=files["val"],
                        budget=mn.Budget("flops", f"{budget}x"), grouping=task.grouping,
                        options=_options(task, seed, threads),
                        structure_path=shrunk.with_suffix(".json"))
    cut = learned.cut_validation.accuracy if learned.cut_validation else None
    rows = _shrink_rows(task, files, folder, seed, threads, budget, shrunk, time.time() - start, learned.decision,
                        cut)
    expanded = folder / f"expanded_{budget}_s{seed}.onnx"
    took, extra = _retrain(shrunk, expanded, files, task, seed, threads, budget="1.0x")
    rows.append(_measure(expanded, files["val"], "expand", budget, seed, took, **extra))
    return rows


def job_cycle(task: Task, files: dict, folder: Path, seed: int, threads: int, resume: bool) -> list[dict]:
    """cycle(budget 1.0x, rounds 2, shrink_to 0.5): round 0 is the uniform 1.0 point, round 1's shrunk
    model and its expansion the 0.5x shrink and expand points, round 2 the cycle point; the round-1
    structure is also retrained from scratch (shrink-retrained at 0.5x)."""
    import morphnet_onnx as mn

    out_dir = folder / f"cycle_s{seed}"
    start = time.time()
    result = mn.cycle(files["model"], files["train"], files["val"], budget=mn.Budget("flops", "1.0x"),
                      out_dir=out_dir, rounds=2, shrink_to=0.5, grouping=task.grouping,
                      options=_options(task, seed, threads),
                      resume=resume and (out_dir / "cycle.json").exists())
    took = time.time() - start
    by_round = {row.round: row for row in result.rows}
    state = json.loads((out_dir / "cycle.json").read_text())
    rows = [_measure(by_round[0].model, files["val"], "uniform", 1.0, seed, took, source="cycle round 0"),
            _measure(by_round[1].model, files["val"], "expand", 0.5, seed, took, source="cycle round 1",
                     multiplier=by_round[1].multiplier),
            _measure(by_round[2].model, files["val"], "cycle-round2", 1.0, seed, took, source="cycle round 2",
                     multiplier=by_round[2].multiplier)]
    shrunk = out_dir / "round1_shrunk.onnx"
    structure = json.loads((out_dir / "round1_structure.json").read_text())
    rows += _shrink_rows(task, files, folder, seed, threads, 0.5, shrunk, took,
                         structure.get("decision", {}), None)
    rows[-2]["source"] = rows[-1]["source"] = "cycle round 1"
    rows.append({"method": "_cycle_log", "point": None, "seed": seed, "steps": state.get("steps")})
    return rows


class TorchTrainer:
    """The recipe of TrainOptions (AdamW, its schedule, batch, seeded epoch order) in torch."""

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

    def run(self, net, steps: int, pruner=None) -> None:
        import torch
        import torch.nn as nn

        from morphnet_onnx.training.trainer import learning_rate

        options, seed, x_all, y_all = self.options, self.seed, self.x_all, self.y_all
        optimizer = torch.optim.AdamW(net.parameters(), lr=options.lr, weight_decay=options.weight_decay)
        per_epoch = len(y_all) // options.batch_size
        net.train()
        step = 0
        if pruner is not None:
            pruner.update_regularizer()
        while step < steps:
            order = torch.from_numpy(np.random.default_rng(seed * 7919 + step // per_epoch).permutation(len(y_all)))
            for b in range(per_epoch):
                if step >= steps:
                    break
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(options, step, steps)
                index = order[b * options.batch_size:(b + 1) * options.batch_size]
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(net(x_all[index]), y_all[index]).backward()
                if pruner is not None:
                    pruner.regularize(net)  # after backward, before the optimizer step
                optimizer.step()
                step += 1

    def accuracy(self, net) -> float:
        import torch

        net.eval()
        with torch.no_grad():
            return float((net(self.x_val).argmax(1).numpy() == self.y_val).mean())


def job_torch_pruning(task: Task, files: dict, folder: Path, seed: int, threads: int) -> list[dict]:
    """Torch-Pruning's recipe on the same network: sparse training, progressive pruning to each FLOPs
    target, fine-tune; same optimizer, schedule, batch and total steps as shrink + retrain."""
    import torch.nn as nn
    import torch_pruning as tp

    trainer = TorchTrainer(task, files, seed, threads)
    run, accuracy, example = trainer.run, trainer.accuracy, trainer.example
    start = time.time()
    net = torch_net(task)
    ignored = [m for m in net.modules() if isinstance(m, nn.Linear)]  # the classifier's outputs stay
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    sparse_pruner = tp.pruner.GroupNormPruner(net, example, importance=importance, global_pruning=True,
                                              pruning_ratio=1.0, iterative_steps=400, ignored_layers=ignored)
    run(net, task.steps, sparse_pruner)
    sparse_seconds = time.time() - start
    base_ops, _ = tp.utils.count_ops_and_params(net, example)
    rows = []
    finetune_steps = task.steps + max(1, round(0.1 * task.steps))
    for target in task.budgets:
        start = time.time()
        pruned = copy.deepcopy(net)
        pruner = tp.pruner.GroupNormPruner(pruned, example, importance=importance, global_pruning=True,
                                           pruning_ratio=1.0, iterative_steps=400, ignored_layers=[
                                               m for m in pruned.modules() if isinstance(m, nn.Linear)])
        pruned.eval()
        ratio = 1.0
        while ratio > target and pruner.current_step < pruner.iterative_steps:
            pruner.step()
            ops, _ = tp.utils.count_ops_and_params(pruned, example)
            ratio = ops / base_ops
        pruned_accuracy = accuracy(pruned)
        run(pruned, finetune_steps)
        path = folder / f"torch_pruning_{target}_s{seed}.onnx"
        export_onnx(pruned, path, files["input"])
        row = _measure(path, files["val"], "torch-pruning", target, seed, time.time() - start + sparse_seconds,
                       tp_ops_ratio=ratio, torch_accuracy=accuracy(pruned), accuracy_before_finetune=pruned_accuracy,
                       steps=task.steps + finetune_steps)
        rows.append(row)
    return rows


def job_finetune(task: Task, files: dict, folder: Path, seed: int, threads: int, budget: float) -> list[dict]:
    """Diagnostic: the model shrink wrote, trained N more steps with its weights (torch-pruning's total)."""
    import morphnet_onnx as mn

    shrunk = folder / (f"cycle_s{seed}/round1_shrunk.onnx" if budget == 0.5 else f"shrunk_{budget}_s{seed}.onnx")
    out = folder / f"finetuned_{budget}_s{seed}.onnx"
    start = time.time()
    mn.train(shrunk, files["train"], out, options=_options(task, seed, threads), init="keep")
    return [_measure(out, files["val"], "shrink-finetuned", budget, seed, time.time() - start,
                     steps=task.steps + max(1, round(0.1 * task.steps)) + task.steps)]


def job_torch_dense(task: Task, files: dict, folder: Path, seed: int, threads: int) -> list[dict]:
    """Diagnostic: the unpruned torch network, N steps, then a second one-cycle run of 1.1 N steps."""
    trainer = TorchTrainer(task, files, seed, threads)
    net = torch_net(task)
    rows = []
    start = time.time()
    for point, steps in (("N", task.steps), ("2.1N", task.steps + max(1, round(0.1 * task.steps)))):
        trainer.run(net, steps)
        path = folder / f"torch_dense_{point}_s{seed}.onnx"
        export_onnx(net, path, files["input"])
        rows.append(_measure(path, files["val"], "torch-dense", point, seed, time.time() - start,
                             torch_accuracy=trainer.accuracy(net)))
    return rows


def run_job(spec: dict) -> dict:
    """Worker entry: run one job, write its rows (or its error) to spec['result']."""
    task = Task(**spec["task"])
    kind, seed, threads = spec["kind"], spec["seed"], spec["threads"]
    folder, files = Path(spec["folder"]), spec["files"]
    start = time.time()
    try:
        if kind == "uniform":
            rows = job_uniform(task, files, folder, seed, threads, spec["arg"])
        elif kind == "shrink":
            rows = job_shrink(task, files, folder, seed, threads, spec["arg"])
        elif kind == "cycle":
            rows = job_cycle(task, files, folder, seed, threads, spec["resume"])
        elif kind == "finetune":
            rows = job_finetune(task, files, folder, seed, threads, spec["arg"])
        elif kind == "torch-dense":
            rows = job_torch_dense(task, files, folder, seed, threads)
        else:
            rows = job_torch_pruning(task, files, folder, seed, threads)
        record = {"name": spec["name"], "rows": rows, "seconds": time.time() - start}
    except Exception as exc:  # recorded and reported, the other jobs go on
        record = {"name": spec["name"], "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                  "seconds": time.time() - start}
    Path(spec["result"]).write_text(json.dumps(record, indent=1, default=str) + "\n")
    return record


# ---- orchestration -----------------------------------------------------------------------------------

def job_specs(task: Task, files: dict, work: Path, seeds: list[int], threads: int, resume: bool,
              diagnostics: bool = False) -> list[dict]:
    """The jobs of the main phase, or (diagnostics) of the second phase, which reads the first's models."""
    folder = work / task.name
    (folder / "results").mkdir(parents=True, exist_ok=True)
    base = {"task": asdict(task), "files": files, "folder": str(folder), "threads": threads, "resume": resume}
    specs = []
    if diagnostics:
        for seed in seeds:
            specs.append(dict(base, kind="torch-dense", seed=seed, arg=None, weight=1.0))
            for budget in task.budgets:
                specs.append(dict(base, kind="finetune", seed=seed, arg=budget, weight=budget))
        return _name(specs, task, folder)
    # longest first, so the last job in flight is a short one
    for seed in seeds:
        specs.append(dict(base, kind="cycle", seed=seed, arg=None, weight=5.2))
    for seed in seeds:
        specs.append(dict(base, kind="torch-pruning", seed=seed, arg=None, weight=1.0 + 1.1 * len(task.budgets) * 0.5))
    for budget in task.budgets:
        if budget == 0.5:
            continue  # cycle's round 1
        for seed in seeds:
            specs.append(dict(base, kind="shrink", seed=seed, arg=budget, weight=2.1 + budget))
    for multiplier in task.multipliers:
        if multiplier == 1.0:
            continue  # cycle's round 0
        for seed in seeds:
            specs.append(dict(base, kind="uniform", seed=seed, arg=multiplier, weight=multiplier ** 2))
    return _name(specs, task, folder)


def _name(specs: list[dict], task: Task, folder: Path) -> list[dict]:
    for spec in specs:
        spec["weight"] *= task.steps * (2.0 if task.name == "digits" else 1.0)  # measured: a digits step ~2x
        spec["name"] = f"{task.name}/{spec['kind']}" + (f"_{spec['arg']}" if spec["arg"] is not None else "") \
            + f"_s{spec['seed']}"
        spec["result"] = str(folder / "results" / (spec["name"].split("/", 1)[1] + ".json"))
    specs.sort(key=lambda s: -s["weight"])
    return specs


def run_all(specs: list[dict], jobs: int, resume: bool, log) -> list[dict]:
    records, todo = [], []
    for spec in specs:
        path = Path(spec["result"])
        if resume and path.exists():
            record = json.loads(path.read_text())
            if "error" not in record:
                records.append(dict(record, reused=True))
                log(f"[resume] {spec['name']}: done before")
                continue
        todo.append(spec)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        pending = {pool.submit(run_job, spec): spec for spec in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                spec = pending.pop(future)
                try:
                    record = future.result()
                except Exception as exc:  # the worker died (a native crash)
                    record = {"name": spec["name"], "error": f"worker died: {exc}", "seconds": None}
                records.append(record)
                if "error" in record:
                    log(f"[E] {spec['name']}: {record['error']}")
                else:
                    accs = ", ".join(f"{r['method']} {r['point']} {100 * r['accuracy']:.2f}% "
                                     f"{r['flops'] / 1e6:.2f}M" for r in record["rows"] if "accuracy" in r)
                    log(f"[done] {spec['name']} in {record['seconds']:.0f}s: {accs}")
    return records


def plot(task: str, table: list[dict], full_flops: float, path: Path, quick: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"uniform": ("k", "o", "-"), "shrink-retrained": ("tab:blue", "s", "-"),
              "shrink-as-written": ("tab:cyan", "v", "--"), "expand": ("tab:green", "^", ""),
              "cycle-round2": ("tab:red", "*", ""), "torch-pruning": ("tab:orange", "D", "-"),
              "shrink-finetuned": ("tab:purple", "P", ":"), "torch-dense": ("tab:brown", "x", "")}
    # left: the whole range; right: the top of it, where the methods differ by a point or two
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    best = max((100 * r["accuracy_mean"] for r in table), default=100.0)
    for ax in axes:
        for method in METHODS:
            rows = sorted((r for r in table if r["method"] == method), key=lambda r: r["flops_mean"])
            if not rows:
                continue
            color, marker, line = styles[method]
            ax.errorbar([r["flops_mean"] / full_flops for r in rows], [100 * r["accuracy_mean"] for r in rows],
                        yerr=[100 * r["accuracy_std"] for r in rows], color=color, marker=marker,
                        linestyle=line or "none", capsize=3, label=method, markersize=8 if marker == "*" else 5)
        ax.set_xlabel("FLOPs (fraction of the original network)")
        ax.set_ylabel("validation top-1 (%)")
        ax.grid(alpha=0.3)
    axes[1].set_ylim(best - 5, best + 1)
    axes[0].set_title(f"{task}: accuracy vs FLOPs, mean ± std over seeds" + (" (--quick)" if quick else ""),
                      fontsize=10)
    axes[1].set_title("the top 5 points of the same", fontsize=10)
    axes[0].legend(loc="lower right", fontsize=8)
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
    lines = ["| method | point | FLOPs | FLOPs (x) | params | top-1 mean | std | seeds |",
             "|---|---|--:|--:|--:|--:|--:|--:|"]
    for r in table:
        lines.append(f"| {r['method']} | {r['point']} | {r['flops_mean'] / 1e6:.3f}M | "
                     f"{r['flops_mean'] / full_flops:.3f} | {r['params_mean'] / 1e3:.1f}K | "
                     f"{100 * r['accuracy_mean']:.2f}% | {100 * r['accuracy_std']:.2f} | {r['seeds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a ~5-minute smoke run: 1 seed, 3 multipliers, "
                                                             "one budget, a few dozen steps")
    parser.add_argument("--out", default=str(ROOT / "docs/benchmarks"), help="folder for tradeoff.json and the plots")
    parser.add_argument("--work", default=None, help="folder for models and per-job results (default: "
                                                     "a folder under the system's temporary directory)")
    parser.add_argument("--tasks", default="mnist1d,digits")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per point (default 3; --quick 1)")
    parser.add_argument("--steps", default=None, help="override steps per training, e.g. mnist1d=300,digits=150")
    parser.add_argument("--grouping", choices=["max", "l2"], default="max",
                        help="shrink's and cycle's --grouping (how a residual stream's gates combine)")
    parser.add_argument("--jobs", type=int, default=2, help="trainings run in parallel (worker processes)")
    parser.add_argument("--threads", type=int, default=1, help="threads per training (onnxruntime and torch)")
    parser.add_argument("--resume", action="store_true", help="skip jobs whose results are in --work")
    parser.add_argument("--diagnostics", action="store_true",
                        help="a second phase: shrink-finetuned and torch-dense (see the module docstring)")
    parser.add_argument("--replot", action="store_true", help="redraw the plots from OUT/tradeoff.json, run nothing")
    args = parser.parse_args(argv)
    # One result per kind of run: tradeoff[_l2][_quick].json and its plots beside it.
    suffix = ("" if args.grouping == "max" else f"_{args.grouping}") + ("_quick" if args.quick else "")
    if args.replot:
        result = Path(args.out) / f"tradeoff{suffix}.json"
        summary = json.loads(result.read_text())
        for name, entry in summary["tasks"].items():
            plot(name, entry["table"], entry["original"]["flops"],
                 Path(args.out) / f"tradeoff_{name}{suffix}.png", args.quick)
        return 0

    settings = task_settings(args.quick)
    if args.steps:
        for item in args.steps.split(","):
            name, value = item.split("=")
            settings[name] = replace(settings[name], steps=int(value))
    tasks = [replace(settings[name], grouping=args.grouping) for name in args.tasks.split(",")]
    seeds = list(range(args.seeds if args.seeds is not None else (1 if args.quick else 3)))
    out = Path(args.out)
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
    log(f"start: tasks {[t.name for t in tasks]}, seeds {seeds}, jobs {args.jobs} x {args.threads} threads, "
        f"load average {load_before}")
    import morphnet_onnx as mn

    all_specs, files_of = [], {}
    for task in tasks:
        files_of[task.name] = prepare_task(task, work)
        all_specs += job_specs(task, files_of[task.name], work, seeds, args.threads, args.resume)
    all_specs.sort(key=lambda s: -s["weight"])
    records = run_all(all_specs, args.jobs, args.resume, log)
    phase_seconds = {"main": round(time.time() - started)}
    if args.diagnostics:
        second = []
        for task in tasks:
            second += job_specs(task, files_of[task.name], work, seeds, args.threads, args.resume, diagnostics=True)
        records += run_all(sorted(second, key=lambda s: -s["weight"]), args.jobs, args.resume, log)
        phase_seconds["diagnostics"] = round(time.time() - started) - phase_seconds["main"]
    wall = time.time() - started
    load_after = load_average()

    result_path = out / f"tradeoff{suffix}.json"
    previous = []
    if args.resume and result_path.exists():  # the runs whose results this one reuses
        old = json.loads(result_path.read_text())
        previous = old.get("previous_runs", []) + [{k: old.get(k) for k in (
            "command", "date", "commit", "machine", "wall_seconds", "phase_seconds")}]
    summary = {"command": "python tools/bench_tradeoff.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit(),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                           "load_average_before": load_before, "load_average_after": load_after},
               "wall_seconds": round(wall), "phase_seconds": phase_seconds, "previous_runs": previous,
               "diagnostics": args.diagnostics, "jobs": args.jobs, "threads": args.threads, "seeds": seeds,
               "grouping": args.grouping,
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
                rows += [r for r in record["rows"] if not r["method"].startswith("_")]
        full = mn.inspect(files_of[task.name]["model"]).costs
        table = aggregate(rows)
        entry = {"settings": asdict(task), "original": {"flops": full.flops, "params": full.params},
                 "recipe": {"optimizer": "adamw", "schedule": "onecycle", "lr": 3e-3, "batch_size": 64,
                            "steps": task.steps, "shrink_finetune_steps": max(1, round(0.1 * task.steps)),
                            "torch_pruning_steps": {"sparse": task.steps,
                                                    "finetune": task.steps + max(1, round(0.1 * task.steps))}},
                 "uniform_width_span_points": width_span(table)}
        entry.update(headline(table))
        entry.update({"table": table, "runs": rows, "errors": errors})
        summary["tasks"][task.name] = entry
        plot(task.name, table, full.flops, out / f"tradeoff_{task.name}{suffix}.png",
             args.quick)
        log(f"{task.name}: width span {entry['uniform_width_span_points']}, "
            f"flops saved {entry['flops_saved_at_equal_accuracy']}, expand gain {entry['expand_accuracy_gain']}, "
            f"round 2 gain {entry['round2_accuracy_gain']}, vs torch-pruning {entry['vs_torch_pruning']}, "
            f"errors {len(errors)}")
        log("\n" + markdown_table(table, full.flops))
    result_path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    log(f"wrote {result_path} in {wall / 60:.1f} min; load average {load_before} -> {load_after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
