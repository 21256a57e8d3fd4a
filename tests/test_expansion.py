"""expand: one multiplier to a budget, widening exact with --init keep, fresh weights, bad input."""

import json

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import Net, concat_of_two_branches
from conftest import REPO
from morphnet_onnx import Budget, MorphNetError, expand, prune
from morphnet_onnx.analysis.walk import analyze
from morphnet_onnx.cli import main
from morphnet_onnx.cost.resources import compute_costs
from morphnet_onnx.expansion.expand import channel_copies
from morphnet_onnx.loading.view import ConstantView
from morphnet_onnx.loading.model import load
from morphnet_onnx.surgery.pruning import prepare
from morphnet_onnx.loading.runtime import make_session, random_feeds
from test_surgery import BLOCKS, build

TINY = REPO / "models" / "tiny_resnet.onnx"
EXAMPLE = REPO / "models" / "resnet1d_mnist1d.onnx"


def outputs(model, feeds):
    return make_session(model).run(None, feeds)


def assert_same_function(original, expanded, batch=2):
    loaded = load(original)
    feeds = random_feeds(loaded.model, loaded.shapes, batch, 7)
    for a, b in zip(outputs(loaded.model, feeds), outputs(expanded, feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(a).max())))


def widths(model):
    loaded = load(model)
    return sorted(g.width for g in analyze(loaded).prunable_groups)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=BLOCKS, dims=st.sampled_from([1, 2]), bn=st.booleans(), seed=st.integers(0, 10_000),
       width=st.integers(4, 9), multiplier=st.sampled_from([1.3, 1.5, 2.0, 2.7]))
def test_widening_with_kept_weights_computes_the_same_function(blocks, dims, bn, seed, width, multiplier):
    # Residual sums, Concat towers, depthwise and grouped convs, SE gates, Split: every new channel is
    # made by random weights and read with zero weights, so the outputs do not change.
    model = build(blocks, dims, bn, seed, width)
    result = expand(model, multiplier=multiplier, init="keep", seed=seed)
    onnx.checker.check_model(result.model, full_check=True)
    assert result.flops_after > result.flops_before
    assert_same_function(model, result.model)


def test_widening_a_flattened_feature_and_a_matmul_is_exact():
    net = Net(input_shape=(1, 3, 6, 6), seed=1, batch="N")
    x = net.relu(net.bn(net.conv("input", 3, 5, name="stem"), 5))
    flat = net.op("Flatten", [x], axis=1)  # channel-major: each channel a block of 36 features
    hidden = net.relu(net.gemm(flat, 5 * 36, 7, name="fc1"))
    model = net.model(net.matmul(net.matmul(hidden, 7, 6, name="proj"), 6, 4, name="head"))
    result = expand(model, multiplier=2.0, init="keep")
    assert result.widths == [{"sources": ["stem"], "before": 5, "after": 10},
                             {"sources": ["fc1"], "before": 7, "after": 14},
                             {"sources": ["proj"], "before": 6, "after": 12}]
    assert_same_function(model, result.model)


