"""Interrupted runs, with real signals to real processes: `train`, `shrink` and `cycle` killed mid-run
(SIGINT, as Ctrl-C sends, SIGTERM and SIGKILL) lose nothing written before, say how to continue,
and `--resume` ends with the bytes of the run never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time
import weakref
from contextlib import nullcontext
from pathlib import Path

import pytest

from builders import small_bn_net
from conftest import REPO
from morphnet_onnx import Interrupted
from morphnet_onnx.recipes import shrink as learning
from morphnet_onnx.stopping import stopping_on_signals
from morphnet_onnx.training.trainer import TrainOptions

STEPS = 60
EVERY = 5


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 2-conv BN network on 3x8x8 inputs (steps of milliseconds) and its data."""
    return small_bn_net(tmp_path_factory.mktemp("interrupt"))


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "morphnet_onnx.cli", *args, "--no-progress", "--threads", "1"]


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


def kill_after_checkpoint(args: list[str], state: Path, sig: int, at_least: int = 2 * EVERY) -> tuple[int, str]:
    """Start the command, wait until its checkpoint record reaches `at_least` steps, send `sig`."""
    # A shell starts background jobs with SIGINT ignored and the child would inherit that (and rightly
    # keep ignoring Ctrl-C): the run under test gets Python's own handler whatever started pytest.
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(state.read_text())["step"] >= at_least:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    assert process.poll() is None, f"the run ended before it could be killed: {process.communicate()}"
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def train_args(small: Path, out: str, *extra: str) -> list[str]:
    return command("train", str(small / "net.onnx"), "--data", str(small / "train.npz"), "-o", str(small / out),
                   "--steps", str(STEPS), "--batch-size", "8", "--seed", "3", *extra)


@pytest.mark.slow
def test_train_killed_by_sigint_and_by_sigkill_resumes_to_the_same_bytes(small):
    whole = run(train_args(small, "whole.onnx"))
    assert whole.returncode == 0, whole.stderr
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 130), (signal.SIGKILL, -signal.SIGKILL)):
        ckpt = small / f"ckpt-{sig.name}"
        out = small / f"train-{sig.name}.onnx"
        out.write_bytes(b"an earlier output")  # what was there before must survive the kill
        args = train_args(small, out.name, "--checkpoint-dir", str(ckpt), "--checkpoint-every", str(EVERY))
        returncode, err = kill_after_checkpoint(args, ckpt / "state.json", sig)
        assert returncode == code, err
        if sig != signal.SIGKILL:  # SIGTERM (`kill PID`) ends a run as Ctrl-C does
            line = err.strip().splitlines()[-1]
            assert line.startswith("morphnet-onnx: interrupted at step ") and f"of {STEPS}" in line, err
            assert str(ckpt) in line and "--resume" in line and "Traceback" not in err, err
        assert out.read_bytes() == b"an earlier output"
        assert not [p for p in small.iterdir() if p.name.endswith(".tmp")]
        saved = json.loads((ckpt / "state.json").read_text())["step"]
        assert 2 * EVERY <= saved < STEPS and saved % EVERY == 0
        if sig == signal.SIGTERM:
            continue  # the same handling as SIGINT from here on
        resumed = run(args + ["--resume"])
        assert resumed.returncode == 0, resumed.stderr
        assert out.read_bytes() == (small / "whole.onnx").read_bytes()


