"""The latency table: a model's latency measured in onnxruntime (`--hardware measure`), as a function of
the width of every channel group, with the steps kernels take at some widths.

Measured by surgery/latency.py (narrowed copies of the model, timed and profiled); kept here is what
the costs need: one fit per costed op ("unit": a Conv with the BatchNormalization and activation
onnxruntime fuses into it, a Gemm, an unfused Add...) of its kernel time against its input and
output channel counts (the fit: cost/fitting.py), and the model's latency as `offset + scale x sum
of the units`, `offset` and `scale` fitted against the end-to-end times of the same narrowed copies
(what no kernel accounts for: onnxruntime's per-run and per-node overhead).

The table is cached on disk under the user's cache folder (XDG_CACHE_HOME, else ~/.cache), in
morphnet-onnx/latency/, one JSON file per key: what the latency depends on (the graph without its
weights' values, the provider, threads, batch, the onnxruntime version and the machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import MorphNetError
from ..loading.writing import write_atomic_bytes
from .fitting import UnitFit, copy_weights, unit_seconds, unit_slopes
from .timing import LatencySettings, Measurement

FORMAT = 6  # bump when the table's meaning changes: older cached tables are measured again
CPU_FORMAT = 4  # the same for a table on the thread's CPU clock (1-thread): it stayed at 1 through formats 2 and 3
# Formats (docs/usage.md): 2 the wall clock's settle (cost/timing.py); 3 wall-clock copies timed against
# the full model, paired (surgery/latency.py); 4 (CPU 2) the floor copy repaired (whole groups had been
# given back) and renamed fused kernels attributed; 5 (CPU 3) a narrowed LayerNormalization timed as one
# op (ops/statistics.py); 6 (CPU 4) the fit's weights (LEAST_WEIGHED_SHARE) and 1-thread copies paired.


def table_format(settings: LatencySettings) -> int:
    """The format a table measured at `settings` has: what its cache key and a given file must match."""
    return CPU_FORMAT if settings.clock == "cpu" else FORMAT


@dataclass
class LatencyTable:
    """A model's measured latency (see the module docstring). `name` and `batch` let it stand where a
    roofline `Hardware` does (compute_costs, reports)."""

    key: str
    model: str
    settings: LatencySettings
    onnxruntime: str
    machine: str
    units: dict[str, UnitFit]
    block: int = 1
    levels: tuple[int, ...] = ()
    offset_s: float = 0.0
    scale: float = 1.0
    full: Measurement | None = None
    floor: Measurement | None = None
    structures: list[dict] = field(default_factory=list)  # measured vs fitted, per timed copy
    unattributed_share: float = 0.0  # of the profiled kernel time no unit could claim
    overheads: dict = field(default_factory=dict)  # per run, per kernel: what the copies' runs cost besides kernels
    cross_validated: float = 0.0  # RMS relative error of the fit on copies it did not see
    seconds: float = 0.0  # to measure it
    phases: dict = field(default_factory=dict)  # of those seconds: cutting the copies, timing, profiling, fitting
    loadavg: list[float] = field(default_factory=list)  # at the start and the end of the measurement
    date: str = ""
    path: Path | None = None  # where it was read from or written to (not saved)
    origin: str = ""  # measured, cache or file: how this run got it (not saved)

    @property
    def name(self) -> str:
        return f"measured: {self.settings.describe()}"

    @property
    def batch(self) -> int:
        return self.settings.batch

    @property
    def clock(self) -> str:
        return self.settings.clock

    def op_seconds(self, op: str, n_in, n_out) -> np.ndarray | float:
        unit = self.units.get(op)
        if unit is None:
            return 0.0
        seconds = self.scale * unit_seconds(unit, n_in, n_out, self.block, self.levels)
        return float(seconds[0]) if np.ndim(n_in) == 0 and np.ndim(n_out) == 0 else seconds

    def op_slopes(self, op: str, n_in: float, n_out: float) -> tuple[float, float]:
        unit = self.units.get(op)
        if unit is None:
            return 0.0, 0.0
        d_in, d_out = unit_slopes(unit, n_in, n_out, self.block, self.levels)
        return self.scale * d_in, self.scale * d_out

    def fit_error(self) -> dict:
        """How far the fitted latency is from the measured one over the timed copies, as the fit weighs them."""
        timed = [s for s in self.structures if s["measured_s"] > 0]
        noise = [s["noise"] for s in self.structures]
        if not timed:
            return {"max": 0.0, "rms": 0.0, "noise": 0.0, "copies": 0}
        measured = np.array([s["measured_s"] for s in timed])
        full = next((s["measured_s"] for s in timed if s["copy"] == "full"), float(measured.max()))
        errors = (np.array([s["fitted_s"] for s in timed]) - measured) * copy_weights(measured, full)
        return {"max": float(np.max(np.abs(errors))), "rms": float(np.sqrt(np.mean(np.square(errors)))),
                "noise": float(np.median(noise)), "copies": len(errors)}

    def summary(self) -> dict:
        """Everything but the units' fits and samples."""
        return {key: value for key, value in self.to_dict().items() if key not in ("units", "structures")} | {
            "units": len(self.units), "copies": len(self.structures), "path": str(self.path) if self.path else None}

    def to_dict(self) -> dict:
        return {
            "format": table_format(self.settings), "key": self.key, "model": self.model,
            "settings": self.settings.to_dict(),
            "onnxruntime": self.onnxruntime, "machine": self.machine, "block": self.block, "levels": list(self.levels),
            "offset_s": self.offset_s, "scale": self.scale,
            "full": self.full.to_dict() if self.full else None, "floor": self.floor.to_dict() if self.floor else None,
            "fit_error": self.fit_error(), "structures": self.structures,
            "unattributed_share": self.unattributed_share, "overheads": self.overheads,
            "cross_validated": self.cross_validated, "seconds": self.seconds, "phases": self.phases,
            "loadavg": self.loadavg,
            "date": self.date, "units": [u.to_dict() for u in self.units.values()],
        }

    @classmethod
    def from_dict(cls, data: dict, path: Path | None = None) -> LatencyTable:
        s = data.get("settings") or {}
        try:
            expected = table_format(LatencySettings(s["provider"], int(s["threads"]), int(s["batch"])))
        except (KeyError, TypeError, ValueError, MorphNetError):
            expected = FORMAT
        if data.get("format") != expected:
            raise MorphNetError(f"{path or 'latency table'}: made by another version of morphnet-onnx "
                                f"(format {data.get('format')}, this one reads {expected} at its settings); "
                                f"measure it again")
        units = [UnitFit.from_dict(u) for u in data["units"]]
        return cls(key=data["key"], model=data["model"],
                   settings=LatencySettings(s["provider"], int(s["threads"]), int(s["batch"])),
                   onnxruntime=data["onnxruntime"], machine=data["machine"], units={u.op: u for u in units},
                   block=int(data["block"]), levels=tuple(int(v) for v in data["levels"]),
                   offset_s=float(data["offset_s"]),
                   scale=float(data["scale"]),
                   full=Measurement.from_dict(data["full"]) if data.get("full") else None,
                   floor=Measurement.from_dict(data["floor"]) if data.get("floor") else None,
                   structures=list(data.get("structures", [])),
                   unattributed_share=float(data.get("unattributed_share", 0.0)),
                   overheads=dict(data.get("overheads", {})),
                   cross_validated=float(data.get("cross_validated", 0.0)),
                   seconds=float(data.get("seconds", 0.0)), phases=dict(data.get("phases", {})),
                   loadavg=list(data.get("loadavg", [])),
                   date=str(data.get("date", "")), path=path)

    def save(self, path: str | os.PathLike) -> Path:
        """Written atomically (a reader never sees half a table)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic_bytes(path, json.dumps(self.to_dict(), indent=1) + "\n")
        self.path = path
        return path


def check_covers(table: LatencyTable, analysis, name: str) -> None:
    """A table measured on another model (other op names) describes nothing here: refuse it."""
    known = sum(cost.op in table.units for cost in analysis.costed)
    if known * 2 < len(analysis.costed):
        raise MorphNetError(f"{name}: the latency table of {table.model} knows {known} of its {len(analysis.costed)} "
                            f"costed ops (other names): measure this model's own table")


def table_step(table) -> int:
    """The width step a table's steps suggest when nothing finer is known (expand's `--round-to auto`):
    the least common multiple of its padding block and alignment levels (1 for a roofline)."""
    if not isinstance(table, LatencyTable):
        return 1
    return int(np.lcm.reduce([table.block, *table.levels]))


def load_table(path: str | os.PathLike) -> LatencyTable:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MorphNetError(f"--latency-table {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise MorphNetError(f"--latency-table {path}: not a latency table ({exc})") from exc
    if not isinstance(data, dict) or "units" not in data or "settings" not in data:
        raise MorphNetError(f"--latency-table {path}: not a latency table (no units or settings)")
    try:
        return LatencyTable.from_dict(data, path)
    except (KeyError, TypeError, ValueError) as exc:
        raise MorphNetError(f"--latency-table {path}: not a latency table ({exc})") from exc


# ---- the key and the cache ---------------------------------------------------------------------------

def machine_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cpus"


def graph_digest(model: onnx.ModelProto) -> str:
    """sha256 of the model without its weights' values (names, shapes and types stay): latency does
    not depend on them, so a retrained copy of a model reuses its table."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for tensor in light.graph.initializer:
        tensor.ClearField("raw_data")
        for name in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
            tensor.ClearField(name)
        tensor.ClearField("external_data")
    return hashlib.sha256(light.SerializeToString(deterministic=True)).hexdigest()


def table_key(model: onnx.ModelProto, settings: LatencySettings, ort_version: str) -> str:
    text = json.dumps({"format": table_format(settings), "graph": graph_digest(model), "settings": settings.to_dict(),
                       "onnxruntime": ort_version, "machine": machine_name()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "morphnet-onnx" / "latency"


def cached_table(key: str) -> LatencyTable | None:
    path = cache_folder() / f"{key}.json"
    if not path.is_file():
        return None
    try:
        table = LatencyTable.from_dict(json.loads(path.read_text()), path)
    except (OSError, ValueError, KeyError, TypeError, MorphNetError):
        return None  # a stale or broken cache entry is measured again
    return table if table.key == key else None
