"""Loading: symbolic dims, --input-shape, opset upgrade, external data, bad files; atomic writes."""

import json
import os
import re

import numpy as np
import onnx
import pytest

from builders import Net
from conftest import LIGHT_DIR
from morphnet_onnx import MorphNetError, inspect
from morphnet_onnx.loading.model import load
from morphnet_onnx.loading.shapes import parse_input_shapes
from morphnet_onnx.loading.writing import save_model, write_atomic_bytes


def small_model(batch="N", spatial=8):
    net = Net(input_shape=(1, 3, spatial, spatial), batch=batch)
    x = net.relu(net.conv("input", 3, 8, name="c1"))
    return net.model(net.conv(x, 8, 4, name="c2"))


def test_symbolic_batch_counts_as_one():
    loaded = load(small_model(batch="N"))
    assert loaded.shapes["input"] == (1, 3, 8, 8)
    assert loaded.shapes["c2_out"] == (1, 4, 8, 8)


def test_other_symbolic_dims_need_input_shape():
    model = small_model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    with pytest.raises(MorphNetError, match=r"--input-shape input:1x3x224x224"):
        load(model)
    loaded = load(model, parse_input_shapes(["input:1x3x16x16"]))
    assert loaded.shapes["c2_out"] == (1, 4, 16, 16)


def test_input_shape_errors_name_the_problem():
    with pytest.raises(MorphNetError, match="expected NAME:DxDxD"):
        parse_input_shapes(["input:1x3xbig"])
    with pytest.raises(MorphNetError, match="names no model input"):
        load(small_model(), {"nope": (1, 3, 8, 8)})
    assert parse_input_shapes(["1x3x8x8"]) == {"": (1, 3, 8, 8)}
    assert load(small_model(), {"": (1, 3, 4, 4)}).shapes["c2_out"] == (1, 4, 4, 4)


def test_old_opset_is_upgraded():
    loaded = load(LIGHT_DIR / "light_resnet50.onnx")
    assert loaded.upgraded_from == 9 and loaded.opset == 11


def test_too_new_opset_is_refused(tmp_path):
    model = small_model()
    model.opset_import[0].version = 99
    path = tmp_path / "new.onnx"
    onnx.save(model, path)
    with pytest.raises(MorphNetError, match=r"new.onnx: opset 99 is newer"):
        load(path)


def test_external_data_model_loads(tmp_path):
    model = small_model()
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    assert (tmp_path / "ext.data").exists()
    report = inspect(path)
    assert report.costs.params == 3 * 8 * 9 + 8 + 8 * 4 * 9 + 4
    assert report.costs.flops == 2 * 64 * (3 * 9 * 8 + 8 * 9 * 4)


def test_missing_external_data_is_a_clear_error(tmp_path):
    model = small_model()
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="ext.data", size_threshold=0)
    os.remove(tmp_path / "ext.data")
    with pytest.raises(MorphNetError, match=r"ext.onnx: cannot read its external data"):
        load(path)


@pytest.mark.parametrize("content,match", [
    (b"not a model at all", "not a readable ONNX model"),
    (b"", "not an ONNX model"),
])
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(MorphNetError, match=match):
        load(path)


def test_truncated_file(tmp_path):
    data = (LIGHT_DIR / "light_resnet50.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MorphNetError, match=r"cut.onnx: not"):
        load(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MorphNetError, match="no such file"):
        load(tmp_path / "missing.onnx")
    with pytest.raises(MorphNetError, match="is a directory"):
        load(tmp_path)


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("old")

    class Boom(Exception):
        pass

    def explode(*args, **kwargs):
        raise Boom()

    monkeypatch.setattr(os, "replace", explode)
    with pytest.raises(Boom):
        write_atomic_bytes(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_save_model_refuses_to_overwrite_the_input(tmp_path):
    model = small_model()
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    with pytest.raises(MorphNetError, match="refusing to overwrite the input"):
        save_model(model, path, inputs=[path])
    out = tmp_path / "copy.onnx"
    save_model(model, out, inputs=[path])
    onnx.checker.check_model(str(out), full_check=True)


def test_save_model_uses_external_data_above_2gb(tmp_path, monkeypatch):
    import morphnet_onnx.loading.writing as writing_module

    monkeypatch.setattr(writing_module, "TWO_GB", 1000)  # pretend the small model is huge
    model = small_model()
    out = tmp_path / "big.onnx"
    save_model(model, out)
    assert (tmp_path / "big.onnx.data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    loaded = onnx.load(str(out))
    onnx.checker.check_model(str(out), full_check=True)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(loaded.graph.initializer[0]),
                                  onnx.numpy_helper.to_array(model.graph.initializer[0]))


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    try:
        yield 0o640  # the mode of a file the user writes
    finally:
        os.umask(previous)


def test_external_data_is_written_atomically_with_the_umask_and_never_over_the_inputs(tmp_path, monkeypatch,
                                                                                      umask_027):
    import morphnet_onnx.loading.writing as writing_module

    monkeypatch.setattr(writing_module, "TWO_GB", 1000)  # pretend the small model is huge
    model = small_model()
    source = tmp_path / "model.onnx"
    save_model(model, source)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        "model.onnx": umask_027, "model.onnx.data": umask_027}
    # A model whose data file is the one `-o other.onnx` would write: refused, the input intact.
    onnx.save(onnx.load(str(source)), str(tmp_path / "renamed.onnx"), save_as_external_data=True,
              location="other.onnx.data")
    before = (tmp_path / "other.onnx.data").read_bytes()
    with pytest.raises(MorphNetError, match="external data of the input"):
        save_model(model, tmp_path / "other.onnx", inputs=[tmp_path / "renamed.onnx"])
    assert (tmp_path / "other.onnx.data").read_bytes() == before

    def killed(*args, **kwargs):  # the process dies at the rename of the model
        raise KeyboardInterrupt

    monkeypatch.setattr(writing_module.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, tmp_path / "third.onnx")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".", "third"))]