def test_shrink_killed_resumes_to_the_same_model_and_structure(small):
    def args(out: str, *extra: str) -> list[str]:
        return command("shrink", str(small / "net.onnx"), "--data", str(small / "train.npz"), "-o",
                       str(small / out), "--save-structure", str(small / f"{out}.json"), "--budget-flops", "0.6x",
                       "--steps", str(STEPS), "--batch-size", "8", "--force", *extra)

    whole = run(args("s_whole.onnx"))
    assert whole.returncode == 0, whole.stderr
    ckpt = small / "ckpt-shrink"
    killed = args("s_resumed.onnx", "--checkpoint-dir", str(ckpt), "--checkpoint-every", str(EVERY))
    returncode, err = kill_after_checkpoint(killed, ckpt / "state.json", signal.SIGKILL, at_least=30)
    assert returncode == -signal.SIGKILL, err
    assert not (small / "s_resumed.onnx").exists() and not (small / "s_resumed.onnx.json").exists()
    resumed = run(killed + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert (small / "s_resumed.onnx").read_bytes() == (small / "s_whole.onnx").read_bytes()
    assert (small / "s_resumed.onnx.json").read_bytes() == (small / "s_whole.onnx.json").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_cycle_killed_mid_round_resumes_to_the_same_table(small, sig):
    def args(out: str) -> list[str]:
        return command("cycle", str(small / "net.onnx"), "--data", str(small / "train.npz"), "--val",
                       str(small / "val.npz"), "--budget-flops", "0.9x", "--rounds", "1", "--out-dir",
                       str(small / out), "--steps", "30", "--batch-size", "8", "--checkpoint-every", str(EVERY),
                       "--force")

    whole_dir = small / "cycle-whole"
    if not whole_dir.exists():
        whole = run(args(whole_dir.name))
        assert whole.returncode == 0, whole.stderr
    out = small / f"cycle-{sig.name}"
    returncode, err = kill_after_checkpoint(args(out.name), out / "checkpoints" / "round1_shrink" / "state.json",
                                            sig)
    assert returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
    if sig == signal.SIGINT:
        line = err.strip().splitlines()[-1]
        assert "cycle step round1/shrink" in line and "round0/train" in line and "--resume" in line, err
    before = (out / "round0.onnx").stat().st_mtime_ns
    assert json.loads((out / "cycle.json").read_text())["steps"].keys() == {"round0/train"}
    resumed = run(args(out.name) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "round0.onnx").stat().st_mtime_ns == before  # a finished step is not redone
    for name in ("round0.onnx", "round1_shrunk.onnx", "round1_structure.json", "round1_expanded.onnx",
                 "round1.onnx"):
        assert (out / name).read_bytes() == (whole_dir / name).read_bytes(), name
    rows = json.loads((out / "cycle.json").read_text())["table"]["rows"]
    whole_rows = json.loads((whole_dir / "cycle.json").read_text())["table"]["rows"]
    strip = lambda rows: [{k: v for k, v in row.items() if k not in ("model", "structure")} for row in rows]  # noqa: E731
    assert strip(rows) == strip(whole_rows)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_whose_raise_a_finalizer_swallowed_still_stops_training(small, tmp_path, monkeypatch):
    """A signal that arrives while Python runs a weakref callback: its handler's KeyboardInterrupt is
    printed as "Exception ignored" and dropped, and the run used to go on to its end. Here the
    handler runs inside a finalizer at step 3; training stops at the next step all the same."""
    class Owner:
        pass

    def progress(options, controller, label):
        def on_step(info):
            if info.step == 3:
                owner = Owner()
                weakref.finalize(owner, signal.getsignal(signal.SIGTERM), signal.SIGTERM, None)
                del owner  # the finalizer runs the handler now; CPython drops what it raises
        return nullcontext(), on_step, lambda text: None

    monkeypatch.setattr(learning, "_progress", progress)
    out = tmp_path / "out.onnx"
    options = TrainOptions(steps=STEPS, batch_size=8, progress=False, probe=False,
                           checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2)
    before = signal.getsignal(signal.SIGTERM)
    with stopping_on_signals(), pytest.raises(Interrupted) as caught:
        learning.train(small / "net.onnx", small / "train.npz", out, options=options)
    assert str(caught.value).startswith(f"interrupted at step 3 of {STEPS}"), caught.value
    assert "--resume" in str(caught.value) and not out.exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are given back


def test_a_closed_stdout_ends_quietly_with_141(tmp_path):
    """`inspect MODEL | head -3`: the reader is gone before the tables are written."""
    for extra in ([], ["--json"]):
        read, write = os.pipe()
        os.close(read)
        process = subprocess.Popen([sys.executable, "-m", "morphnet_onnx.cli", "inspect",
                                    str(REPO / "models" / "tiny_resnet.onnx"), *extra], cwd=REPO, stdout=write,
                                   stderr=subprocess.PIPE, text=True)
        os.close(write)
        _, err = process.communicate(timeout=120)
        assert process.returncode == 141 and err == "", (extra, err)
