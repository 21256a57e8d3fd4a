"""The pure functions of tools/bench_tradeoff.py: interpolation on the baseline's envelope, FLOPs saved
at equal accuracy, accuracy gain at equal FLOPs, aggregation. The benchmark itself is `slow`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("bench_tradeoff", ROOT / "tools" / "bench_tradeoff.py")
bt = importlib.util.module_from_spec(spec)
sys.modules["bench_tradeoff"] = bt
spec.loader.exec_module(bt)

UNIFORM = [(1.0, 0.70), (2.0, 0.80), (4.0, 0.90)]


def test_envelope_flattens_a_dip():
    assert bt.upper_envelope([(3.0, 0.7), (1.0, 0.8), (2.0, 0.6)]) == [(1.0, 0.8), (2.0, 0.8), (3.0, 0.8)]


@pytest.mark.parametrize("accuracy,expected", [(0.70, 1.0), (0.75, 1.5), (0.80, 2.0), (0.85, 3.0), (0.90, 4.0)])
def test_flops_at_accuracy_interpolates_linearly(accuracy, expected):
    assert bt.flops_at_accuracy(UNIFORM, accuracy) == pytest.approx(expected)


@pytest.mark.parametrize("accuracy", [0.69, 0.91])
def test_flops_at_accuracy_does_not_extrapolate(accuracy):
    assert bt.flops_at_accuracy(UNIFORM, accuracy) is None


def test_flops_at_accuracy_on_a_plateau_takes_the_first_point():
    # 2.0 and 3.0 reach the same accuracy: the cheaper one counts; 3.5 scores lower (noise) and is
    # raised to the envelope, so it never makes a lower accuracy look more expensive
    curve = [(1.0, 0.7), (2.0, 0.8), (3.0, 0.8), (3.5, 0.75), (4.0, 0.9)]
    assert bt.flops_at_accuracy(curve, 0.8) == pytest.approx(2.0)
    assert bt.flops_at_accuracy(curve, 0.85) == pytest.approx(3.75)


@pytest.mark.parametrize("flops,expected", [(1.0, 0.70), (1.5, 0.75), (3.0, 0.85), (4.0, 0.90)])
def test_accuracy_at_flops(flops, expected):
    assert bt.accuracy_at_flops(UNIFORM, flops) == pytest.approx(expected)


def test_accuracy_at_flops_tolerance_at_the_ends():
    assert bt.accuracy_at_flops(UNIFORM, 4.0 * 1.01) == pytest.approx(0.90)  # within 2%: the end value
    assert bt.accuracy_at_flops(UNIFORM, 0.99) == pytest.approx(0.70)
    assert bt.accuracy_at_flops(UNIFORM, 4.0 * 1.05) is None
    assert bt.accuracy_at_flops(UNIFORM, 0.9) is None
    assert bt.accuracy_at_flops([], 1.0) is None


def test_flops_saved_at_equal_accuracy():
    # 1.5 FLOPs for 0.80 where uniform needs 2.0: 25% saved; 3.0 FLOPs for 0.85 (uniform: 3.0): 0%;
    # 0.95 is above the uniform range: not counted
    result = bt.flops_saved_at_equal_accuracy(UNIFORM, [(1.5, 0.80), (3.0, 0.85), (3.0, 0.95)])
    assert [p["saved"] for p in result["points"]][:2] == pytest.approx([0.25, 0.0])
    assert result["points"][2]["saved"] is None
    assert result["mean"] == pytest.approx(0.125)
    assert (result["covered"], result["of"]) == (2, 3)


def test_flops_saved_negative_when_worse():
    result = bt.flops_saved_at_equal_accuracy(UNIFORM, [(3.0, 0.80)])
    assert result["mean"] == pytest.approx(1 - 3.0 / 2.0)


def test_flops_saved_none_when_nothing_is_covered():
    assert bt.flops_saved_at_equal_accuracy(UNIFORM, [(1.0, 0.5)])["mean"] is None


def test_accuracy_gain_at_equal_flops():
    result = bt.accuracy_gain_at_equal_flops([(f, 100 * a) for f, a in UNIFORM], [(3.96, 91.0), (1.5, 74.0)])
    assert [p["gain"] for p in result["points"]] == pytest.approx([91.0 - 89.8, -1.0])
    assert result["mean"] == pytest.approx(((91.0 - 89.8) - 1.0) / 2)


def _rows(method, start, values, flops=(1.0, 2.0, 4.0), points=(0.25, 0.5, 1.0), **extra):
    out = []
    for seed, noise in enumerate((-0.01, 0.0, 0.01)):
        for point, f, a in zip(points, flops, values):
            out.append(dict({"method": method, "start": start, "point": point, "seed": seed, "flops": f, "params": 10,
                             "accuracy": a + noise, "steps": 8}, **extra))
    return out


def test_aggregate_and_headline():
    rows = _rows("uniform", "scratch", [a for _, a in UNIFORM])
    rows += _rows("shrink-retrained", "scratch", [0.80], flops=(1.5,), points=(0.5,))
    rows += _rows("expand", "scratch", [0.91], flops=(4.0,), points=(0.5,))
    rows += _rows("torch-pruning", "scratch", [0.60, 0.84], flops=(1.0, 2.0), points=(0.5, 0.75))
    table = bt.aggregate(rows)
    uniform = [r for r in table if r["method"] == "uniform"]
    assert [r["point"] for r in uniform] == ["0.25", "0.5", "1.0"]
    assert uniform[0]["accuracy_mean"] == pytest.approx(0.70)
    assert uniform[0]["accuracy_std"] == pytest.approx(0.01)
    assert uniform[0]["seeds"] == 3 and uniform[0]["steps"] == [8]
    figures = bt.headline(table, budgets=(0.5,))
    assert figures["flops_saved_at_equal_accuracy"] == pytest.approx(0.25)
    assert figures["expand_accuracy_gain"] == pytest.approx(1.0)
    # torch-pruning reaches 0.80 at 1 + (0.2 / 0.24) FLOPs; at 1.5 FLOPs it scores 72 points
    assert figures["vs_torch_pruning"]["flops_saved_at_equal_accuracy"] == pytest.approx(1 - 1.5 / (1 + 0.2 / 0.24))
    assert figures["vs_torch_pruning"]["expand_accuracy_gain"] == pytest.approx(80.0 - 72.0)
    assert bt.width_span(table) == pytest.approx(20.0)


def test_equal_compute_figures():
    """Per start: shrink as written minus torch-pruning and minus uniform at each budget, from the
    means; the uniform span over the budgets decides whether the +1 point goal applies; the worst
    seed's cut cost against the 2-point goal."""
    rows = _rows("uniform", "trained", [0.70, 0.80], flops=(1.0, 2.0), points=(0.25, 0.5))
    rows += _rows("torch-pruning", "trained", [0.72, 0.83], flops=(0.98, 1.97), points=(0.25, 0.5))
    rows += [dict(r, cut_cost=0.01 * (r["seed"] + 1)) for r in
             _rows("shrink-as-written", "trained", [0.73, 0.82], flops=(0.99, 1.99), points=(0.25, 0.5))]
    figures = bt.headline(bt.aggregate(rows), budgets=(0.25, 0.5), full_flops=4.0)
    assert figures["as_written_vs_torch_pruning"]["trained"]["per_budget"] == pytest.approx({"0.25": 1.0, "0.5": -1.0})
    assert figures["as_written_vs_torch_pruning"]["trained"]["met"] is False
    vs_uniform = figures["as_written_vs_uniform"]["trained"]
    assert vs_uniform["mean"] == pytest.approx(2.5) and vs_uniform["uniform_span_points"] == pytest.approx(10.0)
    assert vs_uniform["applies"] and vs_uniform["met"]
    cut = figures["cut_cost"]["trained"]
    assert cut["per_budget_worst_seed"]["0.25"] == pytest.approx(3.0) and cut["met"] is False
    assert figures["starts"]["trained"]["per_budget"]["0.5"]["shrink_flops_ratio"] == pytest.approx(1.99 / 4.0)
    assert "scratch" not in figures["starts"]


