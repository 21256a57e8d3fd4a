"""`inspect`: analysis + costs of one model, as a plain object and as JSON. With a measured latency
table as the hardware, each group's measured latency and the widths worth having too."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import onnx

from ..analysis.groups import Analysis
from ..analysis.walk import analyze
from ..loading.model import LoadedModel, load
from ..loading.shapes import InputShapes
from .latency import LatencyTable
from .resources import Costs, compute_costs, parse_hardware
from .widths import group_curve, worth_having


@dataclass
class Inspection:
    """What `inspect` found: the loaded model, its channel groups and its costs."""

    loaded: LoadedModel
    analysis: Analysis
    costs: Costs
    # Measured latency only (cost/widths.py): seconds that vanish with the whole group, widths worth having.
    removable_latency: dict[int, float] = field(default_factory=dict)
    fast_widths: dict[int, list[int]] = field(default_factory=dict)

    @property
    def prunable_flops_share(self) -> float:
        return self.costs.prunable_flops / self.costs.flops if self.costs.flops else 0.0

    def to_dict(self) -> dict:
        costs = self.costs
        groups = []
        for group in self.analysis.groups:
            gc = costs.groups[group.id]
            groups.append({
                "id": group.id,
                "width": group.width,
                "prunable": group.prunable,
                "reasons": group.reasons,
                "sources": group.sources,
                "ops": group.ops,
                "flops_share": gc.removable_flops / costs.flops if costs.flops else 0.0,
                "removable_flops": gc.removable_flops,
                "marginal_flops": gc.marginal_flops,
                "marginal_params": gc.marginal_params,
                "marginal_latency_s": gc.marginal_latency_s,
                **({"removable_latency_s": self.removable_latency[group.id],
                    "fast_widths": self.fast_widths[group.id]} if group.id in self.fast_widths else {}),
            })
        return {
            "model": self.loaded.name,
            "opset": self.loaded.opset,
            "upgraded_from_opset": self.loaded.upgraded_from,
            "flops": costs.flops,
            "macs": costs.macs,
            "params": costs.params,
            "param_bytes": costs.param_bytes,
            "latency_s": costs.latency_s,
            "hardware": _hardware_dict(costs.hardware),
            "prunable_flops_share": self.prunable_flops_share,
            "groups": groups,
            "notes": self.analysis.notes,
            "cautions": self.analysis.cautions,
        }


def _hardware_dict(hardware) -> dict:
    if isinstance(hardware, LatencyTable):
        return {"name": hardware.name, "batch": hardware.batch, "measured": hardware.summary()}
    return {"name": hardware.name, "peak_gflops": hardware.peak_gflops, "bandwidth_gbs": hardware.bandwidth_gbs,
            "batch": hardware.batch}


def inspect(model: str | os.PathLike | onnx.ModelProto, input_shapes: InputShapes | None = None,
            keep: list[str] | None = None, hardware: str | LatencyTable | None = None,
            cost_batch_size: int = 1) -> Inspection:
    """Analyze a model's channel groups and costs.

    >>> report = inspect("resnet50.onnx")                  # doctest: +SKIP
    >>> report.costs.flops / 1e9, len(report.analysis.prunable_groups)   # doctest: +SKIP
    (8.18, 37)

    `input_shapes` fixes symbolic dims ({"input": (1, 3, 224, 224)}); the batch dim counts as 1.
    `keep` holds regexes of op names whose channels must not be pruned. `hardware` names a row of
    MorphNet's table (K80, P4, T4, P100, V100, TPUv2) or gives `PEAK_GFLOPS/BANDWIDTH_GBS`;
    `cost_batch_size` is the batch its latency roofline is computed at (FLOPs stay per example).
    `hardware` may also be the model's measured `LatencyTable` (`morphnet_onnx.latency_table`): the
    latency is then the table's, with each group's measured share and the widths worth having.
    """
    hw = hardware if isinstance(hardware, LatencyTable) else parse_hardware(hardware, cost_batch_size)
    loaded = load(model, input_shapes)
    analysis = analyze(loaded, keep=keep)
    report = Inspection(loaded=loaded, analysis=analysis, costs=compute_costs(analysis, loaded, hw))
    if isinstance(hw, LatencyTable):
        for group in analysis.prunable_groups:
            curve = group_curve(hw, analysis, group.id)
            report.removable_latency[group.id] = float(curve[-1] - curve[0])
            report.fast_widths[group.id] = worth_having(curve)
    return report
