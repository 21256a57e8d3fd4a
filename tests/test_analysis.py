"""Channel groups on small hand-built graphs, one op family at a time."""

import numpy as np
import pytest

from builders import Net
from morphnet_onnx import analyze, load
from morphnet_onnx.surgery.checking import check


def groups_by_source(model, **kw):
    analysis = analyze(load(model), **kw)
    by_source = {}
    for group in analysis.groups:
        for source in group.sources:
            by_source[source] = group
    return analysis, by_source


def test_chain_gives_one_group_per_conv_and_logits_are_fixed():
    net = Net()
    x = net.relu(net.bn(net.conv("input", 3, 8, name="c1"), 8))
    x = net.relu(net.conv(x, 8, 16, name="c2"))
    x = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    out = net.gemm(x, 16, 10, name="fc")
    analysis, g = groups_by_source(net.model(out))
    assert len(analysis.groups) == 3
    assert g["c1"].width == 8 and g["c1"].prunable
    assert g["c2"].width == 16 and g["c2"].prunable
    assert not g["fc"].prunable and "model output" in g["fc"].reasons[0]
    assert {"c1", "bn1", "c2"} <= set(g["c1"].ops)  # its BN and the conv reading it are members


def test_residual_add_ties_both_branches():
    net = Net()
    stem = net.conv("input", 3, 8, name="stem")
    branch = net.conv(net.relu(net.conv(stem, 8, 4, name="inner")), 4, 8, name="expand")
    out = net.conv(net.op("Add", [stem, branch]), 8, 2, name="head")
    analysis, g = groups_by_source(net.model(out))
    assert g["stem"] is g["expand"]
    assert g["stem"].width == 8 and g["stem"].prunable
    assert g["inner"] is not g["stem"]


def test_concat_places_groups_side_by_side():
    net = Net()
    a = net.conv("input", 3, 4, name="a")
    b = net.conv("input", 3, 6, name="b")
    cat = net.op("Concat", [a, b], axis=1)
    out = net.conv(cat, 10, 2, name="head")
    analysis, g = groups_by_source(net.model(out))
    assert g["a"] is not g["b"]
    channels = analysis.tensor_channels(cat).reshape(-1, 2)
    assert channels[:4, 0].tolist() == [g["a"].id] * 4
    assert channels[4:, 0].tolist() == [g["b"].id] * 6
    assert channels[4:, 1].tolist() == list(range(6))


def test_depthwise_conv_passes_channels_through():
    net = Net()
    x = net.conv("input", 3, 8, name="pw1")
    x = net.conv(x, 8, 8, group=8, name="dw")
    out = net.conv(x, 8, 4, name="pw2")
    analysis, g = groups_by_source(net.model(out))
    assert "dw" not in g  # not a source: its channels are pw1's
    assert "dw" in g["pw1"].ops and g["pw1"].width == 8 and g["pw1"].prunable


def test_grouped_conv_with_many_small_groups_prunes_whole_groups():
    net = Net()
    x = net.conv("input", 3, 16, name="reduce")
    x = net.conv(x, 16, 16, group=8, name="grouped")  # 8 groups of 2 channels (ResNeXt style)
    out = net.conv(x, 16, 4, name="head")
    analysis, g = groups_by_source(net.model(out))
    assert g["reduce"].width == 8  # one channel per conv group


def test_grouped_conv_with_few_large_groups_keeps_the_group_count():
    net = Net()
    x = net.conv("input", 3, 16, name="reduce")
    x = net.conv(x, 16, 24, group=2, name="grouped")  # 2 groups of 8 in, 12 out (ShuffleNet v1 style)
    out = net.conv(x, 24, 4, name="head")
    analysis, g = groups_by_source(net.model(out))
    assert g["reduce"].width == 8  # channel i of both groups together
    assert g["grouped"].width == 12


def test_flatten_maps_each_channel_to_its_features():
    net = Net(input_shape=(1, 3, 4, 4))
    x = net.conv("input", 3, 5, name="c")
    flat = net.op("Flatten", [x], axis=1)
    out = net.gemm(flat, 5 * 16, 3, name="fc")
    analysis, g = groups_by_source(net.model(out))
    channels = analysis.tensor_channels(flat).reshape(-1, 2)
    assert channels.shape == (80, 2)
    assert channels[:, 1].tolist() == np.repeat(np.arange(5), 16).tolist()
    assert g["c"].prunable
    fc = next(c for c in analysis.costed if c.op == "fc")
    assert len(fc.in_ids) == 80


