"""docs/tutorial.md runs as written, scaled down: its Python files are written (a block starting
`# file: NAME`), its shell lines run in order in one scratch folder, with fewer images, epochs and
steps (SCALE: each replacement must still find its text, so a changed page fails here first)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from conftest import REPO

PAGE = REPO / "docs" / "tutorial.md"
SCALE = {
    '{"train": 300, "val": 60}': '{"train": 24, "val": 8}',
    "EPOCHS = 6": "EPOCHS = 1",
    "--steps 600": "--steps 12 --batch-size 16",
    "range(200)": "range(5)",
}


def _blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w+)\n(.*?)```", text, re.S)]


def test_the_tutorial_runs_as_written(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")  # torch's default (dynamo) exporter
    text = PAGE.read_text()
    for shown, scaled in SCALE.items():
        assert shown in text, f"tutorial.md no longer holds {shown!r}: update SCALE"
        text = text.replace(shown, scaled)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO)}
    printed = []
    for kind, body in _blocks(text):
        if kind == "python":
            first, _, code = body.partition("\n")
            assert first.startswith("# file: "), "a Python block of the tutorial names its file"
            (tmp_path / first.removeprefix("# file: ").strip()).write_text(body)
        elif kind == "bash":
            for line in body.strip().splitlines():
                command = line.replace("python ", f"{sys.executable} ", 1) if line.startswith("python ") else line
                run = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True)
                assert run.returncode == 0, f"$ {line}\n{run.stdout}\n{run.stderr}"
                printed.append(run.stdout)
    assert (tmp_path / "images" / "train" / "class9").is_dir()
    small = onnx.load(str(tmp_path / "small.onnx"))
    onnx.checker.check_model(small, full_check=True)
    dims = [d.dim_value for d in small.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 32]  # the export's static batch, as the user exported it
    assert (tmp_path / "diff.html").stat().st_size > 1000
    assert (tmp_path / "small.onnx.classes.json").exists()
    assert any("ms per image" in out for out in printed)
