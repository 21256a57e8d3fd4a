"""morphnet-onnx: MorphNet's resource-targeted structure learning for ONNX models.

The public API: `inspect` (channel groups and costs); the CLI `morphnet-onnx` is a thin layer over it.
"""

from .analysis import Analysis, Group, analyze
from .cost import HARDWARE, Costs, compute_costs, parse_hardware
from .errors import MorphNetError
from .inspection import Inspection, inspect
from .io import LoadedModel, load

__version__ = "0.1.0"

__all__ = [
    "Analysis", "Costs", "Group", "HARDWARE", "Inspection", "LoadedModel", "MorphNetError",
    "analyze", "compute_costs", "inspect", "load", "parse_hardware",
]