def test_squeeze_excitation_ties_the_expand_conv_to_the_scaled_channels():
    net = Net()
    x = net.relu(net.conv("input", 3, 8, name="body"))
    s = net.op("GlobalAveragePool", [x])
    s = net.relu(net.conv(s, 8, 2, k=1, name="se_reduce"))
    s = net.op("Sigmoid", [net.conv(s, 2, 8, k=1, name="se_expand")])
    out = net.conv(net.op("Mul", [x, s]), 8, 4, name="head")
    analysis, g = groups_by_source(net.model(out))
    assert g["body"] is g["se_expand"]
    assert g["se_reduce"] is not g["body"] and g["se_reduce"].prunable


def test_channel_shuffle_ties_the_halves_index_by_index():
    net = Net(input_shape=(1, 3, 4, 4))
    a = net.conv("input", 3, 6, name="a")
    b = net.conv("input", 3, 6, name="b")
    x = net.op("Concat", [a, b], axis=1)
    x = net.op("Reshape", [x, net.const(np.array([1, 2, 6, 4, 4], np.int64))])
    x = net.op("Transpose", [x], perm=[0, 2, 1, 3, 4])
    x = net.op("Reshape", [x, net.const(np.array([1, 12, 4, 4], np.int64))])
    out = net.conv(x, 12, 3, name="head")
    analysis, g = groups_by_source(net.model(out))
    assert g["a"] is g["b"] and g["a"].width == 6 and g["a"].prunable
    channels = analysis.tensor_channels(x).reshape(-1, 2)
    assert channels[:, 1].tolist() == np.repeat(np.arange(6), 2).tolist()  # interleaved


def test_split_selects_ranges():
    net = Net()
    x = net.conv("input", 3, 8, name="c")
    left, right = net.op("Split", [x, net.const(np.array([3, 5], np.int64))], n_outputs=2, axis=1)
    out = net.op("Concat", [net.conv(left, 3, 2, name="l"), net.conv(right, 5, 2, name="r")], axis=1)
    analysis, g = groups_by_source(net.model(out))
    assert analysis.tensor_channels(right).reshape(-1, 2)[:, 1].tolist() == [3, 4, 5, 6, 7]
    assert g["c"].prunable


def test_unknown_op_makes_its_channels_unprunable_with_the_reason():
    net = Net()
    x = net.conv("input", 3, 8, name="c")
    y = net.op("Einsum", [x], equation="nchw->nchw")
    out = net.conv(net.relu(y), 8, 2, name="head")
    analysis, g = groups_by_source(net.model(out))
    assert not g["c"].prunable
    assert "Einsum is not understood" in g["c"].reasons[0]
    assert any("Einsum" in note for note in analysis.notes)


def test_custom_domain_op_is_not_understood():
    net = Net()
    x = net.conv("input", 3, 8, name="c")
    y = net.op("FusedThing", [x], name="fused", domain="com.example")
    out = net.conv(net.conv(x, 8, 4, name="other"), 4, 2, name="head")
    model = net.model([out, y])
    model.opset_import.append(__import__("onnx").helper.make_opsetid("com.example", 1))
    model.graph.output[1].CopyFrom(__import__("onnx").helper.make_tensor_value_info(y, 1, [1, 8, 8, 8]))
    analysis, g = groups_by_source(model)
    assert not g["c"].prunable and "com.example::FusedThing" in g["c"].reasons[0]
    assert g["other"].prunable


def test_keep_regex_pins_matching_ops():
    net = Net()
    x = net.conv("input", 3, 8, name="backbone.c1")
    x = net.conv(x, 8, 8, name="head.c2")
    out = net.conv(x, 8, 2, name="out")
    analysis, g = groups_by_source(net.model(out), keep=[r"^head\."])
    assert g["backbone.c1"].prunable
    assert not g["head.c2"].prunable and "--keep" in g["head.c2"].reasons[0]