def test_torch_pruning_is_its_better_mode_at_each_budget():
    rows = [dict(r, variant="global") for r in
            _rows("torch-pruning", "scratch", [0.60, 0.90], flops=(1.0, 2.0), points=(0.25, 0.5))]
    rows += [dict(r, variant="local") for r in
             _rows("torch-pruning", "scratch", [0.70, 0.80], flops=(1.1, 2.0), points=(0.25, 0.5))]
    best = bt.at_budget(bt.aggregate(rows), "torch-pruning", "scratch")
    assert {k: (r["variant"], round(r["accuracy_mean"], 6)) for k, r in best.items()} == {
        "0.25": ("local", 0.70), "0.5": ("global", 0.90)}
    assert [(round(f, 6), round(a, 6)) for f, a in bt.curve(bt.aggregate(rows), "torch-pruning")] == [(1.1, 0.7), (2.0, 0.9)]


def test_ablation_pairs_seeds():
    rows = [{"method": "shrink-as-written", "task": "t", "start": "scratch", "point": 0.5, "seed": s,
             "variant": v, "accuracy": a} for v, accs in (("base", (0.80, 0.82, 0.84)), ("lever", (0.81, 0.84, 0.84)))
            for s, a in enumerate(accs)]
    (row,) = bt.ablation(rows, "base")
    assert row["variant"] == "lever" and row["seeds"] == 3
    assert row["difference_mean"] == pytest.approx(1.0) and row["difference_std"] == pytest.approx(1.0)


