"""The latency table: a model's latency measured in onnxruntime (`--hardware measure`), as a function of
the width of every channel group, with the steps kernels take at some widths.

Measured by surgery/latency.py (narrowed copies of the model, timed and profiled); kept here is what
the costs need: one fit per costed op ("unit": a Conv with the BatchNormalization and activation
onnxruntime fuses into it, a Gemm, an unfused Add...) of its kernel time against its input and
output channel counts,

    t(n_in, n_out) = a + b x_in x_out + c x_in + d x_out + (e [n_in off] + h [n_out off]) x_in x_out

where x is the count padded up to a multiple of `block` channels (a kernel that works on blocks of
channels costs the same for 57 channels as for 64) and "off" means not a multiple of `align` (a
kernel that falls back to a slower path: onnxruntime's CPU convolutions leave their blocked layout
when the input channels are not a multiple of 4). `block` and `align` are chosen by the fit, per
table, from the measurements. A unit with no channel left costs nothing. The model's latency is
`offset + scale x sum of the units`, `offset` and `scale` fitted against the end-to-end times of the
same narrowed copies (what no kernel accounts for: onnxruntime's per-run and per-node overhead).

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
class UnitFit:
    """One costed op's kernel time as a function of its channel counts (in positions: a flattened
    feature counts each channel H x W times, `rep_in`/`rep_out` positions per channel)."""

    op: str
    n_in: float  # at full width
    n_out: float
    rep_in: float = 1.0
    rep_out: float = 1.0
    coef: list[float] = field(default_factory=lambda: [0.0] * 4)
    samples: list[list[float]] = field(default_factory=list)  # [n_in, n_out, seconds, weight, copy]

    def to_dict(self) -> dict:
        return {"op": self.op, "n_in": self.n_in, "n_out": self.n_out, "rep_in": self.rep_in,
                "rep_out": self.rep_out, "coef": self.coef, "samples": self.samples}

    @classmethod
    def from_dict(cls, data: dict) -> UnitFit:
        return cls(data["op"], float(data["n_in"]), float(data["n_out"]), float(data.get("rep_in", 1.0)),
                   float(data.get("rep_out", 1.0)), [float(c) for c in data["coef"]],
                   [list(map(float, s)) for s in data.get("samples", [])])


def _basis(unit: UnitFit, n_in, n_out, block: int, levels: tuple[int, ...]) -> np.ndarray:
    """The fit's columns for counts given as arrays: 1, x_in x_out, x_in, x_out, then x_in x_out
    times "the input count is not a multiple of l" for each level l, then the same for the output."""
    n_in, n_out = np.atleast_1d(np.asarray(n_in, dtype=float)), np.atleast_1d(np.asarray(n_out, dtype=float))
    c_in, c_out = np.round(n_in / unit.rep_in), np.round(n_out / unit.rep_out)
    x_in = np.ceil(c_in / block) * block * unit.rep_in
    x_out = np.ceil(c_out / block) * block * unit.rep_out
    both = x_in * x_out
    columns = [np.ones_like(both), both, x_in, x_out]
    columns += [both * (np.mod(c_in, level) != 0) for level in levels]
    columns += [both * (np.mod(c_out, level) != 0) for level in levels]
    return np.stack(columns, axis=1)


def unit_seconds(unit: UnitFit, n_in, n_out, block: int, levels: tuple[int, ...]) -> np.ndarray:
    """The unit's fitted kernel time (0 where it has no channel on a side)."""
    t = _basis(unit, n_in, n_out, block, levels) @ np.asarray(unit.coef)
    alive = (np.atleast_1d(np.asarray(n_in)) > 0) & (np.atleast_1d(np.asarray(n_out)) > 0)
    return np.where(alive, t, 0.0)


