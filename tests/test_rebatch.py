"""training/rebatch.py: exports that fix the batch (torch's default dynamo exporter without
`dynamic_shapes`) train, measure their batch statistics and are checked at any batch size; what is
written keeps the user's static shapes. tests/data/torch/first_contact/ holds tools/first_contact.py's
exports of a ResNet-18, a MobileNet v2 and a small ViT, each from the dynamo exporter with a static
batch (`_dynamo`), with `dynamic_shapes` (`_dynamo_dyn`) and from the TorchScript exporter (`_ts`)."""

import numpy as np
import onnx
import pytest

import morphnet_onnx as mn
from conftest import REPO
from morphnet_onnx.builders import Net
from morphnet_onnx.graph_utils import fixed_batch
from morphnet_onnx.loading.placeholders import materialize_weights
from morphnet_onnx.training.rebatch import check_rebatched, rebatch
from morphnet_onnx.training.trainer import TrainOptions

EXPORTS = REPO / "tests" / "data" / "torch" / "first_contact"
NETS = ("resnet18", "mobilenet_v2", "vit")


def _data(path, n=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, input=rng.standard_normal((n, 3, 32, 32)).astype(np.float32), labels=rng.integers(0, classes, n))
    return path


def _input_dims(model: onnx.ModelProto) -> list:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


@pytest.mark.parametrize("net", NETS)
def test_every_export_of_each_net_is_rebatched_exactly(net):
    """The static export needs rewriting (a ViT: its class token and every reshape of its
    attention), the dynamic ones need none; each computes, example by example, what it computed."""
    for variant in ("dynamo", "dynamo_dyn", "ts"):
        loaded = mn.load(EXPORTS / f"{net}_{variant}.onnx")
        result = rebatch(loaded.model, 8)
        assert (fixed_batch(loaded.model) == 1) == (variant == "dynamo")
        assert bool(result.changes) == (variant == "dynamo"), (variant, result.changes)
        check_rebatched(loaded.model, loaded.shapes, loaded.name, batch=3)
    changes = rebatch(mn.load(EXPORTS / f"{net}_dynamo.onnx").model, 8).changes
    if net == "vit":
        assert any(c.startswith("Concat") for c in changes) and sum(c.startswith("Reshape") for c in changes) == 5
    else:
        assert changes == ["Reshape 'node_view': dim 0 of its target carries the batch"]


