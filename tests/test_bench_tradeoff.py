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


def test_aggregate_and_headline():
    rows = []
    for seed, noise in enumerate((-0.01, 0.0, 0.01)):
        for m, (f, a) in zip((0.25, 0.5, 1.0), UNIFORM):
            rows.append({"method": "uniform", "point": m, "seed": seed, "flops": f, "params": 10, "accuracy": a + noise})
        rows.append({"method": "shrink-retrained", "point": 0.5, "seed": seed, "flops": 1.5, "params": 8,
                     "accuracy": 0.80 + noise})
        rows.append({"method": "expand", "point": 0.5, "seed": seed, "flops": 4.0, "params": 12, "accuracy": 0.91 + noise})
        rows.append({"method": "torch-pruning", "point": 0.5, "seed": seed, "flops": 1.0, "params": 5,
                     "accuracy": 0.60 + noise})
        rows.append({"method": "torch-pruning", "point": 0.75, "seed": seed, "flops": 2.0, "params": 5,
                     "accuracy": 0.84 + noise})
    table = bt.aggregate(rows)
    uniform = [r for r in table if r["method"] == "uniform"]
    assert [r["point"] for r in uniform] == ["0.25", "0.5", "1.0"]
    assert uniform[0]["accuracy_mean"] == pytest.approx(0.70)
    assert uniform[0]["accuracy_std"] == pytest.approx(0.01)
    assert uniform[0]["seeds"] == 3
    figures = bt.headline(table)
    assert figures["flops_saved_at_equal_accuracy"] == pytest.approx(0.25)
    assert figures["expand_accuracy_gain"] == pytest.approx(1.0)
    assert figures["round2_accuracy_gain"] is None
    # torch-pruning reaches 0.80 at 1 + (0.2 / 0.24) FLOPs; at 1.5 FLOPs it scores 72 points
    assert figures["vs_torch_pruning"]["flops_saved_at_equal_accuracy"] == pytest.approx(1 - 1.5 / (1 + 0.2 / 0.24))
    assert figures["vs_torch_pruning"]["expand_accuracy_gain"] == pytest.approx(80.0 - 72.0)
    assert bt.width_span(table) == pytest.approx(20.0)


@pytest.mark.slow
def test_quick_benchmark_runs(tmp_path):
    pytest.importorskip("torch_pruning")
    pytest.importorskip("matplotlib")
    assert bt.main(["--quick", "--out", str(tmp_path), "--tasks", "mnist1d", "--steps", "mnist1d=30"]) == 0
    assert (tmp_path / "tradeoff_quick.json").exists()
    assert (tmp_path / "tradeoff_mnist1d_quick.png").exists()
