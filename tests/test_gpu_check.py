"""tools/gpu_check.py: both backends' `shrink` on a CUDA device (skipped where there is none)."""

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))  # the tools import their harness
spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

NO_CUDA = gpu_check.cuda_reason()


@pytest.mark.skipif(NO_CUDA is not None, reason=f"GPU checks need a CUDA device: {NO_CUDA}")
def test_both_backends_shrink_on_the_gpu(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--out", str(tmp_path), "--quick",
                          "--resnet-batch", "16"], capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {r["backend"] for r in doc["rows"]} | set(doc["skipped"]) == {"ort", "torch"}
    assert any(r["backend"] == "torch" for r in doc["rows"])
    assert all(r["ok"] and r["peak_gpu_mib"] > 0 for r in doc["rows"])


def test_without_cuda_the_script_says_why_and_runs_nothing(tmp_path):
    if NO_CUDA is None:
        pytest.skip("a CUDA device is present: the check above runs instead")
    run = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0
    assert run.stdout.startswith("gpu_check: skipped: ")
    assert (tmp_path / "gpu_check.md").read_text().startswith("skipped: ")
