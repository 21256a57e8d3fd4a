"""The one place that imports onnxruntime's on-device training API.

`import onnxruntime.training` runs a package __init__ that imports torch (for ORTModule only).
loading/runtime.py's `import_onnxruntime` registers the package module without running that
__init__, so its `artifacts`, `onnxblock` and `api` submodules import here without torch (checked
with 1.19.2), and no command pays for importing torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import MorphNetError
from ..loading.runtime import import_onnxruntime

onnxruntime = import_onnxruntime()
if not (Path(onnxruntime.__file__).parent / "training").is_dir():
    raise MorphNetError("this onnxruntime has no training API: install onnxruntime-training-cpu==1.19.2 "
                        "(and not plain onnxruntime beside it)")
artifacts = importlib.import_module("onnxruntime.training.artifacts")
onnxblock = importlib.import_module("onnxruntime.training.onnxblock")
api = importlib.import_module("onnxruntime.training.api")