def unit_slopes(unit: UnitFit, n_in: float, n_out: float, block: int, levels: tuple[int, ...]) -> tuple[float, float]:
    """Seconds per input and per output position at these counts: the derivative of the fit with its
    steps (the padding and the alignment penalties) held as they stand at these counts."""
    coef = np.asarray(unit.coef)
    c_in, c_out = round(n_in / unit.rep_in), round(n_out / unit.rep_out)
    k = len(levels)
    slope = coef[1] + sum(coef[4 + i] * (c_in % level != 0) + coef[4 + k + i] * (c_out % level != 0)
                          for i, level in enumerate(levels))
    return float(slope * n_out + coef[2]), float(slope * n_in + coef[3])


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


# ---- fitting ----------------------------------------------------------------------------------------

def nnls(a: np.ndarray, b: np.ndarray, iterations: int = 100) -> np.ndarray:
    """min ||a x - b|| with x >= 0 (Lawson and Hanson's active set)."""
    n = a.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    for _ in range(iterations):
        gradient = a.T @ (b - a @ x)
        candidates = ~passive & (gradient > 1e-12 * max(np.abs(gradient).max(), 1e-300))
        if not candidates.any():
            break
        passive[np.argmax(np.where(candidates, gradient, -np.inf))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            negative = passive & (z <= 0) & (x - z > 0)
            alpha = float(np.min(x[negative] / (x[negative] - z[negative]))) if negative.any() else 0.0
            x = x + alpha * (z - x)
            passive &= x > 1e-15
            x[~passive] = 0.0
    return x


def _sample_array(unit: UnitFit) -> np.ndarray:
    return np.array([s for s in unit.samples if s[0] > 0 and s[1] > 0], dtype=float).reshape(-1, 5)


def fit_unit(unit: UnitFit, block: int, levels: tuple[int, ...], leave_out: frozenset[int] = frozenset(),
             samples: np.ndarray | None = None, basis: np.ndarray | None = None) -> np.ndarray:
    """Fit `unit.coef` to its samples ([n_in, n_out, seconds, weight, copy]) except those of the copies
    left out, coefficients >= 0, errors weighted (the weight makes an error count relative to the
    whole model's latency in that copy). `samples` and their `basis`: as arrays, when at hand.
    Returns the coefficients."""
    samples = _sample_array(unit) if samples is None else samples
    width = 4 + 2 * len(levels)
    coef = np.zeros(width)
    unit.coef = [0.0] * width
    if not len(samples) or not samples[:, 2].any():  # no time of its own (fused into another op's kernel)
        return coef
    basis = _basis(unit, samples[:, 0], samples[:, 1], block, levels) if basis is None else basis
    if leave_out:
        keep = ~np.isin(samples[:, 4].astype(int), list(leave_out))
        samples, basis = samples[keep], basis[keep]
        if not len(samples):
            return coef
    # A column that never changes (a side whose count stayed) says nothing beyond the constant.
    use = np.ptp(basis, axis=0) > 0
    use[0] = True
    weight = samples[:, 3]
    matrix = basis[:, use] * weight[:, None]
    scale = np.abs(matrix).max(axis=0)
    scale[scale == 0] = 1.0
    coef[use] = nnls(matrix / scale, samples[:, 2] * weight) / scale
    unit.coef = [float(c) for c in coef]
    return coef


# The steps a runtime's kernels may take: the padding block, and the alignments below which a kernel
# takes a slower path. Chosen per table by cross-validation over the timed copies.
BLOCK_CHOICES = (1, 8, 16, 32)
LEVEL_CHOICES = ((), (4,), (16,), (4, 16), (8, 16))
FOLDS = 3


def fit_units(units: dict[str, UnitFit], copies: list[tuple[dict, float]], offset: float,
              held_out: list[int]) -> tuple[int, tuple[int, ...], float]:
    """Choose the padding block and alignment levels whose fit predicts best the copies it did not
    see (`held_out` copies in FOLDS folds; `copies`: (counts per op, measured seconds) per copy, the
    prediction being `offset` plus the units), then fit every unit on every copy. Returns (block,
    levels, cross-validated RMS relative error)."""
    folds = [frozenset(held_out[i::FOLDS]) for i in range(FOLDS) if held_out[i::FOLDS]]
    arrays = {op: _sample_array(unit) for op, unit in units.items()}
    timed = {op: unit for op, unit in units.items() if len(arrays[op]) and arrays[op][:, 2].any()}
    measured = np.array([seconds for _, seconds in copies])
    best = None
    for levels in LEVEL_CHOICES:
        for block in BLOCK_CHOICES:
            bases = {op: _basis(unit, arrays[op][:, 0], arrays[op][:, 1], block, levels) for op, unit in timed.items()}
            errors = []
            for fold in folds:
                predicted = np.full(len(copies), offset)
                for op, unit in timed.items():
                    coef = fit_unit(unit, block, levels, fold, arrays[op], bases[op])
                    rows = np.isin(arrays[op][:, 4].astype(int), list(fold))
                    np.add.at(predicted, arrays[op][rows, 4].astype(int), bases[op][rows] @ coef)
                index = np.array(sorted(fold))
                errors.extend(predicted[index] / measured[index] - 1)
            score = float(np.sqrt(np.mean(np.square(errors)))) if errors else 0.0
            if best is None or score < best[0] * (1 - 1e-6):
                best = (score, block, levels)
    score, block, levels = best
    for unit in units.values():
        fit_unit(unit, block, levels)
    return block, levels, score


# A copy faster than this share of the full model weighs in the fits as one at that share: ConvNeXt-Tiny's
# floor copy (0.001x) outweighed all the others and pinned its depthwise convs' fits near zero (12% off on
# copies left out, 1.1% with this; docs/benchmarks.md). No budget asks for a model that fast.
LEAST_WEIGHED_SHARE = 0.02


def copy_weights(measured: list[float], full_s: float) -> np.ndarray:
    """The weight of each timed copy's errors in the fits: relative to its time, floored at
    LEAST_WEIGHED_SHARE of the full model's."""
    return 1.0 / np.maximum(np.asarray(measured, dtype=float), LEAST_WEIGHED_SHARE * full_s)


def calibrate(fitted_sums: list[float], measured: list[float],
              weights: np.ndarray | None = None) -> tuple[float, float]:
    """(offset, scale) with measured ~ offset + scale x fitted, both >= 0, errors relative to the
    measured time or weighed by `weights` (least squares)."""
    x, y = np.asarray(fitted_sums, dtype=float), np.asarray(measured, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        return max(float(np.mean(y - x)), 0.0), 1.0
    weight = 1.0 / y if weights is None else np.asarray(weights, dtype=float)
    solution = nnls(np.stack([np.ones_like(x), x], axis=1) * weight[:, None], y * weight)
    return float(solution[0]), float(solution[1])


def overheads(measured: list[float], kernel_s: list[float], kernels: list[int]) -> tuple[float, float, float]:
    """(per run, per kernel second, per kernel) with measured ~ run + rate x kernel seconds + node x
    kernels over the timed copies, all >= 0, errors relative to the measured time: what a run costs
    besides its kernels (onnxruntime's per-run and per-node work), and how the profiler's kernel
    times compare with the end-to-end clock."""
    y = np.asarray(measured, dtype=float)
    matrix = np.stack([np.ones_like(y), np.asarray(kernel_s, dtype=float), np.asarray(kernels, dtype=float)], axis=1)
    weight = 1.0 / y
    scaled = matrix * weight[:, None]
    norm = np.abs(scaled).max(axis=0)
    norm[norm == 0] = 1.0
    run, rate, node = nnls(scaled / norm, y * weight) / norm
    if rate <= 0:  # no usable profile: every second goes to the kernels as measured
        rate = 1.0
    return float(run), float(rate), float(node)