@pytest.mark.parametrize("op,attrs,prunable", [
    ("Softmax", {"axis": 1}, False),
    ("Softmax", {"axis": 3}, True),
    ("LpNormalization", {"axis": 1}, False),
    ("LpNormalization", {"axis": -1}, True),
    ("LRN", {"size": 3}, False),
    ("ReduceMean", {"axes": [1], "keepdims": 1}, True),  # exact with the removed channels added back
    ("ReduceMax", {"axes": [1], "keepdims": 1}, False),
    ("InstanceNormalization", None, True),
])
def test_ops_that_mix_channels(op, attrs, prunable):
    net = Net(opset=17)
    x = net.conv("input", 3, 8, name="c")
    if op == "InstanceNormalization":
        y = net.op(op, [x, net.const(np.ones(8, np.float32)), net.const(np.zeros(8, np.float32))])
    else:
        y = net.op(op, [x], **attrs)
    c_out = 1 if op.startswith("Reduce") else 8
    out = net.conv(y, c_out, 2, name="head")
    analysis, g = groups_by_source(net.model(out))
    assert g["c"].prunable is prunable


def test_layernorm_over_channels_passes_them_with_a_caution():
    net = Net(input_shape=(1, 5, 16))
    x = net.matmul("input", 16, 16, name="proj")
    ln = net.op("LayerNormalization", [x, net.const(np.ones(16, np.float32)), net.const(np.zeros(16, np.float32))],
                axis=-1)
    h = net.op("Relu", [net.matmul(ln, 16, 32, name="fc1")])
    out = net.matmul(h, 32, 16, name="fc2")
    analysis, g = groups_by_source(net.model(out))
    assert g["proj"].prunable and g["fc1"].prunable and g["fc1"].width == 32
    assert "fc1" not in g["proj"].sources
    assert any("LayerNormalization" in c and "exact when the removed channels hold constants" in c
               for c in analysis.cautions)


def test_single_head_attention_ties_query_and_key_dims():
    net = Net(input_shape=(1, 5, 8))
    q = net.matmul("input", 8, 8, name="q")
    k = net.matmul("input", 8, 8, name="k")
    scores = net.op("MatMul", [q, net.op("Transpose", [k], perm=[0, 2, 1])])
    out = net.op("Softmax", [scores], axis=-1)
    analysis, g = groups_by_source(net.model(out))
    assert g["q"] is g["k"] and g["q"].prunable and g["q"].width == 8


def test_matmul_contracting_channels_with_a_tensor_without_them_pins_them():
    net = Net(input_shape=(1, 5, 8))
    q = net.matmul("input", 8, 8, name="q")
    scores = net.op("MatMul", [q, net.op("Transpose", ["input"], perm=[0, 2, 1])])
    analysis, g = groups_by_source(net.model(net.op("Softmax", [scores], axis=-1)))
    assert not g["q"].prunable and "contracts channels" in g["q"].reasons[0]


def test_broadcast_of_a_single_channel_map_fixes_it():
    net = Net()
    x = net.conv("input", 3, 8, name="wide")
    m = net.conv("input", 3, 1, name="mask")
    out = net.conv(net.op("Mul", [x, m]), 8, 2, name="head")
    analysis, g = groups_by_source(net.model(out))
    assert g["wide"].prunable
    assert not g["mask"].prunable and "broadcast" in g["mask"].reasons[0]


def test_per_channel_constant_operand_keeps_group_prunable():
    net = Net()
    x = net.conv("input", 3, 8, name="c")
    y = net.op("Mul", [x, net.const(np.ones((1, 8, 1, 1), np.float32))])
    y = net.op("PRelu", [y, net.const(np.full((8, 1, 1), 0.1, np.float32))])
    out = net.conv(y, 8, 2, name="head")
    analysis, g = groups_by_source(net.model(out))
    assert g["c"].prunable


def test_unsqueezed_constant_is_still_a_constant():
    """DenseNet's Caffe2 export scales by Unsqueeze(bn_w): a constant, not a computed activation."""
    net = Net()
    x = net.conv("input", 3, 8, name="c")
    scale = net.op("Unsqueeze", [net.const(np.ones(8, np.float32)), net.const(np.array([1, 2], np.int64))])
    out = net.conv(net.op("Mul", [x, scale]), 8, 2, name="head")
    analysis, g = groups_by_source(net.model(out))
    assert g["c"].prunable


