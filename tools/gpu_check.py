"""The GPU checks of both training backends, in one go (issue 14): `shrink` on the bundled example and
on ResNet-50 at 224x224 with random data, with the CUDA build of onnxruntime-training (`--backend
ort`) and with torch on CUDA (`--backend torch`); steps per second and peak GPU memory of each run.

    python tools/gpu_check.py --out /tmp/gpu_check            # the full check (a few hundred steps each)
    python tools/gpu_check.py --out /tmp/gpu_check --quick    # 20 steps each: does it run at all

Needs: a CUDA device, torch built for CUDA, onnx2torch, and for the ort rows the CUDA build of
onnxruntime-training (docs/usage.md, "CUDA build of onnxruntime"). A backend whose prerequisite is
missing is reported as skipped, with the reason; with no CUDA device at all the script says so and
exits 0 without running anything. Peak GPU memory is the largest `memory.used` that nvidia-smi
reports every 100 ms during the run, less what was in use before it (every process on the GPU).
Writes OUT/gpu_check.md (the table for docs/benchmarks.md) and OUT/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from harness import markdown_table  # tools/harness.py

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "models" / "resnet1d_mnist1d.onnx"
RESNET50 = REPO / "tests" / "data" / "torchvision" / "resnet50_bn.onnx"


def cuda_reason() -> str | None:
    """None when a CUDA device is usable by torch, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"no CUDA device visible to torch {torch.__version__}"
    return None


def ort_cuda_reason() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return (f"this onnxruntime ({onnxruntime.__version__}) has no CUDAExecutionProvider: install the CUDA build "
                f"onnxruntime-training==1.19.2 (docs/usage.md)")
    return None


class GpuMemory:
    """The peak of nvidia-smi's memory.used (MiB) while the block runs, less the value before it."""

    def __enter__(self):
        self.base = self._used()
        self.peak = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _used(self) -> int:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True)
        values = [int(v) for v in out.stdout.split() if v.strip().isdigit()]
        return max(values) if values else 0

    def _poll(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self._used())
            time.sleep(0.1)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.mib = self.peak - self.base


def resnet50_data(work: Path, examples: int) -> Path:
    rng = np.random.default_rng(0)
    path = work / "resnet50_random.npz"
    np.savez(path, input=rng.standard_normal((examples, 3, 224, 224)).astype(np.float32),
             labels=rng.integers(0, 1000, examples))
    return path


def run(model: Path, data: Path, val: Path | None, backend: str, steps: int, batch: int, work: Path) -> dict:
    out = work / f"{model.stem}_{backend}.onnx"
    command = [sys.executable, "-m", "morphnet_onnx", "shrink", str(model), "--data", str(data),
               "--budget-flops", "0.5x", "--steps", str(steps), "--batch-size", str(batch), "--backend", backend,
               "-o", str(out), "--no-progress", "--json", "--force"]
    if val is not None:
        command += ["--val", str(val)]
    start = time.perf_counter()
    with GpuMemory() as memory:
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    row = {"model": model.stem, "backend": backend, "steps": steps, "batch": batch, "wall_s": round(wall, 1),
           "peak_gpu_mib": memory.mib, "ok": result.returncode == 0}
    if result.returncode != 0:
        row["error"] = (result.stderr.strip().splitlines() or ["crash"])[-1][:300]
        return row
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    row.update(train_s=round(doc["seconds"], 1), steps_per_s=round(doc["steps"] / max(doc["seconds"], 1e-9), 2),
               cost_after=round(doc["cost_after"] / doc["cost_before"], 4),
               accuracy=(doc["validation"] or {}).get("accuracy"))
    return row


def table(rows: list[dict], skipped: dict[str, str]) -> str:
    head = ["model", "backend", "batch", "steps", "steps/s (training)", "peak GPU MiB", "written FLOPs", "val top-1",
            "wall s", "error"]
    lines = [markdown_table(head, [
        [r["model"], r["backend"], r["batch"], r["steps"], r.get("steps_per_s", ""), r["peak_gpu_mib"],
         r.get("cost_after", ""), f"{r['accuracy']:.2%}" if r.get("accuracy") is not None else "", r["wall_s"],
         r.get("error", "")] for r in rows])]
    for backend, reason in skipped.items():
        lines.append(f"\n{backend}: skipped, {reason}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="20 steps per run")
    parser.add_argument("--resnet-batch", type=int, default=64)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reason = cuda_reason()
    if reason:
        print(f"gpu_check: skipped: {reason}")
        (out / "gpu_check.md").write_text(f"skipped: {reason}\n")
        return 0
    skipped = {}
    backends = []
    for backend, why in (("ort", ort_cuda_reason()), ("torch", None)):
        if why:
            skipped[backend] = why
        else:
            backends.append(backend)
    steps_example, steps_resnet = (20, 20) if args.quick else (600, 300)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        data = resnet50_data(work, args.resnet_batch * 4)
        for backend in backends:
            for model, train, val, steps, batch in (
                    (EXAMPLE, REPO / "models" / "mnist1d_train.npz", REPO / "models" / "mnist1d_val.npz",
                     steps_example, 64),
                    (RESNET50, data, None, steps_resnet, args.resnet_batch)):
                row = run(model, train, val, backend, steps, batch, work)
                rows.append(row)
                print(json.dumps(row), flush=True)
    text = table(rows, skipped)
    print(text)
    (out / "gpu_check.md").write_text(text + "\n")
    (out / "gpu_check.json").write_text(json.dumps({"rows": rows, "skipped": skipped}, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
