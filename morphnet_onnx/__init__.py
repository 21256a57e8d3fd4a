"""morphnet-onnx: MorphNet's resource-targeted structure learning for ONNX models.

The public API: `inspect` (channel groups and costs), `check` (is surgery exact on this model),
`prune` (apply a structure); the CLI `morphnet-onnx` is a thin layer over it.
"""

from .analysis import Analysis, Group, analyze
from .checking import CheckResult, check
from .cost import HARDWARE, Costs, compute_costs, parse_hardware
from .errors import MorphNetError
from .inspection import Inspection, inspect
from .io import LoadedModel, load
from .pruning import PruneResult, prune
from .structure import Structure, load_structure

__version__ = "0.1.0"

__all__ = [
    "Analysis", "CheckResult", "Costs", "Group", "HARDWARE", "Inspection", "LoadedModel", "MorphNetError",
    "PruneResult", "Structure", "analyze", "check", "compute_costs", "inspect", "load", "load_structure",
    "parse_hardware", "prune",
]
