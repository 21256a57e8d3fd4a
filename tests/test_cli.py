"""The command line: tables, --json, one-line errors with exit code 2, --debug tracebacks."""

import json
import subprocess
import sys

import onnx
import pytest

from builders import Net
from conftest import LIGHT_DIR, REPO
from morphnet_onnx.cli import main


def test_inspect_prints_groups_and_totals(capsys):
    assert main(["inspect", str(REPO / "models" / "tiny_resnet.onnx")]) == 0
    out = capsys.readouterr().out
    assert "Channel groups of" in out
    assert "FLOPs 36.5M (MACs 18.3M)" in out
    assert "6 of 7 groups prunable" in out
    assert "reaches the model output 'logits'" in out


def test_inspect_json(capsys):
    assert main(["inspect", str(LIGHT_DIR / "light_resnet50.onnx"), "--json", "--hardware", "T4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"flops", "params", "groups", "macs", "latency_s", "prunable_flops_share"} <= set(doc)
    assert doc["flops"] == pytest.approx(8.178e9, rel=1e-3)
    assert doc["hardware"]["name"] == "T4"
    assert len(doc["groups"]) == 38
    for group in doc["groups"]:
        assert {"id", "width", "ops", "prunable"} <= set(group)


def test_unknown_ops_are_shown_not_errors(tmp_path, capsys):
    net = Net()
    x = net.conv("input", 3, 8, name="c")
    y = net.op("Einsum", [x], equation="nchw->nchw", name="weird")
    out = net.conv(net.conv(y, 8, 8, name="d"), 8, 2, name="e")
    path = tmp_path / "unknown.onnx"
    onnx.save(net.model(out), path)
    assert main(["inspect", str(path)]) == 0
    assert "[W] not understood, channels kept: weird (Einsum)" in capsys.readouterr().out


def test_nothing_to_prune_is_an_error(tmp_path, capsys):
    net = Net(input_shape=(1, 16))
    path = tmp_path / "linear.onnx"
    onnx.save(net.model(net.gemm("input", 16, 4, name="fc")), path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "linear.onnx: nothing to prune" in err


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "morphnet_onnx.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("content", [b"garbage", b""])
def test_bad_file_one_line_exit_2_no_traceback(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    result = run_cli("inspect", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_and_debug_traceback(tmp_path):
    result = run_cli("inspect", str(tmp_path / "nope.onnx"))
    assert result.returncode == 2 and "nope.onnx: no such file" in result.stderr
    result = run_cli("--debug", "inspect", str(tmp_path / "nope.onnx"))
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_bad_input_shape_option(tmp_path):
    result = run_cli("inspect", str(LIGHT_DIR / "light_squeezenet.onnx"), "--input-shape", "data_0:1x3xX")
    assert result.returncode == 2 and "expected NAME:DxDxD" in result.stderr
