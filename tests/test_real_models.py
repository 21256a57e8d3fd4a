"""Real topologies: the onnx wheel's light CNNs and torchvision exports (tools/export_torchvision.py).

FLOPs must agree within 1% with an independent count: onnx's shape inference plus a separate
formula for the light models, torch's FlopCounterMode (tests/data/torchvision/reference.json) for
the torchvision exports.
"""

import json

import numpy as np
import pytest

from builders import independent_flops
from conftest import LIGHT_DIR, TORCHVISION_DIR, light_models
from morphnet_onnx import compute_costs, inspect
from morphnet_onnx.cost.resources import Hardware
from morphnet_onnx.loading.model import load
from morphnet_onnx.method.decision import decide
from morphnet_onnx.method.regularizers import group_regularizers
from morphnet_onnx.recipes.shrink import check_shrinkable
from morphnet_onnx.surgery.apply import Surgeon
from morphnet_onnx.surgery.feasibility import floor_structure
from morphnet_onnx.surgery.pruning import prepare

REFERENCE = json.loads((TORCHVISION_DIR / "reference.json").read_text())
TORCHVISION = sorted(TORCHVISION_DIR.glob("*.onnx"))
TRANSFORMERS = ("vit_b_16", "convnext_tiny")


def model_name(path):
    return path.stem.rsplit("_", 1)[0]


def test_light_models_and_torchvision_exports_are_present():
    assert len(light_models()) == 9
    assert len(TORCHVISION) == 44


@pytest.mark.parametrize("path", light_models(), ids=lambda p: p.stem)
def test_light_model_flops_match_independent_count(path):
    report = inspect(path)
    expected = independent_flops(load(path).model)
    assert report.costs.flops == pytest.approx(expected, rel=0.01)
    assert report.analysis.prunable_groups
    assert not report.analysis.notes  # every op understood


def test_light_resnet50_matches_the_published_count():
    report = inspect(LIGHT_DIR / "light_resnet50.onnx")
    assert report.costs.macs == pytest.approx(4.09e9, rel=0.005)
    assert report.costs.params == pytest.approx(25.56e6, rel=0.005)
    # stem + 2 inner groups per bottleneck x 16 + 4 residual streams + logits
    assert len(report.analysis.groups) == 38 and len(report.analysis.prunable_groups) == 37


@pytest.mark.parametrize("path", TORCHVISION, ids=lambda p: p.stem)
def test_torchvision_flops_match_torch_flop_counter(path):
    report = inspect(path)
    reference = REFERENCE[model_name(path)]
    assert report.costs.flops == pytest.approx(reference["flops"], rel=0.01)


@pytest.mark.parametrize("path", TORCHVISION, ids=lambda p: p.stem)
def test_torchvision_prunability(path):
    report = inspect(path)
    name = model_name(path)
    assert not report.analysis.notes, report.analysis.notes
    for group in report.analysis.groups:
        assert group.prunable or group.reasons  # never unprunable without a reason
    if name in TRANSFORMERS:
        assert report.prunable_flops_share > 0.3  # MLP hidden layers at least
    else:
        assert report.prunable_flops_share > 0.95
    # logits are never prunable
    logits = [g for g in report.analysis.groups if any("model output" in r for r in g.reasons)]
    assert logits


def test_torchvision_params_close_to_torch():
    for path in TORCHVISION:
        if not path.stem.endswith("_bn"):
            continue
        report = inspect(path)
        assert report.costs.params == pytest.approx(REFERENCE[model_name(path)]["params"], rel=0.01), path.stem


@pytest.mark.parametrize("name", ["googlenet_bn", "inception_v3_bn", "squeezenet1_1_bn", "shufflenet_v2_x1_0_bn"])
def test_the_floor_of_concat_and_shuffle_models_keeps_a_few_channels(name):
    """Regression: their floor (every prunable group at its minimum) cost 0.41-0.77x of the FLOPs,
    repair having given back whole groups (Concats whose branches all vanished; ShuffleNet's splits
    that one kept channel left empty on one side), so `shrink --budget-flops 0.5x` was refused."""
    loaded, analysis = prepare(TORCHVISION_DIR / f"{name}.onnx")
    floor = floor_structure(loaded, analysis)
    full = compute_costs(analysis, loaded).flops
    assert compute_costs(analysis, loaded, alive=floor.element_alive(analysis)).flops < 0.02 * full
    assert all(floor.alive[g.id].sum() <= g.width // 3 for g in analysis.prunable_groups)
    assert not Surgeon(loaded, analysis, floor).structural_problems()
    check_shrinkable(loaded, analysis, None, "flops", full, 0.25 * full, "0.25x")  # refused before


def test_decide_lands_on_the_budget_when_shufflenet_groups_die():
    """Regression: with half the groups' gates near zero (what training does to groups it removes),
    ShuffleNet v2's decision at 0.25x of the FLOPs cost 0.771x: repair gave back whole groups."""
    loaded, analysis = prepare(TORCHVISION_DIR / "shufflenet_v2_x1_0_bn.onnx")
    regs = group_regularizers(analysis, loaded, "gamma")
    rng = np.random.default_rng(0)
    dead = {r.group_id for r in regs if rng.uniform() < 0.5}
    params = {m.param: (rng.uniform(0, 1, loaded.view.value(m.param).shape) * (1e-3 if r.group_id in dead else 1))
              .astype(np.float32) for r in regs for m in r.members}
    full = compute_costs(analysis, loaded).flops
    decision = decide(analysis, loaded, regs, params, 1e-2, "flops", 0.25 * full, Hardware("V100", 125000.0, 900.0))
    assert 0.9 * 0.25 * full <= decision.cost <= 0.25 * full, decision.cost / full