def test_multiplier_scales_every_prunable_group_and_keeps_the_fixed_ones():
    result = expand(TINY, multiplier=0.5)
    assert [row["after"] for row in result.widths] == [row["before"] // 2 for row in result.widths]
    loaded = load(result.model)
    assert loaded.shapes[loaded.model.graph.input[0].name] == load(TINY).shapes["input"]
    assert loaded.shapes[loaded.model.graph.output[0].name] == load(TINY).shapes[load(TINY).model.graph.output[0].name]


@pytest.mark.parametrize("resource", ["flops", "size", "latency"])
def test_expand_lands_within_one_percent_below_the_budget(tmp_path, resource):
    half = tmp_path / "half.onnx"
    expand(EXAMPLE, half, multiplier=0.5)
    result = expand(half, tmp_path / "back.onnx", budget=Budget(resource, "1.0x"), reference=EXAMPLE)
    assert result.cost_after <= result.target
    # Within 1% below, unless one rounding step more would cross the budget by more than that.
    step = result.next_step_cost - result.cost_after
    assert result.target - result.cost_after <= max(0.01 * result.target, step)
    assert result.next_step_cost > result.target
    # The cost was measured on the written model, and it is the same function of the widths.
    loaded = load(tmp_path / "back.onnx")
    assert compute_costs(analyze(loaded), loaded).flops == result.flops_after


def test_one_multiplier_for_every_group_up_to_rounding(tmp_path):
    half = tmp_path / "half.onnx"
    expand(EXAMPLE, half, multiplier=0.5)
    result = expand(half, budget=Budget("flops", "1.0x"), reference=EXAMPLE, round_to=4)
    for row in result.widths:
        assert row["after"] % 4 == 0
        assert abs(row["after"] - result.multiplier * row["before"]) <= 2  # nearest multiple of 4


def test_absolute_budget_and_round_to(tmp_path):
    full = compute_costs(*reversed(prepare(TINY))).flops
    result = expand(TINY, budget=Budget("flops", f"{full * 2:.0f}"), round_to=8)
    assert result.cost_after <= full * 2
    assert all(row["after"] % 8 == 0 for row in result.widths)


def test_groups_at_zero_stay_at_zero():
    model = concat_of_two_branches()
    _, analysis = prepare(model)
    group = next(g for g in analysis.groups if "b" in g.sources)
    result = expand(model, structure={"groups": [{"id": group.id, "alive": []}]}, multiplier=2.0)
    assert result.widths == [{"sources": ["a"], "before": 4, "after": 8}]
    assert "b" not in {n.name for n in result.model.graph.node}


def test_structure_is_applied_before_the_multiplier():
    _, analysis = prepare(TINY)
    first = analysis.prunable_groups[0]
    result = expand(TINY, structure={"groups": [{"id": first.id, "alive_count": 4}]}, multiplier=1.0, init="keep")
    assert result.widths[0]["before"] == 4 and result.widths[0]["after"] == 4


def test_fresh_weights_are_seeded_and_standard():
    a = expand(TINY, multiplier=1.0, init="fresh", seed=3).model
    b = expand(TINY, multiplier=1.0, init="fresh", seed=3).model
    c = expand(TINY, multiplier=1.0, init="fresh", seed=4).model
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()
    values = ConstantView(a.graph).arrays()
    for node in a.graph.node:
        if node.op_type == "BatchNormalization":
            for index, expected in ((1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0)):
                assert np.all(values[node.input[index]] == expected)
        if node.op_type == "Conv":
            weight = values[node.input[1]]
            fan_in = int(np.prod(weight.shape[1:]))
            assert abs(weight.std() - np.sqrt(2 / fan_in)) < 0.25 * np.sqrt(2 / fan_in)  # He: a ReLU follows
            if len(node.input) > 2:
                assert not values[node.input[2]].any()
    assert widths(a) == widths(TINY)  # --multiplier 1: the same structure, retrained from scratch


def test_widened_names_stay_the_users(tmp_path):
    result = expand(TINY, multiplier=1.5, init="keep")
    names = {t.name for t in result.model.graph.initializer}
    assert not any("__pruned" in name for name in names)
    assert names <= {t.name for t in onnx.load(str(TINY)).graph.initializer} | names


def test_channel_copies_spread_evenly_and_keep_the_strongest():
    alive = np.array([True, False, True, True, True])
    assert channel_copies(alive, 6, None).tolist() == [2, 0, 1, 2, 1]  # alive 0 and 3: evenly spaced
    assert channel_copies(alive, 2, np.array([0.1, 9, 0.5, 0.2, 0.9])).tolist() == [0, 0, 1, 0, 1]
    assert channel_copies(alive, 4, None).tolist() == alive.astype(int).tolist()


@pytest.mark.parametrize("kwargs, match", [
    ({"multiplier": 0}, "above 0"),
    ({"multiplier": -1.0}, "above 0"),
    ({"multiplier": float("nan")}, "above 0"),
    ({}, "either a budget"),
    ({"multiplier": 2.0, "budget": Budget("flops", "1x")}, "either a budget"),
    ({"budget": Budget("flops", "0.0001x")}, "below what the model costs"),
    ({"multiplier": 2.0, "round_to": 0}, "round-to"),
    ({"multiplier": 2.0, "init": "warm"}, "--init"),
    ({"multiplier": 2.0, "reference": TINY}, "--reference"),
    ({"multiplier": 2.0, "structure": {"groups": [{"id": 999, "alive": []}]}}, "does not exist"),
])
def test_bad_arguments_are_one_line_errors(kwargs, match):
    with pytest.raises(MorphNetError, match=match):
        expand(TINY, **kwargs)


def test_nothing_prunable_is_refused():
    net = Net(input_shape=(1, 3, 4, 4))
    model = net.model(net.conv("input", 3, 2, name="only"))  # its channels are the model's output
    with pytest.raises(MorphNetError, match="nothing to expand"):
        expand(model, multiplier=2.0)


def test_cli_expand_reports_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "wide.onnx"
    assert main(["expand", str(TINY), "--multiplier", "1.5", "-o", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["multiplier"] == 1.5 and doc["flops_after"] > doc["flops_before"]
    onnx.checker.check_model(str(out), full_check=True)
    bad = tmp_path / "bad.onnx"
    assert main(["expand", str(TINY), "--budget-flops", "0.0001x", "-o", str(bad)]) == 2
    assert main(["expand", str(TINY), "--multiplier", "0", "-o", str(bad)]) == 2
    assert "above 0" in capsys.readouterr().err
    assert not bad.exists()
    assert main(["expand", str(TINY), "--multiplier", "2", "-o", str(TINY)]) == 2  # never the input


def test_a_structure_of_the_original_expands_like_the_model_it_prunes_to(tmp_path):
    structure = {"conv2": 5, "conv8": 12, "conv12": 20}
    from_structure = expand(TINY, structure=structure, budget=Budget("flops", "1.0x"))
    pruned = tmp_path / "pruned.onnx"
    prune(TINY, structure, pruned, approximate_borders=True)
    from_model = expand(pruned, budget=Budget("flops", "1.0x"), reference=TINY)
    assert from_structure.widths == from_model.widths
    assert from_structure.cost_after == from_model.cost_after


def test_cli_expand_ends_with_the_short_diff_and_draws_it(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, plot = tmp_path / "wide.onnx", tmp_path / "wide.svg"
    assert main(["expand", str(TINY), "--multiplier", "1.5", "-o", str(out), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert "diff: FLOPs 36.5M -> 81.5M" in text and "10 wider" in text
    assert "latency (V100) " in text  # the roofline's hardware is named, as in `diff`'s table
    assert plot.read_text().lstrip().startswith("<?xml")
    assert main(["expand", str(TINY), "--multiplier", "1.5", "-o", str(tmp_path / "t4.onnx"), "--hardware", "T4"]) == 0
    assert "latency (T4) " in capsys.readouterr().out  # the hardware the command costed with