@pytest.mark.parametrize("net", NETS)
def test_a_static_dynamo_export_trains_at_batch_8_and_keeps_its_shape(tmp_path, net):
    """`morphnet-onnx train r18.onnx --batch-size 8` on torch's default export: it trains (the step
    used to fail in Reshape 'node_view'), and the model written takes what the export took."""
    data = _data(tmp_path / "d.npz")
    out = tmp_path / "out.onnx"
    result = mn.train(EXPORTS / f"{net}_dynamo.onnx", data, out,
                      options=TrainOptions(steps=4, batch_size=8, progress=False, threads=1))
    assert result.steps == 4
    written = onnx.load(str(out))
    onnx.checker.check_model(written, full_check=True)
    assert _input_dims(written) == [1, 3, 32, 32]
    assert mn.evaluate(out, data).examples == 16


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_hugging_face_vit_exported_at_batch_1_is_rebatched(tmp_path, exporter):
    """Regression: transformers' ViT exported at batch 1 by either exporter was refused ("could not
    be made batch-generic"): its patch reshape is computed from Shape ops, which onnx's shape
    inference follows only with data propagation, so the class token's Concat was never reached;
    and its attention reshapes [1, 17, -1, 16] put the batch into the -1 (heads), which read as
    kept. Both are rewritten now, and `shrink` trains it at batch 4."""
    path = REPO / "tests" / "data" / "transformers" / f"vit_{exporter}.onnx"
    loaded = mn.load(path)
    model = materialize_weights(loaded.model)
    changes = rebatch(model, 8).changes
    assert any(c.startswith("Concat") for c in changes) and sum(c.startswith("Reshape") for c in changes) >= 8
    check_rebatched(model, loaded.shapes, loaded.name, batch=3)
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, pixel_values=rng.standard_normal((8, 3, 32, 32)).astype(np.float32),
             labels=rng.integers(0, 10, 8))
    out = tmp_path / "small.onnx"
    mn.shrink(path, data, out, method=mn.ShrinkOptions(budget=mn.Budget("flops", "0.5x")),
              options=TrainOptions(steps=4, batch_size=4, progress=False, threads=1))
    assert _input_dims(onnx.load(str(out))) == [1, 3, 32, 32]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_hugging_face_bert_exported_at_batch_1_is_rebatched(tmp_path, exporter):
    """Regression: transformers' BERT exported at batch 1 was refused ("the outputs differ between
    examples"): its attention mask picks each example's padding from the mask with indices that
    count the examples, a constant arange(1) at the export's batch (TorchScript: multiplied by the
    sequence length into a Gather's indices; dynamo: a GatherND's constant indices), so every example
    got the first one's mask. That constant now counts the batch's examples; the rewrite is proven
    example by example with masks that differ, and `shrink` trains it at batch 4."""
    path = REPO / "tests" / "data" / "transformers" / f"bert_{exporter}.onnx"
    loaded = mn.load(path)
    model = materialize_weights(loaded.model)
    changes = rebatch(model, 8).changes
    assert sum("counts the examples of the batch" in c for c in changes) == 1, changes
    check_rebatched(model, loaded.shapes, loaded.name, batch=3)
    rng = np.random.default_rng(0)
    mask = np.ones((8, 16), dtype=np.int64)
    mask[::2, 10:] = 0  # every other example padded after 10 tokens
    data = tmp_path / "d.npz"
    np.savez(data, input_ids=rng.integers(0, 128, (8, 16)), attention_mask=mask, labels=rng.integers(0, 3, 8))
    out = tmp_path / "small.onnx"
    mn.shrink(path, data, out, method=mn.ShrinkOptions(budget=mn.Budget("flops", "0.5x")),
              options=TrainOptions(steps=4, batch_size=4, progress=False, threads=1))
    assert _input_dims(onnx.load(str(out))) == [1, 16]


def test_example_indices_are_rewritten_after_a_class_tokens_expand():
    """A class token's Concat (an Expand inserted before it) ahead of a mask picked by example
    indices (arange(1) x 4 + arange(4), a Gather from the flattened mask): the index constant's
    consumer is found in the user's graph, not at its place in the traced one, one node later."""
    h = onnx.helper
    const = {"token": np.full((1, 1, 4), 0.5, np.float32), "zero": np.zeros((1, 1), np.int64),
             "four": np.array(4, np.int64), "steps": np.arange(4, dtype=np.int64).reshape(1, 4),
             "axes": np.array([2], np.int64), "shape": np.array([1, 4], np.int64)}
    nodes = [h.make_node("Concat", ["token", "x"], ["joined"], axis=1, name="cls"),
             h.make_node("Flatten", ["mask"], ["flat"], axis=2, name="flatten"),
             h.make_node("Mul", ["zero", "four"], ["offset"], name="offset"),
             h.make_node("Add", ["offset", "steps"], ["picks"], name="picks"),
             h.make_node("Gather", ["flat", "picks"], ["picked"], axis=0, name="pick"),
             h.make_node("Reshape", ["picked", "shape"], ["row"], name="row"),
             h.make_node("Cast", ["row"], ["weights"], to=onnx.TensorProto.FLOAT, name="weights"),
             h.make_node("ReduceSum", ["joined", "axes"], ["sums"], keepdims=0, name="sums"),
             h.make_node("Slice", ["sums", "one", "five", "one"], ["tokens"], name="tokens"),
             h.make_node("Mul", ["tokens", "weights"], ["out"], name="out")]
    const.update(one=np.array([1], np.int64), five=np.array([5], np.int64))
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 4]),
                                      h.make_tensor_value_info("mask", onnx.TensorProto.INT64, [1, 4])],
                         [h.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
                         [onnx.numpy_helper.from_array(v, k) for k, v in const.items()])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    changes = rebatch(model, 3).changes
    assert any(c.startswith("Concat 'cls'") for c in changes)
    assert "Mul 'offset': input 'zero' counts the examples of the batch" in changes, changes
    check_rebatched(model, {"x": (1, 4, 4), "mask": (1, 4)}, "synthetic", batch=3)