def test_runtime_computed_reshape_target_is_folded():
    """torch exports x.view(n, g, c // g, h, w) with Shape/Gather/Div/Concat; with static shapes it folds."""
    net = Net(input_shape=(1, 3, 4, 4), batch="N")
    a = net.conv("input", 3, 6, name="a")
    b = net.conv("input", 3, 6, name="b")
    x = net.op("Concat", [a, b], axis=1)
    shape = net.op("Shape", [x])
    dims = [net.op("Gather", [shape, net.const(np.array(i, np.int64))], axis=0) for i in range(4)]
    half = net.op("Div", [dims[1], net.const(np.array(2, np.int64))])
    unsq = [net.op("Unsqueeze", [d, net.const(np.array([0], np.int64))])
            for d in (dims[0], net.const(np.array(2, np.int64)), half, dims[2], dims[3])]
    target = net.op("Concat", unsq, axis=0)
    y = net.op("Reshape", [x, target])
    y = net.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    y = net.op("Flatten", [y], axis=1)
    y = net.op("Reshape", [y, net.const(np.array([-1, 12, 4, 4], np.int64))])
    out = net.conv(y, 12, 2, name="head")
    analysis, g = groups_by_source(net.model(out))
    assert not analysis.notes
    assert g["a"] is g["b"] and g["a"].prunable and g["a"].width == 6


def test_networkx_graph_links_groups_to_ops():
    net = Net()
    x = net.conv("input", 3, 8, name="c1")
    out = net.conv(x, 8, 2, name="c2")
    analysis = analyze(load(net.model(out)))
    graph = analysis.graph
    group_nodes = [n for n, d in graph.nodes(data=True) if d["kind"] == "group"]
    assert len(group_nodes) == 2
    assert graph.has_edge(group_nodes[0], "c1") and graph.has_edge(group_nodes[0], "c2")
    assert graph.edges[group_nodes[0], "c1"]["role"] == "source"


def test_shapes_after_a_custom_op_come_from_its_declared_output():
    import onnx

    net = Net()
    x = net.conv("input", 3, 8, name="c1")
    y = net.op("FusedThing", [x], name="fused", domain="com.example")
    z = net.relu(net.conv(y, 8, 8, name="c2"))
    out = net.conv(z, 8, 2, name="head")
    model = net.model(out)
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    model.graph.value_info.append(onnx.helper.make_tensor_value_info(y, 1, ["N", 8, 8, 8]))
    analysis, g = groups_by_source(model)
    assert g["c2"].prunable and not g["c1"].prunable
    assert any("com.example::FusedThing" in r for r in g["c1"].reasons)


def test_reshape_target_read_from_another_tensor_is_rewritten_not_pinned():
    """timm's lambda layer: out.reshape(B, C, H, W) with C read from the layer's input. Surgery writes
    the target anew (ops/base.py: rewrite_shape_input), so the input prunes apart from the output."""
    net = Net(input_shape=(1, 3, 4, 4), batch="N")
    x = net.relu(net.conv("input", 3, 8, name="c1"))
    y = net.conv(x, 8, 8, name="c2")
    shape = net.op("Shape", [x])
    flat = net.op("Reshape", [y, net.const(np.array([0, 8, 16], np.int64))])
    back = net.op("Reshape", [flat, shape])
    out = net.conv(back, 8, 2, name="head")
    model = net.model(out)
    analysis, g = groups_by_source(model)
    assert g["c1"].prunable and g["c2"].prunable and g["c1"] is not g["c2"]
    result = check(model, fraction=0.5, seed=0)  # a symbolic batch: compared at batch 2
    assert result.passed and result.groups_pruned == 2, result


def test_reshape_target_from_its_own_shape_stays_prunable():
    net = Net(input_shape=(1, 3, 4, 4), batch="N")
    x = net.conv("input", 3, 8, name="c1")
    batch = net.op("Gather", [net.op("Shape", [x]), net.const(np.array([0], np.int64))], axis=0)
    target = net.op("Concat", [batch, net.const(np.array([-1], np.int64))], axis=0)
    flat = net.op("Reshape", [x, target])
    out = net.gemm(flat, 8 * 16, 3, name="fc")
    analysis, g = groups_by_source(net.model(out))
    assert g["c1"].prunable
