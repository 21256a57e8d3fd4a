"""The cost model: FLOPs, params, roofline latency, and marginal cost per channel."""

import pytest

from builders import Net
from morphnet_onnx import MorphNetError, inspect, parse_hardware
from morphnet_onnx.cost.resources import HARDWARE


def two_branch(width, depthwise=False):
    """stem(3->w) -> [dw(w)] -> conv(w->16) -> head(16->4); 8x8 spatial."""
    net = Net(input_shape=(1, 3, 8, 8))
    x = net.relu(net.conv("input", 3, width, name="stem"))
    if depthwise:
        x = net.relu(net.conv(x, width, width, group=width, name="dw"))
    x = net.relu(net.conv(x, width, 16, name="mid"))
    return net.model(net.conv(x, 16, 4, name="head"))


def group_of(report, source):
    return next(g for g in report.analysis.groups if source in g.sources)


@pytest.mark.parametrize("depthwise", [False, True])
def test_marginal_flops_is_the_cost_of_one_more_channel(depthwise):
    wide, narrow = inspect(two_branch(8, depthwise)), inspect(two_branch(7, depthwise))
    group = group_of(wide, "stem")
    marginal = wide.costs.groups[group.id].marginal_flops
    assert marginal == pytest.approx(wide.costs.flops - narrow.costs.flops)
    # MorphNet's conv cost: 2 x spatial x kernel per channel pair (stem reads 3, mid writes 16)
    expected = 2 * 64 * 9 * (3 + 16) + (2 * 64 * 9 if depthwise else 0)
    assert marginal == pytest.approx(expected)


def test_removable_flops_is_everything_the_group_touches():
    report = inspect(two_branch(8))
    group = group_of(report, "stem")
    assert report.costs.groups[group.id].removable_flops == pytest.approx(2 * 64 * 9 * (3 * 8 + 8 * 16))


def test_marginal_params():
    wide, narrow = inspect(two_branch(8)), inspect(two_branch(7))
    group = group_of(wide, "stem")
    # weights only (biases are not part of MorphNet's bilinear size cost)
    assert wide.costs.groups[group.id].marginal_params == pytest.approx(9 * (3 + 16))
    assert wide.costs.params - narrow.costs.params == 9 * (3 + 16) + 1  # + the stem's bias


def test_roofline_latency_of_one_conv():
    net = Net(input_shape=(1, 3, 8, 8))
    model = net.model(net.conv("input", 3, 8, name="c", bias=False))
    report = inspect(model, hardware="1/1")  # 1 GFLOP/s, 1 GB/s
    flops = 2 * 64 * 9 * 3 * 8
    bytes_moved = 4 * (3 * 64 + 8 * 64 + 9 * 3 * 8)
    assert report.costs.latency_s == pytest.approx(max(flops, bytes_moved) / 1e9)
    report = inspect(model, hardware="V100")
    peak, bandwidth = HARDWARE["V100"]
    assert report.costs.latency_s == pytest.approx(max(flops / (peak * 1e9), bytes_moved / (bandwidth * 1e9)))


def test_marginal_latency_follows_the_dominant_roofline_term():
    wide, narrow = inspect(two_branch(8), hardware="T4"), inspect(two_branch(7), hardware="T4")
    group = group_of(wide, "stem")
    assert wide.costs.groups[group.id].marginal_latency_s == pytest.approx(
        wide.costs.latency_s - narrow.costs.latency_s, rel=0.05)


def test_hardware_table_and_custom_values():
    assert parse_hardware("t4").peak_gflops == 8100
    assert parse_hardware("tpuv2").bandwidth_gbs == 300
    custom = parse_hardware("15000/900")
    assert (custom.peak_gflops, custom.bandwidth_gbs) == (15000, 900)
    for bad in ("A100", "0/5", "fast/slow"):
        with pytest.raises(MorphNetError, match="--hardware"):
            parse_hardware(bad)


def test_matmul_and_gemm_flops_at_batch_one():
    net = Net(input_shape=(1, 5, 16), batch="N")
    h = net.op("Relu", [net.matmul("input", 16, 32, name="fc1")])
    model = net.model(net.matmul(h, 32, 8, name="fc2"))
    report = inspect(model)
    assert report.costs.flops == 2 * 5 * (16 * 32 + 32 * 8)
    fc1 = group_of(report, "fc1")
    assert report.costs.groups[fc1.id].marginal_flops == 2 * 5 * (16 + 8)