def test_a_constant_that_indices_carrying_the_batch_pick_from_is_expanded_to_the_batch():
    """RoBERTa's token types: a buffer the export wrote at batch 1, picked from by GatherElements with
    position indices that carry the batch (refused before: "indices shape should have values within
    bounds of data shape")."""
    h = onnx.helper
    table = onnx.numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(1, 6) / 6, "types")
    nodes = [h.make_node("GatherElements", ["types", "ids"], ["picked"], axis=1, name="pick"),
             h.make_node("Mul", ["picked", "x"], ["out"], name="out")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 4]),
                                      h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                         [h.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)], [table])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    assert rebatch(model, 3).changes == ["GatherElements 'pick': input 'types' expanded from batch 1 to the batch"]
    check_rebatched(model, {"ids": (1, 4), "x": (1, 4)}, "synthetic", batch=3)


def test_a_graph_that_mixes_examples_is_refused_in_one_line(tmp_path):
    """An op across the batch axis of a batch-1 export (a mean over it) cannot be rebatched: one
    line naming the model, what to do, nothing written."""
    net = Net(input_shape=(1, 4))
    y = net.gemm("input", 4, 6)
    y = net.op("ReduceMean", [y], axes=[0], keepdims=0)
    y = net.op("Reshape", [y, net.const(np.array([1, 6], dtype=np.int64))])
    model = net.model(net.gemm(y, 6, 3))
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, input=rng.standard_normal((16, 4)).astype(np.float32), labels=rng.integers(0, 3, 16))
    with pytest.raises(mn.MorphNetError, match=r"fixes the batch at 1 .*--batch-size 1"):
        mn.train(model, data, tmp_path / "out.onnx", options=TrainOptions(steps=2, batch_size=8, progress=False))
    assert not (tmp_path / "out.onnx").exists()


def test_layers_the_dynamo_exporter_made_share_a_tensor_get_their_own(tmp_path):
    """The dynamo exporter hands one tensor to every layer whose values are equal (the five
    LayerNorms of the untrained ViT all read blocks.0.ln1.weight): loading gives each its own, so
    training writes each layer's own trained scale."""
    raw = onnx.load(str(EXPORTS / "vit_dynamo.onnx"), load_external_data=False)
    scales = [n.input[1] for n in raw.graph.node if n.op_type == "LayerNormalization"]
    assert len(scales) == 5 and len(set(scales)) == 1
    loaded = mn.load(EXPORTS / "vit_dynamo.onnx")
    scales = [n.input[1] for n in loaded.model.graph.node if n.op_type == "LayerNormalization"]
    assert len(set(scales)) == 5 and scales[0] == "blocks.0.ln1.weight"
    out = tmp_path / "out.onnx"
    mn.train(EXPORTS / "vit_dynamo.onnx", _data(tmp_path / "d.npz"), out,
             options=TrainOptions(steps=3, batch_size=8, progress=False, threads=1))
    written = mn.load(out)
    values = {n.input[1]: written.view.value(n.input[1]) for n in written.model.graph.node
              if n.op_type == "LayerNormalization"}
    assert len(values) == 5
    assert len({v.tobytes() for v in values.values()}) == 5  # trained apart
