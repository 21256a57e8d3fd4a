"""The hold's latency target calibrated by measurement while `shrink` trains (method/landing.py's
`calibrator`, the controller's `calibrate`), the landing's first try, and measured latency under
torchrun (recipes/measured.py). Nothing here asserts a time: the runtime is faked or tiny."""

from __future__ import annotations

import json

import onnx
import pytest
from rich.console import Console

from builders import random_dataset, spread_gates
from morphnet_onnx import MorphNetError
from morphnet_onnx.cost.resources import compute_costs
from morphnet_onnx.cost.timing import Measurement
from morphnet_onnx.method import landing as landing_module
from morphnet_onnx.method.controller import BudgetController
from morphnet_onnx.method.decision import decide
from morphnet_onnx.method.family import PhasedController
from morphnet_onnx.method.landing import calibrator, land
from morphnet_onnx.method.regularizers import group_regularizers
from morphnet_onnx.recipes.cycle import cycle
from morphnet_onnx.recipes.family import FamilyResult
from morphnet_onnx.recipes.shrink import Budget, shrink
from morphnet_onnx.report.family import print_family
from morphnet_onnx.surgery.pruning import prepare
from morphnet_onnx.training.trainer import TrainOptions


@pytest.fixture(scope="module")
def setup(table_file):
    """The tiny model and its table (conftest.py), regularizers and gates spread over two decades."""
    model, path, table = table_file
    folder = path.parent
    loaded, analysis = prepare(model)
    regs = group_regularizers(analysis, loaded, "auto", "max")
    params = spread_gates(loaded, regs)
    full = compute_costs(analysis, loaded, table).latency_s
    return model, folder, table, loaded, analysis, regs, params, full


def test_the_controller_calibrates_its_target_once_per_hold_window(setup):
    _, _, table, loaded, analysis, regs, params, full = setup
    asked = []

    def calibrate(p, target):
        asked.append(target)
        return target * 1.2

    def decide_at(p, goal, in_resource="latency"):
        return decide(analysis, loaded, regs, p, 0.01, in_resource, goal, table)

    def controller():
        return BudgetController(analysis, loaded, regs, "latency", 0.5 * full, None, 0.01, table, hold=True,
                                decide_at=decide_at, hold_window=(50, 100), calibrate=calibrate)

    first = controller()
    for step in (0, 25, 50, 75, 100):
        first(step, lambda: params)
    assert asked == [0.5 * full]  # at the window's start, once
    assert first.target == pytest.approx(0.6 * full)
    assert [(e["step"], e["calibrated_from"], e["calibrated_to"]) for e in first.log if "calibrated_to" in e] \
        == [(50, 0.5 * full, pytest.approx(0.6 * full))]
    # a resumed run keeps the calibrated target and does not measure that window again
    resumed = controller()
    resumed.load_state(json.loads(json.dumps(first.state())))
    resumed(125, lambda: params)
    assert asked == [0.5 * full] and resumed.target == pytest.approx(0.6 * full)
    # without holding there is no window, and nothing is measured
    plain = BudgetController(analysis, loaded, regs, "latency", 0.5 * full, None, 0.01, table,
                             hold_window=(50, 100), calibrate=calibrate)
    plain(50, lambda: params)
    assert asked == [0.5 * full] and plain.target == 0.5 * full


def test_each_phase_of_a_family_calibrates_its_own_budget(setup):
    _, _, table, loaded, analysis, regs, params, full = setup
    asked = []

    def calibrate(p, target):
        asked.append(target / full)
        return target * 1.2

    targets = [0.75 * full, 0.5 * full, 0.25 * full]
    phased = PhasedController(analysis, loaded, regs, "latency", targets[0], None, 0.01, table, total_steps=100,
                              targets=targets, ends=[50, 75, 100], hold=True,
                              windows=[(10, 40), (50, 68), (75, 93)], calibrate=calibrate)
    starts = []
    for step in (0, 25, 50, 75):
        phased(step, lambda: params)
        starts.append(phased.hold_start)
    assert asked == pytest.approx([0.75, 0.5, 0.25])
    assert phased.targets == pytest.approx([0.9 * full, 0.6 * full, 0.3 * full])
    # each later phase holds from the previous budget as calibrated
    assert starts == [None, None, pytest.approx(0.9 * full), pytest.approx(0.6 * full)]
    again = PhasedController(analysis, loaded, regs, "latency", targets[0], None, 0.01, table, total_steps=100,
                             targets=targets, ends=[50, 75, 100], hold=True, windows=[(10, 40), (50, 68), (75, 93)])
    again.load_state(json.loads(json.dumps(phased.state())))
    assert again.targets == pytest.approx(phased.targets) and again.target == pytest.approx(0.3 * full)


