"""Resource costs in MorphNet's conventions: FLOPs, model size and roofline latency, in total, per op,
and per channel group (what removing the group saves, what one more channel costs).

FLOPs count 2 x MACs of Conv, ConvTranspose, Gemm and MatMul at batch 1 (bias, normalization and
activations cost nothing, as in MorphNet). The latency roofline also charges the bytes that
memory-bound ops (adds, norms, activations, concats, products) read and write, at the batch of
`Hardware.batch` (1 by default). Every costed op is bilinear in its input and output
channel counts, `coeff x n_in x n_out`, which makes the marginal cost of a channel exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..analysis.groups import Analysis
from ..errors import MorphNetError
from ..graph_utils import live_tensors
from ..loading.model import LoadedModel
from ..loading.view import ConstantView
from ..ops import BUFFER_INPUTS
from .latency import LatencyTable

# Peak GFLOP/s and memory bandwidth GB/s, from MorphNet's latency regularizer.
HARDWARE: dict[str, tuple[float, float]] = {
    "K80": (8740.0, 480.0),
    "P4": (5500.0, 192.0),
    "T4": (8100.0, 300.0),
    "P100": (9300.0, 732.0),
    "V100": (125000.0, 900.0),
    "TPUv2": (22500.0, 300.0),
}
DEFAULT_HARDWARE = "V100"
MEASURE = "measure"  # --hardware measure: a latency table measured on the model (latency.py)


def is_measure(spec: str | None) -> bool:
    return isinstance(spec, str) and spec.strip().lower() == MEASURE


def measures_latency(hardware: str | None, latency_table) -> bool:
    """Whether latency comes from a measured table: `--hardware measure`, or a `--latency-table`
    (which implies it)."""
    return is_measure(hardware) or latency_table is not None


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_gflops: float
    bandwidth_gbs: float
    batch: int = 1  # the roofline's batch (--cost-batch-size): weights move once, activations per example


def parse_hardware(spec: str | None, batch: int = 1) -> Hardware:
    """A name from the table (case-insensitive) or `PEAK_GFLOPS/BANDWIDTH_GBS`, e.g. `15000/900`;
    `batch` is the batch the latency roofline is computed at (FLOPs stay per example)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MorphNetError(f"--cost-batch-size {batch}: must be 1 or more")
    if is_measure(spec):
        raise MorphNetError("--hardware measure: measured on the model itself (morphnet_onnx.latency_table), "
                            "not a roofline; this command takes a roofline")
    spec = spec or DEFAULT_HARDWARE
    for name, (peak, bandwidth) in HARDWARE.items():
        if name.lower() == spec.lower():
            return Hardware(name, peak, bandwidth, batch)
    peak_text, sep, bandwidth_text = spec.partition("/")
    try:
        peak, bandwidth = float(peak_text), float(bandwidth_text)
    except ValueError:
        peak = bandwidth = -1.0
    if not sep or peak <= 0 or bandwidth <= 0:
        raise MorphNetError(
            f"--hardware {spec!r}: expected one of {', '.join(HARDWARE)}, PEAK_GFLOPS/BANDWIDTH_GBS (e.g. 15000/900) "
            f"or measure")
    return Hardware(f"{peak:g} GFLOP/s, {bandwidth:g} GB/s", peak, bandwidth, batch)


@dataclass
class OpCost:
    op: str
    op_type: str
    flops: float
    weights: float  # weight elements of the bilinear part
    latency_s: float
    compute_bound: bool


@dataclass
class GroupCost:
    removable_flops: float  # FLOPs that vanish when every channel of the group goes
    marginal_flops: float  # FLOPs of one more channel, given the other widths
    marginal_params: float
    marginal_latency_s: float


