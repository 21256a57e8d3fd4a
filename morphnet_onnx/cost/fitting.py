"""The latency table's fit (cost/latency.py holds the table): one fit per costed op ("unit") of its
kernel time against its input and output channel counts,

    t(n_in, n_out) = a + b x_in x_out + c x_in + d x_out + (e [n_in off] + h [n_out off]) x_in x_out

where x is the count padded up to a multiple of `block` channels (a kernel that works on blocks of
channels costs the same for 57 channels as for 64) and "off" means not a multiple of an alignment
level (a kernel that falls back to a slower path: onnxruntime's CPU convolutions leave their blocked
layout when the input channels are not a multiple of 4). `block` and the levels are chosen per table
by cross-validation over the timed copies. A unit with no channel left costs nothing. Also here: the
end-to-end calibration (offset and scale) and the split of a run's time into per-run, per-kernel and
kernel time, all least squares with coefficients >= 0 and errors weighed by `copy_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
