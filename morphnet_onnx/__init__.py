"""morphnet-onnx: MorphNet's resource-targeted structure learning for ONNX models.

The public API: `inspect` (channel groups and costs), `check` (is surgery exact on this model),
`prune` (apply a structure), `diff` (what changed between two models), `shrink` (MorphNet: learn a
structure under a budget), `expand` (one width multiplier to a budget), `cycle` (rounds of shrink,
expand, retrain), `train`, `evaluate`; the CLI `morphnet-onnx` is a thin layer over it.
"""

import importlib

from .analysis.groups import Analysis, Group
from .analysis.walk import analyze
from .cost.budget import Budget
from .cost.inspection import Inspection, inspect
from .cost.latency import LatencyTable, load_table
from .cost.resources import HARDWARE, Costs, compute_costs, parse_hardware
from .cost.timing import LatencySettings, Measurement
from .errors import Interrupted, MorphNetError
from .expansion.expand import ExpandResult, expand
from .loading.model import LoadedModel, load
from .report.diff import ModelDiff, diff
from .surgery.checking import CheckResult, check
from .surgery.latency import latency_table, measure_latency
from .surgery.pruning import PruneResult, prune
from .surgery.structure import Structure, load_structure

__version__ = "0.1.0"

# Training pulls in onnxruntime's training API: loaded on first use, so `inspect` stays light.
_LAZY = {"shrink": "recipes.shrink", "train": "recipes.shrink", "evaluate": "training.evaluation",
         "cycle": "recipes.cycle", "CycleResult": "recipes.cycle", "LearnResult": "recipes.shrink",
         "ShrinkOptions": "recipes.shrink", "TrainOptions": "training.trainer", "shrink_family": "recipes.family",
         "FamilyResult": "recipes.family", "parse_budgets": "recipes.family"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'morphnet_onnx' has no attribute {name!r}")


__all__ = [
    "Analysis", "CheckResult", "Costs", "Group", "HARDWARE", "Inspection", "Interrupted", "LoadedModel", "ModelDiff",
    "MorphNetError",
    "PruneResult", "Structure", "analyze", "check", "compute_costs", "diff", "inspect", "load", "load_structure",
    "parse_hardware", "prune", "shrink", "train", "evaluate", "Budget", "expand", "ExpandResult", "cycle",
    "CycleResult", "LearnResult", "ShrinkOptions", "TrainOptions", "LatencySettings", "LatencyTable", "Measurement",
    "latency_table", "load_table", "measure_latency", "shrink_family", "FamilyResult", "parse_budgets",
]
