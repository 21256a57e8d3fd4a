"""Measured latency in a recipe (`--hardware measure`): the table, the hold's calibration and the
landing, one process or several.

Under torchrun every rank runs the same pipeline and must decide the same structure, but timings
differ between processes (and ranks timing at once disturb each other). So the table comes from a
file every rank reads (measured once beforehand), and only rank 0 measures during the run: the
other ranks take its calibrated targets and its landing's table target (training/distributed.py's
`shared`) and decide from them, which is deterministic given the same weights.
"""

from __future__ import annotations

from pathlib import Path

from ..analysis.groups import Analysis
from ..cost.latency import LatencyTable
from ..cost.resources import measures_latency
from ..errors import MorphNetError
from ..loading.model import LoadedModel
from ..method.decision import decide
from ..method.landing import Landing, calibrator, land
from ..method.regularizers import GroupRegularizer
from ..surgery.pruning import cut_for_training
from ..surgery.latency import resolve_hardware
from ..training.distributed import current_world, is_main, shared
from .options import ShrinkOptions


def measured_under_torchrun(hardware: str | None, latency_table) -> bool:
    """A measured latency table (`--hardware measure` or `--latency-table`) in a torchrun process."""
    return current_world().distributed and measures_latency(hardware, latency_table)


def check_table_source(hardware: str | None, latency_table) -> None:
    """Under torchrun a measured table must come from a file every rank reads: ranks timing the model
    at once would each get a table of their own."""
    if measured_under_torchrun(hardware, latency_table) and not (
            latency_table is not None and Path(latency_table).is_file()):
        raise MorphNetError("--hardware measure under torchrun: every rank would time the model at once and get a "
                            "latency table of its own; measure it once first (morphnet-onnx inspect MODEL --hardware "
                            "measure --latency-table TABLE.json, with the same --provider, --latency-threads and "
                            "--cost-batch-size) and pass --latency-table TABLE.json")


def recipe_hardware(method: ShrinkOptions, loaded: LoadedModel, progress: bool):
    """`resolve_hardware` for `shrink` and its family (`check_table_source` first)."""
    check_table_source(method.hardware, method.latency_table)
    return resolve_hardware(method.hardware, method.cost_batch_size, loaded, method.provider, method.latency_threads,
                            method.latency_table, progress=progress)


def hold_calibrator(analysis: Analysis, loaded: LoadedModel, regs: list[GroupRegularizer], threshold: float,
                    full_cost: float, relative: bool, table: LatencyTable, round_to):
    """landing.py's `calibrator`, measured on rank 0 and shared with the other ranks."""
    calibrate = calibrator(analysis, loaded, regs, threshold, full_cost, relative, table, round_to)

    def on_rank_zero(params, target: float) -> float:
        return shared(calibrate(params, target) if is_main() else None)
    return on_rank_zero


def land_on_rank_zero(analysis: Analysis, loaded: LoadedModel, regs: list[GroupRegularizer], params, threshold: float,
                      target: float, full_cost: float, relative: bool, table: LatencyTable, round_to,
                      original, shapes, first_target: float | None = None) -> Landing:
    """landing.py's `land` on rank 0; the other ranks decide at the table target it kept."""
    landing = land(analysis, loaded, regs, params, threshold, target, full_cost, relative, table, round_to, original,
                   shapes, first_target=first_target) if is_main() else None
    chosen = shared(landing.table_target if landing is not None else None)
    if landing is None:
        decision = decide(analysis, loaded, regs, params, threshold, "latency", chosen, table, round_to)
        decision.target = target
        landing = Landing(decision, cut_for_training(loaded, analysis, decision.structure),
                          table_target=chosen)
    return landing