@dataclass
class Costs:
    flops: float
    params: int
    param_bytes: int
    latency_s: float
    hardware: Hardware
    ops: list[OpCost]
    groups: dict[int, GroupCost] = field(default_factory=dict)
    prunable_flops: float = 0.0  # FLOPs that depend on some prunable group
    weights: float = 0.0  # weight elements of the costed ops (MorphNet's model size)
    # Per channel, MorphNet's marginal cost ({"flops"|"size"|"latency": {group: [one per channel]}}):
    # channels of one group read by different consumers (a Split to convs of different cost) differ.
    channel_marginal: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)

    @property
    def macs(self) -> float:
        return self.flops / 2


def resource_cost(costs: Costs, resource: str) -> float:
    """A budget's resource: "flops", "size" (MorphNet's model size: weight elements) or "latency" (s)."""
    return {"flops": costs.flops, "size": costs.weights, "latency": costs.latency_s}[resource]


def _op_latency(cost, n_in, n_out, hardware: Hardware) -> tuple[float, bool, float, float]:
    """(roofline seconds for a batch of hardware.batch, compute bound?, FLOPs per example, bytes moved)."""
    flops = cost.flops_coeff * n_in * n_out
    weight_bytes = cost.size_coeff * n_in * n_out * cost.dtype_bytes + cost.weight_bytes_extra
    act_bytes = (cost.in_act_per_channel * n_in + cost.out_act_per_channel * n_out) * cost.dtype_bytes * hardware.batch
    compute_s = flops * hardware.batch / (hardware.peak_gflops * 1e9)
    memory_s = (weight_bytes + act_bytes) / (hardware.bandwidth_gbs * 1e9)
    return max(compute_s, memory_s), compute_s >= memory_s, flops, weight_bytes + act_bytes


def compute_costs(analysis: Analysis, loaded: LoadedModel, hardware: Hardware | LatencyTable | None = None,
                  alive: np.ndarray | None = None) -> Costs:
    """Totals, per-op costs and per-group marginal costs of a model at its current widths, or with
    only the `alive` elements (a bool per analysis element) kept: MorphNet's alive counts. With a
    measured `LatencyTable` as the hardware, latency is the table's (cost/latency.py): each op its
    fitted kernel time at its counts, the marginal latency of a channel the fit's slope."""
    hardware = hardware or parse_hardware(None)
    table = hardware if isinstance(hardware, LatencyTable) else None
    n_groups = len(analysis.groups)
    prunable = np.array([g.prunable for g in analysis.groups], dtype=bool)
    # Every (group, channel) gets one slot: marginal costs are kept per channel, summed per group.
    widths = np.array([g.width for g in analysis.groups], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(widths)])
    slot_of_element = offsets[analysis.element_group] + analysis.element_channel
    slot_group = np.repeat(np.arange(n_groups), widths)
    n_slots = int(offsets[-1])
    removable = np.zeros(n_groups)
    marginal_flops = np.zeros(n_slots)
    marginal_params = np.zeros(n_slots)
    marginal_latency = np.zeros(n_slots)
    ops: list[OpCost] = []
    prunable_flops = 0.0
    for cost in analysis.costed:
        n_in, n_out = cost.counts(alive)
        if table is None:
            latency, compute_bound, flops, _ = _op_latency(cost, n_in, n_out, hardware)
        else:
            latency, compute_bound = table.op_seconds(cost.op, n_in, n_out), True
            flops = cost.flops_coeff * n_in * n_out
        ops.append(OpCost(cost.op, cost.op_type, flops, cost.size_coeff * n_in * n_out, latency, compute_bound))
        # Only the slots this op touches (dense per-op vectors made the pass quadratic in depth).
        in_s, in_n = _slot_counts(slot_of_element, cost.in_ids)
        out_s, out_n = _slot_counts(slot_of_element, cost.out_ids)
        slots = np.union1d(in_s, out_s)
        if not len(slots):
            continue
        in_c = np.zeros(len(slots))
        out_c = np.zeros(len(slots))
        in_c[np.searchsorted(slots, in_s)] = in_n
        out_c[np.searchsorted(slots, out_s)] = out_n
        touched, group_index = np.unique(slot_group[slots], return_inverse=True)
        in_g = np.bincount(group_index, weights=in_c, minlength=len(touched))
        out_g = np.bincount(group_index, weights=out_c, minlength=len(touched))
        removable[touched] += cost.flops_coeff * (in_g * n_out + out_g * n_in - in_g * out_g)
        marginal_flops[slots] += cost.flops_coeff * (in_c * n_out + out_c * n_in)
        marginal_params[slots] += cost.size_coeff * (in_c * n_out + out_c * n_in)
        # The roofline follows whichever term dominates; its derivative is that term's.
        if table is not None:
            per_in, per_out = table.op_slopes(cost.op, n_in, n_out)
            marginal_latency[slots] += per_in * in_c + per_out * out_c
        elif compute_bound:
            marginal_latency[slots] += (cost.flops_coeff * (in_c * n_out + out_c * n_in) * hardware.batch
                                        / (hardware.peak_gflops * 1e9))
        else:
            per_byte = cost.dtype_bytes / (hardware.bandwidth_gbs * 1e9)
            marginal_latency[slots] += per_byte * (cost.size_coeff * (in_c * n_out + out_c * n_in) + hardware.batch * (
                cost.in_act_per_channel * in_c + cost.out_act_per_channel * out_c))
        if ((in_g + out_g > 0) & prunable[touched]).any():
            prunable_flops += flops

    def per_group(values: np.ndarray) -> dict[int, np.ndarray]:
        return {g.id: values[offsets[g.id]:offsets[g.id + 1]] for g in analysis.groups}

    channel_marginal = {"flops": per_group(marginal_flops), "size": per_group(marginal_params),
                        "latency": per_group(marginal_latency)}
    groups = {
        g.id: GroupCost(float(removable[g.id]), *(float(channel_marginal[key][g.id].mean()) if g.width else 0.0
                                                  for key in ("flops", "size", "latency")))
        for g in analysis.groups
    }
    params, param_bytes = count_parameters(loaded.model)
    return Costs(flops=float(sum(o.flops for o in ops)), params=params, param_bytes=param_bytes,
                 latency_s=float(sum(o.latency_s for o in ops)) + (table.offset_s if table is not None else 0.0),
                 hardware=hardware, ops=ops, groups=groups,
                 prunable_flops=prunable_flops, weights=float(sum(o.weights for o in ops)),
                 channel_marginal=channel_marginal)


