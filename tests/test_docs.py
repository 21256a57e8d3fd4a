"""The examples on the documentation pages run, and print what the pages show.

A ``` or ```text block whose first line starts with `$ ` holds shell commands, each followed by the output the
page shows: the command runs (bash, in a scratch folder holding the repository's models/ and the
files the page describes), and its output must be what the page shows, line by line, where a line
`...` stands for any number of lines and a line ending in `...` for any line that starts with the
text before it. A ```python block followed by "Output:" and a ```text block runs the same way. A
block right after `<!-- docs-test: skip (why) -->` is not run (a command interrupted by hand).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from conftest import REPO

PAGES = sorted((REPO / "docs").glob("*.md"))
BLOCK = re.compile(r"(<!-- docs-test: skip[^>]*-->\s*)?```(\w*)\n(.*?)```", re.S)


def _examples() -> list:
    found = []
    for page in PAGES:
        text = page.read_text()
        blocks = list(BLOCK.finditer(text))
        for index, block in enumerate(blocks):
            skipped, kind, body = block.group(1), block.group(2), block.group(3)
            line = text[:block.start()].count("\n") + 1
            if skipped:
                continue
            if kind in ("text", "") and body.startswith("$ "):
                found.append(pytest.param(page, "shell", body, id=f"{page.name}:{line}"))
            elif kind == "python" and index + 1 < len(blocks):
                between = text[block.end():blocks[index + 1].start()]
                if between.strip() == "Output:" and blocks[index + 1].group(2) == "text":
                    found.append(pytest.param(page, "python", (body, blocks[index + 1].group(3)),
                                              id=f"{page.name}:{line}"))
    return found


_SCRATCH: dict[Path, Path] = {}


def _scratch(page: Path, factory) -> Path:
    """The folder a page's examples run in, in page order (a later example reads what an earlier one
    wrote, as a reader following the page does): the repository's models, the onnx test models where
    a page names them, and the small files the pages describe in words."""
    if page in _SCRATCH:
        return _SCRATCH[page]
    tmp_path = _SCRATCH[page] = factory.mktemp(page.stem)
    (tmp_path / "models").symlink_to(REPO / "models")
    light = Path(onnx.__file__).parent
    venv_onnx = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages" / "onnx"
    venv_onnx.parent.mkdir(parents=True)
    venv_onnx.symlink_to(light)
    tiny = onnx.load(str(REPO / "models" / "tiny_resnet.onnx"))
    for axis, name in ((0, "N"), (2, "H"), (3, "W")):  # tiny_dynamic.onnx: dims 0, 2, 3 symbolic
        tiny.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    del tiny.graph.value_info[:]
    onnx.save(tiny, str(tmp_path / "tiny_dynamic.onnx"))
    for opset, name in ((17, "relu.onnx"), (22, "relu_opset22.onnx")):  # a single Relu node
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        (tmp_path / name).write_bytes(model.SerializeToString())
    return tmp_path


def _matches(shown: list[str], got: list[str]) -> bool:
    """`...` lines match any run of lines; a line ending in `...` matches a line with that start."""
    if not shown:
        return not got
    head, rest = shown[0], shown[1:]
    if head.strip() == "...":
        return any(_matches(rest, got[i:]) for i in range(len(got) + 1))
    if not got:
        return False
    same = got[0].startswith(head[:-3]) if head.endswith("...") else got[0].rstrip() == head.rstrip()
    return same and _matches(rest, got[1:])


def _shell_steps(body: str) -> list[tuple[str, list[str]]]:
    steps = []
    for line in body.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
    for _, shown in steps:
        while shown and not shown[-1].strip():
            shown.pop()
    return steps


@pytest.mark.parametrize("page, kind, example", _examples())
def test_the_page_shows_what_its_example_prints(tmp_path_factory, page, kind, example):
    work = _scratch(page, tmp_path_factory)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "COLUMNS": "140", "PYTHONPATH": str(REPO)}
    if kind == "python":
        code, shown = example
        run = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        got = run.stdout.rstrip("\n").split("\n")
        assert _matches(shown.rstrip("\n").split("\n"), got), "\n".join(got)
        return
    for command, shown in _shell_steps(example):
        command = command.replace(".venv/bin/morphnet-onnx", "morphnet-onnx")
        run = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=work, env=env,
                             capture_output=True, text=True)
        got = (run.stdout + run.stderr).rstrip("\n").split("\n") if (run.stdout + run.stderr).strip() else []
        if not shown:  # the page shows what it printed elsewhere (a JSON block): it must run
            assert run.returncode == 0, run.stderr
            continue
        assert _matches(shown, got), f"$ {command}\n" + "\n".join(got)


def test_the_docs_examples_are_found():
    assert len(_examples()) >= 5
    shutil.which("bash") or pytest.fail("bash runs the examples")


# ---- links between the pages ------------------------------------------------------------------------

LINK = re.compile(r"\]\(([\w./-]*\.md)?#([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` dropped, spaces to `-`,
    a repeated anchor numbered (-1, -2...). Code blocks hold no headings."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def test_every_link_to_a_section_finds_it():
    missing, checked = [], 0
    for page in [*PAGES, REPO / "README.md"]:
        for target, anchor in LINK.findall(page.read_text()):
            linked = (page.parent / target) if target else page
            checked += linked.exists()
            if linked.exists() and anchor not in _anchors(linked):
                missing.append(f"{page.name}: {target}#{anchor}")
    assert checked > 40 and not missing, (checked, missing)  # (53 section links on 2026-12-05)
