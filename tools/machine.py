"""Machine, versions and commit, recorded with every benchmark result (dev tools only)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx

import morphnet_onnx

ROOT = Path(__file__).resolve().parent.parent


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    try:
        from google.protobuf import __version__ as pb_version
        from google.protobuf.internal import api_implementation
        pb = f"{pb_version} ({api_implementation.Type()})"
    except ImportError:
        pb = None
    commit = None
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "morphnet_onnx"],
                               capture_output=True, text=True, check=True).stdout.strip()
        if dirty:
            commit += " + uncommitted changes in morphnet_onnx/"
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "nproc": nproc, "cpu": cpu, "python": platform.python_version(), "onnx": onnx.__version__,
        "onnxruntime": ort_version, "numpy": np.__version__, "protobuf": pb,
        "morphnet_onnx": morphnet_onnx.__version__, "git_commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "loadavg_start": list(os.getloadavg()),
    }
