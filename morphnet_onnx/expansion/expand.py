"""`expand`: MorphNet's second half. One width multiplier for every prunable group of a structure,
the largest whose cost fits the budget, and the model rebuilt at those widths.

    widths:  W_g = max(N, N x round(m x n_g / N))   (n_g: the group's alive channels, N: --round-to)

Groups at 0 stay 0; groups that cannot change (the model's inputs and outputs, `--keep`) stay as
they are, so the cost is not linear in m: m is found by bisection on the exact cost function (every
costed op is bilinear in its channel counts, see cost/resources.py), and the written model's cost is measured
again. Narrower groups keep their strongest channels (surgery, as `prune`); wider groups repeat
channels (the same per-op cutters, with repeated indices) whose copies are then initialised afresh:
`--init fresh` re-initialises every weight (the network is to be retrained from scratch), `--init
keep` only the new channels, with zero weights where other ops read them, so that the wider model
computes exactly what the input model computes.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..analysis.gates import gate_magnitudes
from ..analysis.groups import Analysis
from ..analysis.walk import analyze, node_names
from ..cost.budget import Budget
from ..cost.latency import check_covers, table_step
from ..cost.resources import Hardware, compute_costs, measures_latency, parse_hardware, resource_cost
from ..errors import MorphNetError
from ..graph_utils import attr, with_params
from ..loading.model import LoadedModel, load
from ..loading.shapes import InputShapes
from ..loading.view import ConstantView
from ..loading.writing import refuse_overwriting, save_model
from ..ops import NORM_FRESH, weight_layout
from ..surgery.apply import Surgeon
from ..surgery.latency import resolve_hardware
from ..surgery.pruning import check_round_to, cut_for_training, prepare, verify_model
from ..surgery.structure import Structure, load_structure, structure_from_dict, top_channels
from .initialization import INITS, draw, fans, initialize_weights, relu_follows

# Bisection steps on the multiplier: 2^-60 of its range, far below one channel of any group.
BISECTION_STEPS = 60
# The multiplier search gives up above this (nothing prunable grows the cost).
MAX_MULTIPLIER = 2.0 ** 20


@dataclass
class ExpandResult:
    """What `expand` wrote: the multiplier, the widths per group and the costs before and after."""

    model: onnx.ModelProto
    multiplier: float
    resource: str
    target: float | None  # the budget in the resource's unit (None: --multiplier given)
    reference_cost: float  # what 1.0x means
    cost_before: float  # the input model with the structure applied
    cost_after: float  # measured on the written model
    next_step_cost: float | None  # the cost one rounding step above (how close the budget could be met)
    flops_before: float
    flops_after: float
    params_before: int
    params_after: int
    init: str
    widths: list[dict] = field(default_factory=list)  # {"sources", "before", "after"} per prunable group
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"multiplier": self.multiplier, "resource": self.resource, "target": self.target,
                "reference_cost": self.reference_cost, "cost_before": self.cost_before,
                "cost_after": self.cost_after, "next_step_cost": self.next_step_cost,
                "flops_before": self.flops_before, "flops_after": self.flops_after,
                "params_before": self.params_before, "params_after": self.params_after, "init": self.init,
                "widths": self.widths, "notes": self.notes}


def expand(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike | None = None, *,
           structure=None, budget: Budget | None = None, multiplier: float | None = None,
           reference: str | os.PathLike | onnx.ModelProto | None = None, round_to: int = 1, init: str = "fresh",
           seed: int = 0, input_shapes: InputShapes | None = None, keep: list[str] | None = None,
           hardware: str | None = None, cost_batch_size: int = 1, provider: str = "CPUExecutionProvider",
           latency_threads: int = 0, latency_table: str | os.PathLike | None = None) -> ExpandResult:
    """Scale every prunable width of `model` (with `structure` applied, if given) by one multiplier:
    `multiplier` as given, or the largest whose cost fits `budget`; write the result to `output`.

    >>> expand("small.onnx", "wide.onnx", budget=Budget("flops", "1.0x"), reference="resnet.onnx")  # doctest: +SKIP
    >>> expand("resnet.onnx", "half.onnx", multiplier=0.5)   # the uniform width-multiplier baseline  # doctest: +SKIP

    `structure`: a structure file, its dict or a `Structure` of `model` (docs/structure.md).
    `budget`: relative budgets (`1.0x`) are of `reference` if given, else of `model`.
    `round_to`: widths are multiples of it. `init`: "fresh" (every weight re-initialised, seeded:
    for retraining from scratch) or "keep" (surviving weights kept; new channels random, read with
    zero weights: the wider model computes what `model` computes).
    `hardware="measure"` (or a `latency_table` file): latency from the measured table of `reference`
    when given (the widest model, so that widths stay within what was measured), else of `model`,
    at `provider`, `latency_threads` and batch `cost_batch_size`; `round_to="auto"`: widths
    multiples of the table's step (its padding block and alignments).
    """
    measured = measures_latency(hardware, latency_table)
    _validate(budget, multiplier, reference, 1 if round_to == "auto" and measured else round_to, init, seed)
    refuse_overwriting({"-o": output}, [model, structure, reference])
    hw = parse_hardware(hardware, cost_batch_size) if not measured else None
    loaded, analysis = prepare(model, input_shapes, keep, seed=seed)
    if measured:
        hw = resolve_hardware(hardware, cost_batch_size, reference if reference is not None else loaded, provider,
                              latency_threads, latency_table, input_shapes)
        check_covers(hw, analysis, loaded.name)
    if round_to == "auto":
        round_to = table_step(hw)
    if not analysis.prunable_groups:
        raise MorphNetError(f"{loaded.name}: nothing to expand (no prunable channel group; see `inspect`)")
    chosen = _structure(structure, analysis, loaded)
    resource = budget.resource if budget else "flops"
    pinned, notes = _unwidenable_groups(loaded, analysis)
    plan = WidthPlan(analysis, loaded, chosen, pinned, round_to, resource, hw)
    before_costs = compute_costs(analysis, loaded, hw, alive=plan.copies(None))
    cost_before = resource_cost(before_costs, resource)
    ref_loaded, ref_analysis = prepare(reference, input_shapes, keep) if reference is not None else (loaded, analysis)
    reference_cost = resource_cost(compute_costs(ref_analysis, ref_loaded, hw), resource)
    target = None
    next_step = None
    if budget is not None:
        target = budget.target(reference_cost)
        multiplier, next_step = plan.solve(target, budget.text)
    widths = plan.widths(multiplier)
    result_model = build(loaded, analysis, chosen, widths, plan.magnitudes, init, seed, input_shapes)
    verify_model(result_model, f"the expanded model {output or ''}".strip())
    after = load(result_model, input_shapes)
    after_costs = compute_costs(analyze(after), after, hw)
    cost_after = resource_cost(after_costs, resource)
    if target is not None and cost_after > target * (1 + 1e-9):
        raise MorphNetError(f"internal: the expanded model costs {cost_after:.6g} {resource}, over the budget "
                            f"{target:.6g} the width plan met ({plan.cost_at(multiplier):.6g})")
    if output is not None:
        inputs = [p for p in (loaded.path, Path(reference) if isinstance(reference, (str, os.PathLike)) else None)
                  if p is not None]
        save_model(result_model, Path(output), inputs=inputs)
    rows = [{"sources": g.sources, "before": plan.alive[g.id], "after": widths[g.id]}
            for g in analysis.prunable_groups if plan.alive[g.id]]
    return ExpandResult(result_model, float(multiplier), resource, target, reference_cost, cost_before, cost_after,
                        next_step, before_costs.flops, after_costs.flops,
                        _params(analysis, loaded, chosen), after_costs.params, init, rows, notes)


def _validate(budget, multiplier, reference, round_to, init, seed) -> None:
    if round_to == "auto":
        raise MorphNetError("--round-to auto takes the widths a measured latency table shows to be fast: add "
                            "--hardware measure")
    if (budget is None) == (multiplier is None):
        raise MorphNetError("give either a budget (--budget-flops/--budget-size/--budget-latency) or --multiplier")
    if multiplier is not None:
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not math.isfinite(multiplier) \
                or multiplier <= 0:
            raise MorphNetError(f"--multiplier {multiplier}: must be a number above 0")
        if reference is not None:
            raise MorphNetError("--reference sets what a relative budget (1.0x) means; it does not apply to --multiplier")
    check_round_to(round_to)
    if init not in INITS:
        raise MorphNetError(f"--init {init}: choose one of {', '.join(INITS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise MorphNetError(f"--seed {seed!r}: must be a whole number")


def _structure(structure, analysis: Analysis, loaded: LoadedModel) -> Structure:
    if structure is None:
        return Structure.full(analysis)
    if isinstance(structure, Structure):
        return structure
    if isinstance(structure, dict):
        return structure_from_dict(structure, analysis, loaded)
    return load_structure(structure, analysis, loaded)


def _params(analysis: Analysis, loaded: LoadedModel, structure: Structure) -> int:
    """Parameters of the input model with the structure applied (measured on the cut model)."""
    if all(mask.all() for mask in structure.alive.values()):
        return compute_costs(analysis, loaded).params
    cut = load(cut_for_training(loaded, analysis, structure).model)
    return compute_costs(analyze(cut), cut).params


def _unwidenable_groups(loaded: LoadedModel, analysis: Analysis) -> tuple[set[int], list[str]]:
    """Prunable groups whose channels cannot be repeated: held on several axes of one tensor (heads x
    head size), or picked by a Gather along the channel axis. They keep their width."""
    pinned: dict[int, str] = {}
    for tensor, ids in analysis.tensor_ids.items():
        if sum(1 for size in ids.shape if size > 1) > 1:
            for group in np.unique(analysis.element_group[ids]).tolist():
                pinned.setdefault(group, f"{tensor!r} holds its channels on several axes")
    graph = loaded.model.graph
    for node, name in zip(graph.node, node_names(graph)):
        if node.op_type == "Gather" and node.input and node.input[0] in analysis.tensor_ids:
            ids = analysis.tensor_ids[node.input[0]]
            axis = attr(node, "axis", 0) % max(ids.ndim, 1)
            if ids.shape[axis] > 1:
                for group in np.unique(analysis.element_group[ids]).tolist():
                    pinned.setdefault(group, f"{name} (Gather) picks channels by index")
    prunable = {g.id for g in analysis.prunable_groups}
    notes = [f"group {g} ({', '.join(analysis.groups[g].sources[:2])}) keeps its width: {why}"
             for g, why in sorted(pinned.items()) if g in prunable]
    return {g for g in pinned if g in prunable}, notes


class WidthPlan:
    """Widths of every group at a multiplier, and what they cost (without building the model)."""

    def __init__(self, analysis: Analysis, loaded: LoadedModel, structure: Structure, pinned: set[int],
                 round_to: int, resource: str, hardware: Hardware) -> None:
        self.analysis, self.loaded, self.structure = analysis, loaded, structure
        self.round_to, self.resource, self.hardware = round_to, resource, hardware
        self.alive = {g.id: structure.alive_count(g.id) for g in analysis.groups}
        self.scaled = [g.id for g in analysis.prunable_groups if g.id not in pinned and self.alive[g.id]]
        self.magnitudes = gate_magnitudes(analysis, loaded) if self.scaled else {}

    def widths(self, multiplier: float | None) -> dict[int, int]:
        """Width of every group (None: as the structure has it)."""
        widths = dict(self.alive)
        if multiplier is not None:
            step = self.round_to
            for group_id in self.scaled:
                widths[group_id] = max(step, step * int(round(multiplier * self.alive[group_id] / step)))
        return widths

    def copies(self, multiplier: float | None) -> np.ndarray:
        """How many times every analysis element appears at these widths (0: removed)."""
        per_channel = {}
        widths = self.widths(multiplier)
        for group in self.analysis.groups:
            per_channel[group.id] = channel_copies(self.structure.alive[group.id], widths[group.id],
                                                   self.magnitudes.get(group.id))
        copies = np.zeros(len(self.analysis.element_group), dtype=np.int64)
        for group_id, counts in per_channel.items():
            members = self.analysis.element_group == group_id
            copies[members] = counts[self.analysis.element_channel[members]]
        return copies

    def cost_at(self, multiplier: float | None) -> float:
        costs = compute_costs(self.analysis, self.loaded, self.hardware, alive=self.copies(multiplier))
        return resource_cost(costs, self.resource)

    def solve(self, target: float, text: str) -> tuple[float, float | None]:
        """The largest multiplier whose cost is within `target`, and the cost one step above it."""
        low = 1e-9
        floor = self.cost_at(low)
        if floor > target:
            raise MorphNetError(f"budget {text} ({target:.4g} {self.resource}) is below what the model costs with "
                                f"every prunable group at {self.round_to} channel(s) ({floor:.4g}); raise the budget")
        high = 1.0
        while self.cost_at(high) <= target:
            if high >= MAX_MULTIPLIER:
                raise MorphNetError(f"budget {text}: no width multiplier reaches it (no group that may change "
                                    f"affects the {self.resource})")
            low, high = high, high * 2
        for _ in range(BISECTION_STEPS):
            middle = (low + high) / 2
            if self.cost_at(middle) <= target:
                low = middle
            else:
                high = middle
        return low, self.cost_at(high)


def channel_copies(alive: np.ndarray, width: int, magnitude: np.ndarray | None) -> np.ndarray:
    """Copies of every channel of a group for `width` channels from its `alive` ones: fewer keep
    the strongest; more repeat channels spread evenly over the group (so that every part of a
    group split between ops grows alike)."""
    counts = alive.astype(np.int64)
    n = int(counts.sum())
    if width == n or n == 0:
        return counts
    positions = np.nonzero(alive)[0]
    if width < n:
        strength = magnitude[positions] if magnitude is not None else -positions.astype(float)
        counts[:] = 0
        counts[positions[top_channels(strength, width)]] = 1
        return counts
    base, extra = divmod(width, n)
    counts[positions] = base
    counts[positions[(np.arange(extra) * n) // extra]] += 1
    return counts


def build(loaded: LoadedModel, analysis: Analysis, structure: Structure, widths: dict[int, int],
          magnitudes: dict[int, np.ndarray], init: str, seed: int, input_shapes: InputShapes | None) -> onnx.ModelProto:
    """The model at `widths`: narrower groups cut (as `prune`, the strongest channels by
    `magnitudes` staying), then wider ones widened."""
    # Groups are found again on the cut model: its ops keep their names, so sources identify them.
    width_of_source = {source: widths[g.id] for g in analysis.groups for source in g.sources}
    narrowed = Structure({g.id: channel_copies(structure.alive[g.id], widths[g.id], magnitudes.get(g.id)) > 0
                          for g in analysis.groups})
    model = loaded.model
    if not all(mask.all() for mask in narrowed.alive.values()):
        model = cut_for_training(loaded, analysis, narrowed).model
        loaded = load(model, input_shapes)
        analysis = analyze(loaded)
    copies = np.ones(len(analysis.element_group), dtype=np.int64)
    for group in analysis.groups:
        width = width_of_source.get(group.sources[0]) if group.sources else None
        if width is not None and width > group.width:
            per_channel = channel_copies(np.ones(group.width, dtype=bool), width, None)
            members = analysis.element_group == group.id
            copies[members] = per_channel[analysis.element_channel[members]]
    if (copies > 1).any():
        surgeon = Surgeon(loaded, analysis, Structure.full(analysis), copies=copies)
        model, _ = surgeon.rewrite()
        if init == "keep":
            model = _initialize_new_channels(model, surgeon, seed)
    if init == "fresh":
        model = initialize_weights(model, seed)
    return restore_names(model)


def _initialize_new_channels(model: onnx.ModelProto, surgeon: Surgeon, seed: int) -> onnx.ModelProto:
    """Repeated channels become new ones: random weights where they are made, zero weights where
    they are read (so the model's outputs do not change), fresh norm parameters, zero biases."""
    rng = np.random.default_rng(seed)
    graph = model.graph
    constants = ConstantView(graph).arrays()
    relu = relu_follows(graph)
    changed: dict[str, np.ndarray] = {}

    def new_mask(tensor: str) -> np.ndarray | None:
        layout = surgeon.layout(tensor) if tensor else {}
        return next(iter(layout.values()))[1] if layout else None

    for node in graph.node:
        layout = weight_layout(node, constants)
        if layout is not None:
            weight = changed.get(layout.weight, constants[layout.weight]).copy()
            new_out, new_in = new_mask(node.output[0]), new_mask(node.input[0])
            out_axis, in_axis = layout.out_axis % weight.ndim, layout.in_axis % weight.ndim
            if new_in is not None:
                if layout.groups > 1 and weight.shape[in_axis] * layout.groups == len(new_in):
                    new_in = new_in.reshape(layout.groups, -1)[0]  # the same in-group positions in every group
                if len(new_in) == weight.shape[in_axis]:
                    index = [slice(None)] * weight.ndim
                    index[in_axis] = new_in
                    weight[tuple(index)] = 0
            if new_out is not None and len(new_out) == weight.shape[out_axis]:
                index = [slice(None)] * weight.ndim
                index[out_axis] = new_out
                shape = list(weight.shape)
                shape[out_axis] = int(new_out.sum())
                fan_in, fan_out = fans(weight, layout)
                weight[tuple(index)] = draw(rng, shape, fan_in, fan_out, relu.get(node.output[0], False), weight.dtype)
                if layout.bias in constants:
                    bias = changed.get(layout.bias, constants[layout.bias]).copy()
                    if bias.shape[-1:] == (len(new_out),):
                        bias[..., new_out] = 0
                        changed[layout.bias] = bias
            changed[layout.weight] = weight
        for index, value in NORM_FRESH.get(node.op_type, {}).items():
            new = new_mask(node.input[0])
            if new is not None and index < len(node.input) and node.input[index] in constants:
                param = changed.get(node.input[index], constants[node.input[index]]).copy()
                if param.shape == new.shape:
                    param[new] = value
                    changed[node.input[index]] = param
    return with_params(model, changed)


SURGERY_SUFFIX = re.compile(r"(__pruned(_\d+)?)+$")


def restore_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Sliced weights get `__pruned` names in surgery; give them back the user's parameter names
    where those are free (they are, once the original tensors are gone), so names stay stable."""
    graph = model.graph
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | \
        {i.name for i in graph.input}
    renames = {}
    for tensor in graph.initializer:
        base = SURGERY_SUFFIX.sub("", tensor.name)
        if base != tensor.name and base not in taken:
            renames[tensor.name] = base
            taken.add(base)
    if not renames:
        return model
    model = _copy(model)
    graph = model.graph
    for tensor in graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renames:
                node.input[index] = renames[name]
    for value in graph.input:
        value.name = renames.get(value.name, value.name)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