def test_variant_parsing():
    assert bt.parse_variant("default") == ("default", {})
    assert bt.parse_variant("before")[1]["cut"] == "end"
    assert bt.parse_variant("x:cut=budget,hold=true,finetune_lr=0.5,hold_until=1") == (
        "x", {"cut": "budget", "hold": True, "finetune_lr": 0.5, "hold_until": 1})
    with pytest.raises(SystemExit):
        bt.parse_variant("nonsense")


def _count_arm_steps(tmp_path, monkeypatch, starts, arms, budgets, expected_kinds):
    """The protocol's promise, counted where the steps are taken: every onnxruntime-training step and
    every torch optimizer step of each arm (shrink: its regularized steps and those after its cut;
    torch-pruning: its sparse training and the fine-tunes between its pruning rounds, per budget)."""
    pytest.importorskip("torch_pruning")
    import torch

    from morphnet_onnx.training import ort_backend

    counts = {"ort": 0, "torch": 0}
    ort_step, torch_step = ort_backend.OrtSession.step, torch.optim.AdamW.step

    def counted_ort(self, batch, lr):
        counts["ort"] += 1
        return ort_step(self, batch, lr)

    def counted_torch(self, *args, **kwargs):
        counts["torch"] += 1
        return torch_step(self, *args, **kwargs)

    monkeypatch.setattr(ort_backend.OrtSession, "step", counted_ort)
    monkeypatch.setattr(torch.optim.AdamW, "step", counted_torch)
    steps = 8
    task = bt.Task("mnist1d", steps, budgets, input=(1, 1, 40))
    files = bt.prepare_task(task, tmp_path, [0])
    specs = bt.job_specs(task, files, tmp_path, [0], 1, starts, arms, {"default": {}},
                         {"tp_sparse_share": 0.5, "tp_iterative_steps": 2, "tp_modes": ["global", "local"]},
                         paper=True)
    done, taken = set(), {}
    while len(done) < len(specs):
        spec = next(s for s in specs if s["result"] not in done and all(n in done for n in s["needs"]))
        before = dict(counts)
        record = bt.run_job(spec)
        assert "error" not in record, record.get("traceback")
        done.add(spec["result"])
        taken[spec["name"]] = (counts["ort"] - before["ort"], counts["torch"] - before["torch"], record["rows"])
    kinds = {}
    for name, (ort_steps, torch_steps, rows) in taken.items():
        kind = name.split("/")[1].split("_")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
        assert all(row["steps"] == steps for row in rows), (name, [row["steps"] for row in rows])
        if kind == "torch-pruning":  # one sparse training shared, then a fine-tune per budget
            assert ort_steps == 0 and torch_steps == steps // 2 + len(budgets) * (steps - steps // 2)
            assert [row["point"] for row in rows] == list(budgets)
        elif kind == "torch-dense":
            assert (ort_steps, torch_steps) == (0, steps)
        else:  # dense, uniform, shrink: T steps; retrain: T for each of its two rows
            assert (ort_steps, torch_steps) == (steps * len(rows) if kind == "retrain" else steps, 0), name
    assert kinds == expected_kinds


def test_every_arm_takes_the_same_steps(tmp_path, monkeypatch):
    _count_arm_steps(tmp_path, monkeypatch, ["trained"], ["uniform", "shrink", "torch-pruning"], (0.5,),
                     {"dense": 1, "uniform": 1, "shrink": 1, "torch-pruning": 2})


@pytest.mark.slow
def test_every_arm_of_both_starts_takes_the_same_steps(tmp_path, monkeypatch):
    _count_arm_steps(tmp_path, monkeypatch, ["scratch", "trained"], list(bt.ARMS), (0.5, 0.25),
                     {"dense": 1, "uniform": 4, "shrink": 4, "retrain": 2, "torch-pruning": 4, "torch-dense": 1})


@pytest.mark.slow
def test_quick_benchmark_runs(tmp_path):
    pytest.importorskip("torch_pruning")
    pytest.importorskip("matplotlib")
    assert bt.main(["--quick", "--out", str(tmp_path), "--work", str(tmp_path / "w"), "--tasks", "mnist1d",
                    "--steps", "mnist1d=30"]) == 0
    assert (tmp_path / "tradeoff_quick.json").exists()
    assert (tmp_path / "tradeoff_quick_mnist1d.png").exists()
