"""Fail safe: every command, given a bad file, bad data, an odd model, an unmeetable budget or a place it
cannot write, exits 2 with a short message naming the file and the problem, no traceback, and no
output file. Odd-but-valid models (quantized, control flow, functions, several inputs and outputs)
are analysed with the parts the tool does not understand pinned.
"""

from __future__ import annotations

import errno
import os
import tempfile

import numpy as np
import onnx
import pytest

import failsafe_models as fm
from morphnet_onnx.cli import main

COMMANDS = ["inspect", "check", "prune", "shrink", "expand", "train", "evaluate", "cycle", "diff"]
TRAIN = ["--steps", "2", "--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("failsafe")
    good = folder / "good.onnx"
    onnx.save(fm.good(), good)
    np.savez(folder / "data.npz", **fm.data_arrays())
    (folder / "structure.json").write_text('{"a": 4}')
    return folder


def argv(command: str, model, files, out, data=None, val=None, extra=()) -> list[str]:
    """A command line that is right in everything but what the test puts wrong."""
    model, good = str(model), str(files / "good.onnx")
    data = str(data or files / "data.npz")
    val = str(val or files / "data.npz")
    structure = str(files / "structure.json")
    lines = {
        "inspect": ["inspect", model],
        "check": ["check", model],
        "prune": ["prune", model, "--structure", structure, "-o", str(out / "out.onnx")],
        "shrink": ["shrink", model, "--data", data, "--budget-flops", "0.7x", "-o", str(out / "out.onnx"), *TRAIN],
        "expand": ["expand", model, "--multiplier", "1.5", "-o", str(out / "out.onnx")],
        "train": ["train", model, "--data", data, "-o", str(out / "out.onnx"), *TRAIN],
        "evaluate": ["evaluate", model, "--data", data],
        "cycle": ["cycle", model, "--data", data, "--val", val, "--budget-flops", "1.0x", "--rounds", "1",
                  "--out-dir", str(out / "cycle"), *TRAIN],
        "diff": ["diff", good, model],
    }
    return lines[command] + list(extra)


def listing(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def expect_clean_error(code: int, err: str, names: list[str], out, before: set[str]) -> str:
    """Exit 2, at most three lines, naming one of `names`, no traceback, nothing written."""
    lines = [line for line in err.splitlines() if not line.startswith("[W]")]
    assert code == 2, err
    assert 1 <= len(lines) <= 3, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert any(name in err for name in names), err
    assert listing(out) == before, f"left behind: {listing(out) - before}"
    return err


@pytest.mark.parametrize("kind", fm.BAD_MODELS)
@pytest.mark.parametrize("command", COMMANDS)
def test_bad_model_file(command, kind, files, tmp_path, capsys):
    model = fm.write_bad_model(kind, tmp_path, files / "good.onnx")
    out = tmp_path / "out"
    out.mkdir()
    code = main(argv(command, model, files, out))
    expect_clean_error(code, capsys.readouterr().err, [str(model)], out, set())


@pytest.mark.parametrize("kind", fm.BAD_DATA)
@pytest.mark.parametrize("command", ["shrink", "train", "evaluate", "cycle"])
def test_bad_data_file(command, kind, files, tmp_path, capsys):
    data = fm.write_bad_data(kind, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    code = main(argv(command, files / "good.onnx", files, out, data=data))
    if (command, kind) == ("evaluate", "too_few"):  # evaluation needs no full batch
        assert code == 0
        return
    expect_clean_error(code, capsys.readouterr().err, [str(data)], out, set())


@pytest.mark.parametrize("kind", ["nan", "wrong_key", "label_range"])
@pytest.mark.parametrize("command", ["shrink", "train", "cycle"])
def test_bad_validation_file(command, kind, files, tmp_path, capsys):
    val = fm.write_bad_data(kind, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    code = main(argv(command, files / "good.onnx", files, out, extra=["--val", str(val)]))
    expect_clean_error(code, capsys.readouterr().err, [str(val)], out, set())


def test_nan_names_the_file_the_key_and_the_first_example(files, tmp_path, capsys):
    data = fm.write_bad_data("nan", tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    code = main(argv("train", files / "good.onnx", files, out, data=data))
    err = expect_clean_error(code, capsys.readouterr().err, [str(data)], out, set())
    assert "'input'" in err and "index 5" in err and "lr" not in err


# What each command does with a model that is valid but odd: 0 (it works, the odd part pinned) or 2.
ODD_EXPECTED = {
    "nothing_to_prune": {"inspect": 2, "check": 2, "prune": 2, "shrink": 2, "expand": 2, "train": 0,
                         "evaluate": 0, "cycle": 2, "diff": 0},
}
ODD_COMMANDS = ["inspect", "check", "prune", "expand", "evaluate", "diff"]


def run_odd(command, kind, files, tmp_path, capsys):
    """Run `command` on the odd model `kind` with outputs in a fresh folder: (model, folder, exit code, output)."""
    model = tmp_path / f"{kind}.onnx"
    onnx.save(fm.ODD_MODELS[kind](), model)
    out = tmp_path / "out"
    out.mkdir()
    code = main(argv(command, model, files, out))
    return model, out, code, capsys.readouterr()


@pytest.mark.parametrize("kind", sorted(fm.ODD_MODELS))
@pytest.mark.parametrize("command", ODD_COMMANDS)
def test_odd_model(command, kind, files, tmp_path, capsys):
    model, out, code, captured = run_odd(command, kind, files, tmp_path, capsys)
    expected = ODD_EXPECTED.get(kind, {}).get(command, 0)
    if expected == 2:
        expect_clean_error(code, captured.err, [str(model), str(files / "structure.json")], out, set())
    else:
        assert code == 0, captured.err


SLOW = pytest.mark.slow  # a whole training run (seconds each)

# Refused before any training (nothing to prune; quantized ops and control flow onnxruntime-training
# cannot train), then the runs that train: fast ones, and the whole recipes as `slow`.
REFUSED_IN_TRAINING = ["qdq", "qlinear", "if", "loop", "scan"]
TRAINING_CELLS = [(command, kind) for command in ("shrink", "train", "cycle") for kind in REFUSED_IN_TRAINING] + [
    ("shrink", "nothing_to_prune"), ("cycle", "nothing_to_prune"), ("train", "function"), ("train", "multi_io"),
    pytest.param("train", "nothing_to_prune", marks=SLOW), pytest.param("shrink", "function", marks=SLOW),
    pytest.param("cycle", "function", marks=SLOW), pytest.param("shrink", "multi_io", marks=SLOW),
    pytest.param("cycle", "multi_io", marks=SLOW)]


@pytest.mark.parametrize("command, kind", TRAINING_CELLS)
def test_odd_model_training(command, kind, files, tmp_path, capsys):
    model, out, code, captured = run_odd(command, kind, files, tmp_path, capsys)
    if kind in REFUSED_IN_TRAINING:
        err = expect_clean_error(code, captured.err, [str(model)], out, set())
        assert "cannot be trained" in err
    elif ODD_EXPECTED.get(kind, {}).get(command) == 2:
        expect_clean_error(code, captured.err, [str(model)], out, set())
    else:
        assert code == 0, captured.err
        assert (out / ("cycle/cycle.json" if command == "cycle" else "out.onnx")).exists()


@pytest.mark.parametrize("command, budget", [
    ("shrink", ["--budget-flops", "0.0001x"]), ("shrink", ["--budget-flops", "2x"]),
    ("expand", ["--budget-flops", "10"]), ("cycle", ["--budget-flops", "0.0001x"]),
])
def test_unmeetable_budget(command, budget, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    line = argv(command, files / "good.onnx", files, out)
    flag = line.index("--budget-flops") if "--budget-flops" in line else line.index("--multiplier")
    line[flag:flag + 2] = budget
    code = main(line)
    expect_clean_error(code, capsys.readouterr().err, ["budget"], out, set())


OUTPUT_COMMANDS = ["prune", "shrink", "expand", "train"]


@pytest.mark.parametrize("command", OUTPUT_COMMANDS + ["cycle"])
def test_output_in_a_missing_folder(command, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    missing = out / "no" / "such"
    code = main(argv(command, files / "good.onnx", files, missing))
    expect_clean_error(code, capsys.readouterr().err, [str(out / "no")], out, set())


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_output_is_a_directory(command, files, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "out.onnx").mkdir(parents=True)
    code = main(argv(command, files / "good.onnx", files, out))
    expect_clean_error(code, capsys.readouterr().err, [str(out / "out.onnx")], out, {"out.onnx"})


@pytest.mark.parametrize("option", ["--save-structure", "--plot", "--html"])
@pytest.mark.parametrize("command", ["prune", "shrink"])
def test_second_output_in_a_missing_folder(command, option, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    suffix = {"--save-structure": "s.json", "--plot": "p.png", "--html": "p.html"}[option]
    target = out / "missing" / suffix
    code = main(argv(command, files / "good.onnx", files, out, extra=[option, str(target)]))
    expect_clean_error(code, capsys.readouterr().err, [str(out / "missing")], out, set())


def _refuse_writes_in(folder, error_number):
    """mkstemp (every write of the tool goes through a temp file beside the target) fails in `folder`."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and os.path.realpath(dir) == os.path.realpath(folder):
            raise OSError(error_number, os.strerror(error_number), str(dir))
        return real(*args, dir=dir, **kwargs)

    return mkstemp


@pytest.mark.parametrize("command", OUTPUT_COMMANDS + ["cycle"])
def test_read_only_output_folder(command, files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    # As root a chmod does not stop writes, so the refusal is simulated where every write starts.
    monkeypatch.setattr(tempfile, "mkstemp", _refuse_writes_in(out, errno.EACCES))
    code = main(argv(command, files / "good.onnx", files, out))
    expect_clean_error(code, capsys.readouterr().err, [str(out)], out, set())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_real(files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        code = main(argv("prune", files / "good.onnx", files, out))
        expect_clean_error(code, capsys.readouterr().err, [str(out)], out, set())
    finally:
        out.chmod(0o700)


@pytest.mark.parametrize("command", ["prune", "expand", "train", pytest.param("shrink", marks=SLOW)])
def test_full_disk_leaves_no_partial_file(command, files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    real_fdopen = os.fdopen

    class Full:
        """A file that takes a few bytes, then reports the disk full (as a real write does)."""

        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    code = main(argv(command, files / "good.onnx", files, out))
    err = expect_clean_error(code, capsys.readouterr().err, [str(out / "out.onnx")], out, set())
    assert "space" in err


def test_debug_shows_the_traceback(files, tmp_path, capsys):
    model = fm.write_bad_model("truncated", tmp_path, files / "good.onnx")
    assert main(["--debug", "inspect", str(model)]) == 2
    assert "Traceback" in capsys.readouterr().err
