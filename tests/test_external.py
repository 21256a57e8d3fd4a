"""Models with external data (the path a model over 2 GB takes), kept small: weights stay on disk
after loading, every command gives what it gives on the same model stored inline, and what is
written keeps its weights in `<name>.data` and passes onnx's full check on the path."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import morphnet_onnx.loading.external as external_module
import morphnet_onnx.loading.writing as writing_module
import morphnet_onnx.surgery.pruning as pruning_module
from builders import Net
from morphnet_onnx import MorphNetError, check, expand, inspect, prune
from morphnet_onnx.loading.external import has_external_data, read_tensor
from morphnet_onnx.loading.model import load
from morphnet_onnx.loading.writing import save_model
from morphnet_onnx.loading.runtime import make_session, random_feeds
from morphnet_onnx.training.graph import training_graph


def vgg_like() -> onnx.ModelProto:
    """Convs, a flatten and two Gemms: the shape of VGG, whose weights are mostly in the Gemms."""
    net = Net(input_shape=(1, 3, 8, 8), batch="N", seed=3)
    x = net.relu(net.conv("input", 3, 8, name="conv1"))
    x = net.relu(net.conv(x, 8, 16, name="conv2"))
    x = net.op("Flatten", [x], axis=1)
    x = net.relu(net.gemm(x, 16 * 64, 32, name="fc1"))
    return net.model(net.gemm(x, 32, 10, name="fc2"))


@pytest.fixture
def models(tmp_path):
    """The same model twice: inline, and with every tensor in external data."""
    model = vgg_like()
    inline = tmp_path / "inline.onnx"
    onnx.save(model, inline)
    external = tmp_path / "ext" / "model.onnx"
    external.parent.mkdir()
    onnx.save(model, external, save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    return inline, external


def tensors(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def assert_written_with_external_data(path):
    assert path.with_name(path.name + ".data").exists()
    model = onnx.load(str(path), load_external_data=False)
    assert has_external_data(model)
    onnx.checker.check_model(str(path), full_check=True)


def test_weights_stay_on_disk_after_loading(models):
    inline, external = models
    loaded = load(external)
    assert has_external_data(loaded.model)
    weight = loaded.view.value("fc1.w")
    assert not weight.flags.writeable
    np.testing.assert_array_equal(weight, tensors(inline)["fc1.w"])
    assert loaded.model.ByteSize() < 4 * 16 * 64 * 32  # the proto holds no fc1 weight bytes


def test_inspect_and_check_match_the_inline_model(models):
    inline, external = models
    assert inspect(external).to_dict() | {"model": ""} == inspect(inline).to_dict() | {"model": ""}
    got, expected = check(external, fraction=0.5), check(inline, fraction=0.5)
    assert got.passed and expected.passed
    assert (got.flops_after, got.params_after, got.tensors_compared) == \
        (expected.flops_after, expected.params_after, expected.tensors_compared)


def test_prune_writes_the_same_tensors_to_external_data(models, tmp_path):
    inline, external = models
    structure = tmp_path / "s.json"
    structure.write_text(json.dumps({"conv2": 5, "fc1": 12}))
    prune(inline, structure, tmp_path / "a.onnx")
    prune(external, structure, tmp_path / "b.onnx")
    assert_written_with_external_data(tmp_path / "b.onnx")
    assert not (tmp_path / "a.onnx.data").exists()
    a, b = tensors(tmp_path / "a.onnx"), tensors(tmp_path / "b.onnx")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("init", ["fresh", "keep"])
def test_expand_writes_the_same_tensors_to_external_data(models, tmp_path, init):
    inline, external = models
    expand(inline, tmp_path / "a.onnx", multiplier=1.5, init=init, seed=4)
    expand(external, tmp_path / "b.onnx", multiplier=1.5, init=init, seed=4)
    assert_written_with_external_data(tmp_path / "b.onnx")
    a, b = tensors(tmp_path / "a.onnx"), tensors(tmp_path / "b.onnx")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_a_session_on_a_model_held_on_disk_computes_the_same(models):
    inline, external = models
    loaded = load(external)
    feeds = random_feeds(loaded.model, loaded.shapes, 2, 0)
    got = make_session(loaded.model).run(None, feeds)[0]
    expected = make_session(onnx.load(str(inline))).run(None, feeds)[0]
    # Without prepacking onnxruntime sums in another order: equal up to float rounding.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_save_model_streams_external_tensors_under_the_new_name(models, tmp_path):
    _, external = models
    loaded = load(external)
    out = tmp_path / "copy.onnx"
    save_model(loaded.model, out)
    assert_written_with_external_data(out)
    written = onnx.load(str(out), load_external_data=False)
    assert {e.value for t in written.graph.initializer for e in t.external_data if e.key == "location"} == \
        {"copy.onnx.data"}
    for tensor in written.graph.initializer:
        assert int(next(e.value for e in tensor.external_data if e.key == "offset")) % 4096 == 0


@pytest.mark.parametrize("location,match", [
    ("../outside.data", "not a file inside the model's folder"),
    ("missing.data", "No such file"),
])
def test_external_data_outside_the_folder_or_missing_is_refused(models, tmp_path, location, match):
    _, external = models
    model = onnx.load(str(external), load_external_data=False)
    (tmp_path / "outside.data").write_bytes(b"\0" * 10**6)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, external)
    with pytest.raises(MorphNetError, match=f"cannot read its external data.*{match}"):
        load(external)


def test_external_data_shorter_than_the_tensor_is_refused(models):
    _, external = models
    data = external.with_name("model.onnx.data")
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(MorphNetError, match="cannot read its external data.*bytes at offset"):
        load(external)


def test_read_tensor_maps_the_file_without_a_copy(models):
    _, external = models
    tensor = next(t for t in load(external).model.graph.initializer if t.name == "fc1.w")
    first, second = read_tensor(tensor), read_tensor(tensor)
    assert np.shares_memory(first, second)


def test_training_reads_the_weights_into_its_graph(models):
    inline, external = models
    graph = training_graph(load(external), 2)
    assert not has_external_data(graph.model)
    expected = tensors(inline)
    for tensor in graph.model.graph.initializer:
        if tensor.name in expected:
            np.testing.assert_array_equal(numpy_helper.to_array(tensor), expected[tensor.name])


def test_a_model_over_the_protobuf_limit_is_checked_and_written_as_files(models, tmp_path, monkeypatch):
    """An in-memory model too big for one protobuf message (the limit lowered to 1000 bytes): onnx's
    checker and onnxruntime open it as a file, and it is written with external data."""
    inline, _ = models
    structure = {"conv2": 5, "fc1": 12}
    expected = prune(inline, structure, tmp_path / "a.onnx")
    monkeypatch.setattr(external_module, "TWO_GB", 1000)
    monkeypatch.setattr(writing_module, "TWO_GB", 1000)
    opened = []
    monkeypatch.setattr(pruning_module, "on_disk", lambda model: opened.append(1) or external_module.on_disk(model))
    result = prune(onnx.load(str(inline)), structure, tmp_path / "b.onnx")
    assert opened and not has_external_data(result.model)
    assert result.flops_after == expected.flops_after
    assert_written_with_external_data(tmp_path / "b.onnx")
    a, b = tensors(tmp_path / "a.onnx"), tensors(tmp_path / "b.onnx")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_a_data_file_that_is_a_link_is_read(models, tmp_path):
    """Download caches keep the data file elsewhere and link it beside the model."""
    inline, external = models
    blob = tmp_path / "blobs" / "abc123"
    blob.parent.mkdir()
    data = external.with_name("model.onnx.data")
    data.rename(blob)
    data.symlink_to(blob)
    np.testing.assert_array_equal(load(external).view.value("fc1.w"), tensors(inline)["fc1.w"])


def test_an_offset_that_is_not_a_number_is_refused(models):
    _, external = models
    model = onnx.load(str(external), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "offset":
            entry.value = "twelve"
    onnx.save(model, external)
    with pytest.raises(MorphNetError, match="cannot read its external data.*twelve"):
        load(external)
