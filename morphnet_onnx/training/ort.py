"""The one place that imports onnxruntime's on-device training API.

`import onnxruntime.training` runs a package __init__ that imports torch (for ORTModule only).
Registering the package module ourselves, without running that __init__, lets its `artifacts`,
`onnxblock` and `api` submodules import with no torch installed (checked with 1.19.2).
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

from ..errors import MorphNetError


def _register_training_package() -> None:
    if "onnxruntime.training" in sys.modules:
        return
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a broken install
        raise MorphNetError("onnxruntime is not installed; pip install onnxruntime-training-cpu==1.19.2") from exc
    path = Path(onnxruntime.__file__).parent / "training"
    if not path.is_dir():
        raise MorphNetError("this onnxruntime has no training API: install onnxruntime-training-cpu==1.19.2 "
                            "(and not plain onnxruntime beside it)")
    package = types.ModuleType("onnxruntime.training")
    package.__path__ = [str(path)]
    package.__package__ = "onnxruntime.training"
    sys.modules["onnxruntime.training"] = package
    onnxruntime.training = package


_register_training_package()
artifacts = importlib.import_module("onnxruntime.training.artifacts")
onnxblock = importlib.import_module("onnxruntime.training.onnxblock")
api = importlib.import_module("onnxruntime.training.api")
