"""tools/zoo_latency.py: one row per model, measured in a child process, or the child's one-line error."""

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))  # the tool imports its neighbours

TOOL = REPO / "tools" / "zoo_latency.py"
spec = importlib.util.spec_from_file_location("zoo_latency", TOOL)
zoo_latency = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zoo_latency)


def test_a_model_that_fails_is_a_row_with_its_error_and_the_sweep_exits_1(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("not onnx")
    row = zoo_latency.measure(bad, threads=1, timeout=120)
    assert row["status"] == "rc 2" and "not a readable ONNX model" in row["error"], row
    text = zoo_latency.markdown([row], threads=1)
    assert "| bad.onnx | rc 2: " in text and "0 of 1 models measured (1 thread)" in text


@pytest.mark.slow
def test_the_sweep_measures_a_table_per_model(tmp_path):
    out = tmp_path / "zoo.json"
    done = subprocess.run([sys.executable, str(TOOL), str(REPO / "models" / "tiny_resnet.onnx"), "--json", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    row = json.loads(out.read_text())["rows"][0]
    assert row["status"] == "ok" and 0 < row["floor_ms"] < row["full_ms"] and row["fit_rms"] < 0.5, row
