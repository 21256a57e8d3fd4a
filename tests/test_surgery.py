"""Surgery by equivalence: remove channels, compare with the original whose removed channels' gates
are zero (onnxruntime on random inputs). Random architectures come from hypothesis."""

import json

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import Net, concat_of_two_branches, fire_modules
from conftest import TORCHVISION_DIR
from morphnet_onnx import LatencySettings, MorphNetError, measure_latency
from morphnet_onnx.surgery.checking import check, zero_gates
from morphnet_onnx.surgery.pruning import prepare, prune, prune_loaded
from morphnet_onnx.loading.runtime import make_session, random_feeds
from morphnet_onnx.surgery.structure import Structure


# ---- random architectures ------------------------------------------------------------------------

def build(draw_blocks, dims: int, bn: bool, seed: int, width: int) -> onnx.ModelProto:
    spatial = {1: (16,), 2: (8, 8), 3: (4, 4, 4)}[dims]
    net = Net(input_shape=(1, 3) + spatial, seed=seed, batch="N")
    c = width

    def conv(x, c_in, c_out, k=3, group=1):
        y = net.conv(x, c_in, c_out, k=k, group=group, dims=dims, bias=not bn)
        return net.bn(y, c_out) if bn else y

    x = net.relu(conv("input", 3, c))
    for kind in draw_blocks:
        if kind == "chain":
            x = net.relu(conv(x, c, c + 2))
            c += 2
        elif kind == "residual":
            h = net.relu(conv(x, c, max(2, c // 2)))
            h = conv(h, max(2, c // 2), c)
            x = net.relu(net.op("Add", [x, h]))
        elif kind == "inception":
            a = net.relu(conv(x, c, 3, k=1))
            b = net.relu(conv(net.relu(conv(x, c, 2, k=1)), 2, 5))
            p = net.op("MaxPool", [x], kernel_shape=[3] * dims, strides=[1] * dims, pads=[1] * (2 * dims))
            p = net.relu(conv(p, c, 2, k=1))
            x = net.op("Concat", [a, b, p], axis=1)
            c = 10
        elif kind == "depthwise":
            h = net.relu(conv(x, c, 2 * c, k=1))
            h = net.relu(conv(h, 2 * c, 2 * c, group=2 * c))
            x = conv(h, 2 * c, c, k=1)
        elif kind == "se":
            s = net.op("GlobalAveragePool", [x])
            s = net.relu(net.conv(s, c, 2, k=1, dims=dims))
            s = net.op("Sigmoid", [net.conv(s, 2, c, k=1, dims=dims)])
            x = net.op("Mul", [x, s])
        elif kind == "split":
            half = c // 2
            left, right = net.op("Split", [x, net.const(np.array([half, c - half], np.int64))], n_outputs=2, axis=1)
            right = net.relu(conv(right, c - half, c - half))
            x = net.op("Concat", [left, right], axis=1)
        elif kind == "grouped":
            c2 = 4 * ((c + 3) // 4)
            x = net.relu(conv(x, c, c2, k=1))
            x = net.relu(conv(x, c2, c2, group=2))  # few large groups
            x = net.relu(conv(x, c2, c2, group=c2 // 2))  # many small groups
            c = c2
    pooled = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    return net.model(net.gemm(pooled, c, 5, name="logits"))


BLOCKS = st.lists(st.sampled_from(["chain", "residual", "inception", "depthwise", "se", "split", "grouped"]),
                  min_size=1, max_size=5)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=BLOCKS, dims=st.sampled_from([1, 2, 3]), bn=st.booleans(), seed=st.integers(0, 10_000),
       width=st.integers(4, 9), fraction=st.sampled_from([0.3, 0.6, 1.0]))
def test_random_architectures_prune_exactly(blocks, dims, bn, seed, width, fraction):
    model = build(blocks, dims, bn, seed, width)
    result = check(model, fraction=fraction, seed=seed)
    assert result.passed, (blocks, result)
    assert result.flops_after <= result.flops_before


# ---- exactness with nonzero constants --------------------------------------------------------------

def gamma_only_model(k_next: int, pad: bool):
    """conv -> BN (beta > 0) -> ReLU -> conv(k_next) -> flatten -> fc: removed channels hold ReLU(beta)."""
    net = Net(input_shape=(1, 3, 6, 6), seed=3)
    x = net.relu(net.bn(net.conv("input", 3, 8, name="c1", bias=False), 8, name="bn1"))
    x = net.relu(net.op("Conv", [x, net.const(net.rng.normal(0, 0.3, (6, 8, k_next, k_next)).astype(np.float32)),
                                 net.const(np.zeros(6, np.float32))],
                        kernel_shape=[k_next, k_next], pads=[k_next // 2 if pad else 0] * 4, name="c2"))
    x = net.op("Flatten", [x], axis=1)
    side = 6 if pad else 6 - k_next + 1
    model = net.model(net.gemm(x, 6 * side * side, 4, name="fc"))
    for tensor in model.graph.initializer:  # beta > 0 so removed channels are not zero
        if tensor.name == "bn1.bias":
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.linspace(0.2, 0.9, 8).astype(np.float32), "bn1.bias"))
    return model


def run_both(loaded, analysis, structure, **kw):
    gated = zero_gates_scales_only(loaded, analysis, structure)
    gated_loaded = type(loaded)(model=gated, path=None, shapes=loaded.shapes, dtypes=loaded.dtypes)
    result = prune_loaded(gated_loaded, analysis, structure, **kw)
    onnx.checker.check_model(result.model, full_check=True)
    feeds = random_feeds(gated, loaded.shapes, 1, 0)
    return make_session(gated).run(None, feeds), make_session(result.model).run(None, feeds), result


def zero_gates_scales_only(loaded, analysis, structure):
    """Zero BN gamma only: removed channels output beta (what a MorphNet-trained model does)."""
    gated = zero_gates(loaded.model, loaded, analysis, structure)
    originals = {t.name: t for t in loaded.model.graph.initializer}
    for node in gated.graph.node:
        if node.op_type == "BatchNormalization":
            source = node.input[2].split("__gated")[0]
            if source in originals:
                node.input[2] = source
    return gated


def structure_killing(analysis, source, channels):
    structure = Structure.full(analysis)
    group = next(g for g in analysis.groups if source in g.sources)
    structure.alive[group.id][channels] = False
    return structure


def test_constant_of_removed_channels_folds_into_the_next_bias():
    loaded, analysis = prepare(gamma_only_model(k_next=1, pad=False))
    structure = structure_killing(analysis, "c1", [0, 3, 5])
    expected, got, result = run_both(loaded, analysis, structure)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)
    conv = next(n for n in result.model.graph.node if n.name == "c2")
    weight = next(t for t in result.model.graph.initializer if t.name == conv.input[1])
    assert list(weight.dims)[1] == 5  # three input channels gone, their constant in the bias
    assert not result.notes


def test_unpadded_3x3_conv_also_folds():
    loaded, analysis = prepare(gamma_only_model(k_next=3, pad=False))
    expected, got, result = run_both(loaded, analysis, structure_killing(analysis, "c1", [1, 2]))
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)
    assert not result.notes


def test_padded_conv_keeps_the_channels_and_says_so():
    loaded, analysis = prepare(gamma_only_model(k_next=3, pad=True))
    structure = structure_killing(analysis, "c1", [1, 2])
    expected, got, result = run_both(loaded, analysis, structure)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)
    assert any("kept for exactness" in n for n in result.notes)
    group = next(g for g in analysis.groups if "c1" in g.sources)
    assert result.structure.alive[group.id].all()


def test_padded_conv_with_approximate_borders_removes_them():
    loaded, analysis = prepare(gamma_only_model(k_next=3, pad=True))
    structure = structure_killing(analysis, "c1", [1, 2])
    expected, got, result = run_both(loaded, analysis, structure, approximate_borders=True)
    assert any("approximated at the borders" in n for n in result.notes)
    group = next(g for g in analysis.groups if "c1" in g.sources)
    assert result.structure.alive[group.id].sum() == 6
    assert not np.allclose(got[0], expected[0], rtol=1e-4, atol=1e-4)  # borders differ
    assert np.allclose(got[0], expected[0], rtol=0.5, atol=0.5)


def test_matmul_bias_add_constant_is_folded():
    """A Linear layer's bias Add after a removed channel leaves bias -> GELU-like -> next MatMul."""
    net = Net(input_shape=(1, 4, 8), seed=1)
    h = net.matmul("input", 8, 16, name="fc1")
    h = net.op("Add", [h, net.const(np.linspace(-1, 1, 16).astype(np.float32))])
    h = net.op("Sigmoid", [h])
    model = net.model(net.matmul(h, 16, 8, name="fc2"))
    result = check(model, fraction=0.5, seed=0)
    assert result.passed and result.flops_after < result.flops_before


# ---- whole branches ------------------------------------------------------------------------------------

def residual_model():
    """stem -> [inner -> outer] + skip -> fc. BN shifts are negative, so removed channels hold
    ReLU(beta) = 0 and the padded convs can lose them exactly."""
    net = Net(input_shape=(1, 3, 8, 8), seed=5)
    x = net.relu(net.bn(net.conv("input", 3, 8, name="stem", bias=False), 8))
    h = net.relu(net.bn(net.conv(x, 8, 4, name="inner", bias=False), 4))
    h = net.bn(net.conv(h, 4, 8, name="outer", bias=False), 8)
    x = net.relu(net.op("Add", [x, h], name="join"))
    pooled = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    model = net.model(net.gemm(pooled, 8, 3, name="fc"))
    for tensor in model.graph.initializer:
        if tensor.name.endswith(".bias") and tensor.name.startswith("bn"):
            value = -np.abs(onnx.numpy_helper.to_array(tensor))
            tensor.CopyFrom(onnx.numpy_helper.from_array(value, tensor.name))
    return model


def test_dead_inner_group_collapses_the_block_to_its_skip():
    model = residual_model()
    loaded, analysis = prepare(model)
    group = next(g for g in analysis.groups if "inner" in g.sources)
    result = prune(model, {"groups": [{"id": group.id, "alive": []}]})
    types = [n.op_type for n in result.model.graph.node]
    assert types.count("Conv") == 1  # inner and outer convs are gone
    assert "inner" in result.removed_ops and "outer" in result.removed_ops
    assert result.flops_after < result.flops_before
    # the same outputs as the original with the inner channels' gates at zero
    structure = Structure.full(analysis)
    structure.alive[group.id][:] = False
    gated = zero_gates_scales_only(loaded, analysis, structure)
    feeds = random_feeds(gated, loaded.shapes, 1, 1)
    np.testing.assert_allclose(make_session(result.model).run(None, feeds)[0],
                               make_session(gated).run(None, feeds)[0], rtol=1e-4, atol=1e-5)


def test_dead_concat_branch_disappears():
    model = concat_of_two_branches()
    loaded, analysis = prepare(model)
    group = next(g for g in analysis.groups if "b" in g.sources)
    result = prune(model, {"groups": [{"id": group.id, "alive": []}]})
    concat = next(n for n in result.model.graph.node if n.op_type == "Concat")
    assert len(concat.input) == 1
    assert "b" in result.removed_ops


def test_structure_that_empties_the_output_path_is_refused():
    net = Net(input_shape=(1, 3, 8, 8))
    x = net.relu(net.conv("input", 3, 4, name="a"))
    model = net.model(net.conv(x, 4, 2, name="head"))
    loaded, analysis = prepare(model)
    group = next(g for g in analysis.groups if "a" in g.sources)
    with pytest.raises(MorphNetError, match="model output"):
        prune(model, {"groups": [{"id": group.id, "alive": []}]})


def test_a_structure_that_cannot_be_cut_is_refused_naming_where():
    """Both expands of a fire module removed: everything after it would be constant. The error names
    where the removal begins (it said "internal: ... would read a removed branch" for ShuffleNet's
    split, and named only the model output here)."""
    model = fire_modules(2)
    loaded, analysis = prepare(model)
    expands = [g.id for g in analysis.groups if g.sources[0] in ("expand1x1_0", "expand3x3_0")]
    with pytest.raises(MorphNetError, match="cannot be cut out: model output .* removed from expand1x1_0 on"):
        prune(model, {"groups": [{"id": group_id, "alive": []} for group_id in expands]})
    shufflenet = TORCHVISION_DIR / "shufflenet_v2_x1_0_bn.onnx"
    with pytest.raises(MorphNetError, match="cannot be cut out: /stage2/stage2.1/Concat .* both sides of every split"):
        prune(shufflenet, {"groups": [{"id": 1, "alive": [0, 1]}]})


# ---- rounding, shared initializers, the written model ------------------------------------------------

def test_round_to_keeps_multiples():
    model = residual_model()
    loaded, analysis = prepare(model)
    stem = next(g for g in analysis.groups if "stem" in g.sources)
    inner = next(g for g in analysis.groups if "inner" in g.sources)
    structure = {"groups": [{"id": stem.id, "alive_count": 3}, {"id": inner.id, "alive_count": 1}]}
    result = prune(model, structure, round_to=4)
    assert result.structure.alive_count(stem.id) == 4
    assert result.structure.alive_count(inner.id) == 4  # 1 rounds up to 4 = its full width
    result = prune(model, structure, round_to=2)
    assert result.structure.alive_count(stem.id) == 4 and result.structure.alive_count(inner.id) == 2


def test_alive_counts_keep_the_largest_bn_gammas():
    model = residual_model()
    inner_bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization" and n.input[0] == "inner_out")
    for tensor in model.graph.initializer:
        if tensor.name == inner_bn.input[1]:
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.array([0.1, 2.0, 0.05, 1.0], np.float32), tensor.name))
    result = prune(model, {"inner": 2})
    loaded, analysis = prepare(model)
    inner = next(g for g in analysis.groups if "inner" in g.sources)
    assert np.nonzero(result.structure.alive[inner.id])[0].tolist() == [1, 3]


def test_shared_initializer_is_copied_apart():
    net = Net(input_shape=(1, 3, 8, 8), seed=4)
    a = net.conv("input", 3, 4, name="a")
    b = net.op("Conv", ["input", "a.w", "a.b"], name="b", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    model = net.model([net.conv(net.relu(a), 4, 2, k=1, name="ha"), net.conv(net.relu(b), 4, 2, k=1, name="hb")])
    loaded, analysis = prepare(model)
    group_a = next(g for g in analysis.groups if "a" in g.sources)
    result = prune(model, {"groups": [{"id": group_a.id, "alive": [0, 1]}]})
    weights = {n.name: n.input[1] for n in result.model.graph.node if n.op_type == "Conv"}
    dims = {t.name: list(t.dims) for t in result.model.graph.initializer}
    assert dims[weights["a"]][0] == 2 and dims[weights["b"]][0] == 4
    assert check(model, fraction=0.5).passed


def test_written_model_keeps_io_and_passes_checker(tmp_path):
    model = residual_model()
    src = tmp_path / "in.onnx"
    onnx.save(model, src)
    out = tmp_path / "out.onnx"
    result = prune(src, {"inner": 2}, out)
    written = onnx.load(str(out))
    onnx.checker.check_model(written, full_check=True)
    for a, b in ((written.graph.input, model.graph.input), (written.graph.output, model.graph.output)):
        assert [v.name for v in a] == [v.name for v in b]
        assert [v.type.tensor_type.elem_type for v in a] == [v.type.tensor_type.elem_type for v in b]
        assert [str(v.type.tensor_type.shape) for v in a] == [str(v.type.tensor_type.shape) for v in b]
    make_session(written)
    assert result.flops_after < result.flops_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx"]


# ---- structure files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("doc,match", [
    ({"groups": [{"id": 99, "alive": [0]}]}, "group 99 does not exist"),
    ({"groups": [{"id": 0, "width": 5, "alive": [0]}]}, "has width"),
    ({"groups": [{"id": 0, "alive": [100]}]}, "out of range"),
    ({"inner": 9}, "above its width"),
    ({"nope": 1}, "does not create channels"),
    ({"format": "morphnet-onnx-structure", "version": 7, "groups": []}, "version 7"),
])
def test_structure_mismatch_is_a_clear_error(doc, match):
    with pytest.raises(MorphNetError, match=match):
        prune(residual_model(), doc)


def test_unprunable_group_cannot_be_pruned():
    loaded, analysis = prepare(residual_model())
    fc = next(g for g in analysis.groups if "fc" in g.sources)
    with pytest.raises(MorphNetError, match="cannot be pruned"):
        prune(residual_model(), {"groups": [{"id": fc.id, "alive": [0]}]})


def test_structure_file_roundtrip(tmp_path):
    model = residual_model()
    result = prune(model, {"inner": 2, "stem": 5})
    path = tmp_path / "s.json"
    result.structure.save(path, result.analysis, "residual")
    doc = json.loads(path.read_text())
    assert doc["format"] == "morphnet-onnx-structure" and doc["version"] == 1
    assert doc["alive_counts"]["inner"] == 2 and doc["alive_counts"]["stem"] == 5
    again = prune(model, path)
    for group_id, mask in result.structure.alive.items():
        assert np.array_equal(again.structure.alive[group_id], mask)


def test_lp_normalization_over_space_prunes_exactly():
    """The worked example of docs/analysis.md ("Adding an op"): taught in ops/reductions.py only."""
    net = Net(opset=17)
    x = net.conv("input", 3, 8, name="c")
    out = net.conv(net.op("LpNormalization", [x], axis=-1, p=2), 8, 2, name="head")
    result = check(net.model(out), fraction=0.5)
    assert result.passed and result.groups_pruned >= 1 and result.flops_after < result.flops_before


def test_a_mean_over_space_keeps_its_channels_when_some_go():
    """torch's dynamo exporter writes AdaptiveAvgPool2d(1) as a ReduceMean over the spatial axes: its
    channels are cut like any element-wise op's, nothing added back (the sums written out over
    channels are for means *over* the channels, as in RMSNorm). Found by docs/tutorial.md's CNN: with
    half of every group removed the written model failed onnx's checker (the removed channels' means
    were added back over the full width)."""
    from conftest import REPO

    model = REPO / "tests" / "data" / "torch" / "first_contact" / "resnet18_dynamo.onnx"
    loaded, analysis = prepare(model)
    groups = [{"id": g.id, "alive_count": max(1, g.width // 2)} for g in analysis.groups if g.prunable]
    result = prune(model, {"groups": groups}, approximate_borders=True)
    means = [n for n in result.model.graph.node if n.name == "node_mean"]
    assert [n.op_type for n in means] == ["ReduceMean"]
    assert 0.2 < result.flops_after / result.flops_before < 0.35


# ---- onnxruntime's optimizer ----------------------------------------------------------------------

def _matmul_reshape_batchnorm() -> onnx.ModelProto:
    """A Linear on tokens followed by a BatchNorm1d over its features (timm's LeViT): onnxruntime
    1.19's MatMulBnFusion turns it into a Gemm on a rank-3 input and fails to load it."""
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W"),
             onnx.numpy_helper.from_array(np.array([3, 8], np.int64), "flat"),
             onnx.numpy_helper.from_array(np.array([1, 3, 8], np.int64), "tokens"),
             onnx.numpy_helper.from_array(np.ones(8, np.float32), "var")]
    inits += [onnx.numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), name)
              for name in ("scale", "bias", "mean")]
    nodes = [onnx.helper.make_node("MatMul", ["x", "W"], ["m"]), onnx.helper.make_node("Reshape", ["m", "flat"], ["r"]),
             onnx.helper.make_node("BatchNormalization", ["r", "scale", "bias", "mean", "var"], ["b"]),
             onnx.helper.make_node("Reshape", ["b", "tokens"], ["y"])]
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info("x", 1, [1, 3, 8])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [1, 3, 8])], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_model_onnxruntimes_optimizations_break_is_not_timed_and_says_why():
    with pytest.raises(MorphNetError, match="optimizations fail on this model, so it cannot be timed"):
        measure_latency([_matmul_reshape_batchnorm()], LatencySettings(threads=1))


def test_a_model_onnxruntimes_optimizations_break_runs_with_them_off():
    model = _matmul_reshape_batchnorm()
    params = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    x = np.random.default_rng(1).standard_normal((1, 3, 8)).astype(np.float32)
    with pytest.warns(UserWarning, match="MatMulBnFusion.*run with them off"):
        session = make_session(model)
    m = (x @ params["W"]).reshape(3, 8)
    expected = (m - params["mean"]) / np.sqrt(params["var"] + 1e-5) * params["scale"] + params["bias"]
    np.testing.assert_allclose(session.run(None, {"x": x})[0], expected.reshape(1, 3, 8), rtol=1e-5, atol=1e-5)
