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
from morphnet_onnx.training.rebatch import check_rebatched, fixed_batch, rebatch
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


def test_the_torch_backend_says_in_one_line_what_it_cannot_convert(tmp_path):
    """onnx2torch 1.5.15 converts up to opset 18; torch's dynamo exporter writes opset 20 (Reshape-19,
    Gelu-20): the torch backend refuses it in one line that names the way that works (ort)."""
    pytest.importorskip("torch")
    data = _data(tmp_path / "d.npz")
    with pytest.raises(mn.MorphNetError, match=r"vit_dynamo.onnx: onnx2torch cannot convert .*--backend ort"):
        mn.train(EXPORTS / "vit_dynamo.onnx", data, tmp_path / "out.onnx",
                 options=TrainOptions(steps=2, batch_size=8, progress=False, threads=1, backend="torch"))


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
