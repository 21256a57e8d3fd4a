"""One training step in a child process, before the real run: a crash inside onnxruntime (SIGFPE in
AveragePool's gradient on symbolic shapes, an abort in a kernel) kills only the child, and the
parent turns it into a one-line error naming the model and, where onnxruntime says it, the op.

    python -m morphnet_onnx.training.probe ARTIFACT_DIR   (reads probe_feeds.npz there)
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..errors import MorphNetError
from .ort import api


def run_probe(work: Path, feeds: list[np.ndarray], model_name: str, timeout: float = 900) -> None:
    np.savez(work / "probe_feeds.npz", *feeds)
    try:
        result = subprocess.run([sys.executable, "-m", "morphnet_onnx.training.probe", str(work)],
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise MorphNetError(f"{model_name}: one training step did not finish in {timeout:.0f} s") from exc
    if result.returncode == 0:
        return
    op = _failing_op(result.stderr)
    where = f" in op {op!r}" if op else ""
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        raise MorphNetError(f"{model_name}: onnxruntime crashed ({name}){where} while taking a training step; "
                            f"nothing was written")
    last = next((line for line in reversed(result.stderr.strip().splitlines()) if line.strip()), "unknown error")
    raise MorphNetError(f"{model_name}: onnxruntime cannot take a training step{where}: {last.strip()[:300]}")


def _failing_op(stderr: str) -> str | None:
    match = re.findall(r"Name:'([^']+)'", stderr) or re.findall(r"node\s*\(?([\w/.:\-]+)\)?", stderr)
    return match[-1] if match else None


def main(work: str) -> int:
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    directory = Path(work)
    with np.load(directory / "probe_feeds.npz") as data:
        feeds = [data[f"arr_{i}"] for i in range(len(data.files))]
    state = api.CheckpointState.load_checkpoint(str(directory / "checkpoint"))
    module = api.Module(str(directory / "training_model.onnx"), state, str(directory / "eval_model.onnx"))
    optimizer = api.Optimizer(str(directory / "optimizer_model.onnx"), module)
    module.train()
    module(*feeds)
    optimizer.step()
    module.eval()
    module(*feeds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