def test_outputs_never_overwrite_an_input_or_each_other(tmp_path):
    from morphnet_onnx.loading.writing import refuse_overwriting

    model, data = tmp_path / "m.onnx", tmp_path / "train.npz"
    onnx.save(small_model(), str(model))
    data.write_bytes(b"data")
    with pytest.raises(MorphNetError, match="-o .*train.npz: refusing to overwrite the input"):
        refuse_overwriting({"-o": data}, [model, data])
    with pytest.raises(MorphNetError, match="--save-structure .*: refusing to overwrite the output of -o"):
        refuse_overwriting({"-o": tmp_path / "a.onnx", "--save-structure": tmp_path / "a.onnx"}, [model])
    refuse_overwriting({"-o": tmp_path / "a.onnx", "--save-structure": None}, [model, None, {"a": 1}])


def test_every_writer_is_atomic_and_follows_the_umask(tmp_path, umask_027, capsys):
    """prune's model, structure, plot and page; (shrink, train, cycle and expand write through the same
    two functions: see test_no_writer_bypasses_the_atomic_functions)."""
    from conftest import REPO
    from morphnet_onnx.cli import main

    structure = tmp_path / "s.json"
    structure.write_text(json.dumps({"conv2": 3}))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["prune", str(REPO / "models" / "tiny_resnet.onnx"), "--structure", str(structure),
                 "-o", str(out / "small.onnx"), "--save-structure", str(out / "applied.json"),
                 "--plot", str(out / "w.png"), "--html", str(out / "d.html")]) == 0
    capsys.readouterr()
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        name: umask_027 for name in ("small.onnx", "applied.json", "w.png", "d.html")}


def test_no_writer_bypasses_the_atomic_functions():
    """Every file the package writes for a user goes through writing.write_atomic_bytes or writing.save_model;
    the exceptions write into a private temporary folder (the training artifacts, the probe's feeds,
    the spill file of weights made on the way and the file view handed to onnx's checker and
    onnxruntime), into memory (the plots) or the null device (the output of ranks other than 0 under
    torchrun), or are those functions themselves (save_model streams
    external data through external.write_external into its temp file)."""
    from conftest import REPO

    raw = re.compile(r"\.write_(text|bytes)\(|open\([^)]*[\"'][wa]b?[\"']|onnx\.save(_model)?\(|np\.savez?\(|savefig\(")
    allowed = {("loading/writing.py", "save_model"), ("loading/external.py", "write_external"),
               ("loading/external.py", "__init__"), ("loading/external.py", "on_disk"),
               ("training/ort_backend.py", "build_artifacts"),
               ("training/ort_backend.py", "_quiet_native_output"), ("training/probe.py", "run_probe"),
               ("report/pictures.py", "_plot"), ("report/family.py", "write_family_plot"),
               ("cli/__init__.py", "_run")}
    found = set()
    for path in sorted((REPO / "morphnet_onnx").rglob("*.py")):
        function = ""
        for line in path.read_text().splitlines():
            match = re.match(r"\s*def (\w+)", line)
            if match and not line.startswith("        "):
                function = match.group(1)
            if raw.search(line):
                found.add((str(path.relative_to(REPO / "morphnet_onnx")), function))
    assert found <= allowed, found - allowed


def test_optional_outputs_left_out_are_not_tensors_written_twice():
    """'' names an optional output left out (onnxruntime's SkipLayerNormalization leaves out its mean
    and inverse deviation): two nodes may both leave theirs out."""
    net = Net(input_shape=(1, 4, 8))
    x = "input"
    for index in range(2):
        x = net.op("LayerNormalization", [x, net.const(np.ones(8, np.float32))], outputs=[f"ln{index}", "", f"inv{index}"],
                   axis=-1)[0]
    loaded = load(net.model(x))
    assert loaded.shapes["ln1"] == (1, 4, 8)