def _channels(model: onnx.ModelProto) -> int:
    return sum(int(t.dims[0]) for t in model.graph.initializer if len(t.dims) == 4)


@pytest.fixture
def runtime(monkeypatch):
    """A fake runtime that times a model by its conv channels: a fixed 0.3 of the full model's time
    and 0.7 by channels, which puts the table's structures below their budget here."""
    def compare(original, model, table, shapes):
        share = 0.3 + 0.7 * _channels(model) / _channels(original)
        return Measurement(1e-3, 0.005, 100, "cpu"), Measurement(1e-3 * share, 0.005, 100, "cpu")
    monkeypatch.setattr(landing_module, "compare", compare)


def test_the_landing_starts_at_the_calibrated_target_and_says_which_it_kept(setup, runtime):
    _, _, table, loaded, analysis, regs, params, full = setup
    result = land(analysis, loaded, regs, params, 0.01, 0.5 * full, full, True, table, 1, loaded.model,
                  loaded.shapes, first_target=0.55 * full)
    assert result.tries[0]["table_target_s"] == pytest.approx(0.55 * full)
    assert result.table_target in [t["table_target_s"] for t in result.tries]
    assert result.decision.target == pytest.approx(0.5 * full)  # the budget, not the try's target
    calibrate = calibrator(analysis, loaded, regs, 0.01, full, True, table, 1)
    corrected = calibrate(params, 0.5 * full)
    again = land(analysis, loaded, regs, params, 0.01, 0.5 * full, full, True, table, 1, loaded.model, loaded.shapes)
    assert corrected == pytest.approx(again.table_target)
    assert again.tries[0]["table_target_s"] == pytest.approx(0.5 * full)  # without a first target: the budget

def test_measured_latency_under_torchrun_needs_a_table_file(setup, monkeypatch, tmp_path):
    model, folder, *_ = setup
    data = random_dataset(tmp_path, 32, 8)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    options = TrainOptions(steps=1, batch_size=16, backend="torch", progress=False)
    with pytest.raises(MorphNetError, match="every rank would time the model at once"):
        shrink(model, data / "train.npz", None, budget=Budget("latency", "0.5x"), hardware="measure",
               latency_threads=1, options=options)
    with pytest.raises(MorphNetError, match="run the cycle in one process"):
        cycle(model, data / "train.npz", data / "val.npz", budget=Budget("latency", "0.5x"), out_dir=tmp_path / "r",
              hardware="measure", options=options)


def test_a_familys_table_shows_what_each_phase_held_to():
    member = {"budget": "0.5x", "cost_ratio": 0.55, "flops_after": 1e6, "params_after": 1e4, "accuracy": 0.8,
              "cut_accuracy": 0.7, "decided_at_step": 100, "output": "x.onnx", "warnings": [],
              "latency": {"ratio": 0.49, "noise": 0.01, "predicted_ratio": 0.55},
              "decision": {"hold_calibrations": [{"step": 25, "table_from": 0.5, "table_to": 0.5512}]}}
    console = Console(record=True, width=240)
    print_family(FamilyResult("latency", [member], 100, 50, 1.0), console=console)
    text = console.export_text()
    assert "latency (table)" in text and "held to (table)" in text
    row = next(line for line in text.splitlines() if "x.onnx" in line)
    assert "0.490x ± 1.0%" in row and "0.551x" in row