def _slot_counts(slot_of_element: np.ndarray, ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The slots an op's channel ids fall on, and how many positions each (sorted by slot)."""
    if ids is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.unique(slot_of_element[np.asarray(ids).reshape(-1)], return_counts=True)


FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


def count_parameters(model: onnx.ModelProto) -> tuple[int, int]:
    """(learned parameters, bytes of all weights): float tensors of more than one element stored in the
    model (initializers, Constant and ConstantOfShape weights), running statistics excluded from the
    count but not from the bytes."""
    elements: dict[str, tuple[int, int, int]] = {}  # name -> (count, dtype, bytes)
    graph = model.graph
    view = ConstantView(graph)
    for name in view.stored_names() + view.filled_names():
        meta = view.meta(name)
        if meta is not None:
            count = int(np.prod(meta[0])) if meta[0] else 1
            elements[name] = (count, meta[1], count * _itemsize(meta[1]))
    # Only tensors on the way to an output: a weight folded into a Constant leaves its original behind.
    used = live_tensors(graph)
    elements = {name: value for name, value in elements.items() if name in used}
    buffers = {node.input[i] for node in graph.node for i in BUFFER_INPUTS.get(node.op_type, ())
               if i < len(node.input)}
    params = sum(c for name, (c, dtype, _) in elements.items()
                 if dtype in FLOAT_TYPES and c > 1 and name not in buffers)
    total_bytes = sum(b for c, dtype, b in elements.values() if dtype in FLOAT_TYPES)
    return int(params), int(total_bytes)


def _itemsize(dtype: int) -> int:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(dtype).itemsize
    except Exception:
        return 4
