"""`inspect`: analysis + costs of one model, as a plain object and as JSON."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from ..analysis.groups import Analysis
from ..analysis.walk import analyze
from ..loading.model import LoadedModel, load
from ..loading.shapes import InputShapes
from .resources import Costs, compute_costs, parse_hardware


@dataclass
class Inspection:
    """What `inspect` found: the loaded model, its channel groups and its costs."""

    loaded: LoadedModel
    analysis: Analysis
    costs: Costs

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
            "hardware": {"name": costs.hardware.name, "peak_gflops": costs.hardware.peak_gflops,
                         "bandwidth_gbs": costs.hardware.bandwidth_gbs, "batch": costs.hardware.batch},
            "prunable_flops_share": self.prunable_flops_share,
            "groups": groups,
            "notes": self.analysis.notes,
        }


def inspect(model: str | os.PathLike | onnx.ModelProto, input_shapes: InputShapes | None = None,
            keep: list[str] | None = None, hardware: str | None = None, cost_batch_size: int = 1) -> Inspection:
    """Analyze a model's channel groups and costs.

    >>> report = inspect("resnet50.onnx")                  # doctest: +SKIP
    >>> report.costs.flops / 1e9, len(report.analysis.prunable_groups)   # doctest: +SKIP
    (8.18, 37)

    `input_shapes` fixes symbolic dims ({"input": (1, 3, 224, 224)}); the batch dim counts as 1.
    `keep` holds regexes of op names whose channels must not be pruned. `hardware` names a row of
    MorphNet's table (K80, P4, T4, P100, V100, TPUv2) or gives `PEAK_GFLOPS/BANDWIDTH_GBS`;
    `cost_batch_size` is the batch its latency roofline is computed at (FLOPs stay per example).
    """
    hw = parse_hardware(hardware, cost_batch_size)
    loaded = load(model, input_shapes)
    analysis = analyze(loaded, keep=keep)
    return Inspection(loaded=loaded, analysis=analysis, costs=compute_costs(analysis, loaded, hw))
