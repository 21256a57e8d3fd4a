"""Surgery: turn a Structure into a smaller ONNX model that computes exactly what the original
computes with the removed channels' gates set to zero.

One pass in topological order follows what removed channels hold (`values.py`); a second pass
rewrites each kept op with its op family's cutter (`ops/`) and drops ops that only served removed
channels: a group with no channel left removes its branch (a residual block collapses to its skip
plus a constant, a dead Concat input disappears).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..analysis.groups import Analysis
from ..analysis.walk import node_names
from ..errors import MorphNetError
from ..graph_utils import compress
from ..loading.model import LoadedModel
from ..ops import (BROADCASTING, SHAPE_READERS, WEIGHTED, bias_input, cut_nothing, op_info, output_channel_axis,
                   weight_input)
from ..ops import CHANNEL_NORMS as NORMS
from ..ops.statistics import computes_over_channels
from .rewrite import Rewrite
from .shapes import ShapeArithmetic
from .structure import Structure
from .values import Probes, evaluate


@dataclass
class SurgeryResult:
    model: onnx.ModelProto
    structure: Structure  # as applied: channels kept for exactness are alive here
    notes: list[str] = field(default_factory=list)
    removed_ops: list[str] = field(default_factory=list)


class Surgeon(ShapeArithmetic, Probes):
    """Surgery state for one model and one structure. With `copies` (how many times every analysis
    element appears in the result, 1 or more) it widens instead: every run of positions that one
    channel holds along a channel axis is repeated that many times, the copies right after it, so
    the per-op cutters slice weights, split sizes and shapes to the wider layout unchanged."""

    def __init__(self, loaded: LoadedModel, analysis: Analysis, structure: Structure,
                 approximate_borders: bool = False, copies: np.ndarray | None = None,
                 approximate_norms: bool = False) -> None:
        self.approximate_borders = approximate_borders
        self.approximate_norms = approximate_norms
        self.approximated: list[str] = []
        self.loaded = loaded
        self.model = loaded.model
        self.graph = loaded.model.graph
        self.analysis = analysis
        self.structure = Structure({g: m.copy() for g, m in structure.alive.items()})
        self.opset = loaded.opset
        self.names = node_names(self.graph)
        self.shapes = loaded.shapes
        self.ids = analysis.tensor_ids
        self.base_dir = loaded.path.parent if loaded.path else None
        self.view = loaded.view
        self.graph_outputs = {o.name for o in self.graph.output}
        self.static_spatial = self._static_spatial()
        self.notes: list[str] = []
        self._init_shape_arithmetic()
        self.element_alive = self.structure.element_alive(analysis)
        self.copies = copies
        self._layouts: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        # What removed channels hold (pass 1), per channel position or True when wholly known.
        self.val: dict[str, np.ndarray] = {}
        self.known: dict[str, np.ndarray | bool] = {}
        self.folds: dict[str, np.ndarray] = {}  # op name -> contribution to add to its output

    # ---- constants ---------------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant of the original model (None for anything else)."""
        return self.view.value(name, computed=False)

    def _static_spatial(self) -> bool:
        inits = {t.name for t in self.graph.initializer}
        for value in self.graph.input:
            if value.name in inits:
                continue
            dims = value.type.tensor_type.shape.dim
            if any(not d.HasField("dim_value") for d in list(dims)[1:]):
                return False
        return True

    # ---- masks ---------------------------------------------------------------------------------
    def set_alive(self, structure: Structure) -> None:
        """Consider another alive set (feasibility checks try many on one surgeon)."""
        self.element_alive = structure.element_alive(self.analysis)
        self._pruned_values = {}  # shape arithmetic of the pruned model depends on what is kept

    def alive(self, tensor: str) -> np.ndarray | None:
        """Alive flag per channel position (ids-shaped), None for tensors without channels."""
        ids = self.ids.get(tensor)
        if ids is None:
            return None
        return self.element_alive[ids]

    def keep(self, tensor: str) -> dict[int, np.ndarray]:
        """Kept indices per channel axis that loses positions (when widening: the source position of
        every position of the wider axis)."""
        if self.copies is not None:
            return {axis: source for axis, (source, _) in self.layout(tensor).items()}
        alive = self.alive(tensor)
        if alive is None or alive.all():
            return {}
        ids = self.ids[tensor]
        axes = [a for a in range(ids.ndim) if ids.shape[a] > 1]
        if not axes:  # a single channel, removed
            shape = self.shapes[tensor]
            axis = 1 if len(shape) > 1 and shape[1] == 1 else len(shape) - 1
            return {axis: np.zeros(0, dtype=np.int64)}
        keep = {}
        product = np.ones(alive.shape, dtype=bool)
        for axis in axes:
            others = tuple(a for a in range(ids.ndim) if a != axis)
            kept = alive.any(axis=others)
            if not kept.all():
                keep[axis] = np.nonzero(kept)[0]
            shape = [1] * ids.ndim
            shape[axis] = ids.shape[axis]
            product = product & kept.reshape(shape)
        if not np.array_equal(product, np.broadcast_to(alive, product.shape)):
            raise MorphNetError(f"internal: channels of {tensor!r} are not removable as a rectangle")
        return keep

    def layout(self, tensor: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Widening: per channel axis that grows, (source position, is a new copy) of every position."""
        if tensor in self._layouts:
            return self._layouts[tensor]
        ids = self.ids.get(tensor)
        layout: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if ids is not None and ids.size and not (self.copies[ids] == 1).all():
            axes = [a for a in range(ids.ndim) if ids.shape[a] > 1]
            if len(axes) > 1:
                raise MorphNetError(f"internal: {tensor!r} holds channels on several axes; it cannot widen")
            if axes:
                axis = axes[0]
            else:
                shape = self.shapes[tensor]
                axis = 1 if len(shape) > 1 and shape[1] == 1 else len(shape) - 1
            elements = ids.reshape(-1)
            channel = self.analysis.element_group[elements] * (1 << 32) + self.analysis.element_channel[elements]
            starts = np.concatenate([[0], np.nonzero(channel[1:] != channel[:-1])[0] + 1, [len(elements)]])
            sources, new = [], []
            for begin, end in zip(starts[:-1].tolist(), starts[1:].tolist()):
                run = np.arange(begin, end)
                for copy in range(int(self.copies[elements[begin]])):
                    sources.append(run)
                    new.append(np.full(len(run), copy > 0))
            layout[axis] = (np.concatenate(sources), np.concatenate(new))
        self._layouts[tensor] = layout
        return layout

    def is_empty(self, tensor: str) -> bool:
        alive = self.alive(tensor)
        return alive is not None and not alive.any()

    def structural_problems(self) -> list[str]:
        """Why the current alive set cannot be cut out (without computing any value): a model output
        that would become constant, or a removed branch feeding an op that cannot take a constant."""
        gone: dict[str, str] = {}  # empty, or every position known (constant): the node where removal began
        problems = []
        for node, name in zip(self.graph.node, self.names):
            if node.op_type in ("Constant", "ConstantOfShape"):
                continue
            live = [i for i in node.input if i and not self.view.is_stored(i) and self.shape_value(i) is None]
            gone_inputs = [i for i in live if i in gone]
            if live and len(gone_inputs) == len(live) and node.op_type not in SHAPE_READERS:
                gone.update((o, gone[gone_inputs[0]]) for o in node.output if o)
            else:
                for tensor in gone_inputs:
                    if self.is_empty(tensor):
                        if node.op_type not in ("Concat",) + tuple(SHAPE_READERS):
                            problems.append(f"{name} ({node.op_type}) reads the removed {tensor!r}")
                    elif node.op_type not in BROADCASTING:
                        problems.append(f"{name} ({node.op_type}) reads the constant left by a removed branch")
                gone.update((o, name) for o in node.output if self.is_empty(o))
        problems += [f"model output {o!r} would be constant (what reaches it is removed from {gone[o]} on)"
                     for o in self.graph_outputs if o in gone]
        return problems

    # ---- pass 1: values of removed channels ------------------------------------------------------
    def follow_values(self) -> set[int]:
        """Compute what removed channels hold; return elements that must stay for exactness."""
        self.val, self.known, self.folds = {}, {}, {}
        revive: set[int] = set()
        for node, name in zip(self.graph.node, self.names):
            if node.op_type in SHAPE_READERS or node.op_type in ("Constant", "ConstantOfShape"):
                continue
            known = [i for i in node.input if i in self.known]
            live = [i for i in node.input if i and i not in self.known and self.shape_value(i) is None]
            outputs_dead = [o for o in node.output if self.has_dead(o)]
            all_known = bool(known) and not live and all(self.fully_known(i) for i in known)
            if all_known:
                self._evaluate(node, name, full=True)
                for out in node.output:
                    if out in self.graph_outputs:
                        raise MorphNetError(f"the structure removes everything that feeds the model output "
                                            f"{out!r}: it would be a constant")
            elif outputs_dead or any(self.has_dead(i) for i in node.input if i):
                revive |= self._partial(node, name, outputs_dead)
        return revive

    def fully_known(self, tensor: str) -> bool:
        known = self.known.get(tensor)
        return known is True or (isinstance(known, np.ndarray) and bool(known.all()))

    def has_dead(self, tensor: str) -> bool:
        alive = self.alive(tensor)
        return alive is not None and not alive.all()

    def input_values(self, node) -> list[np.ndarray | None]:
        values = []
        for name in node.input:
            if not name:
                values.append(None)
            elif name in self.val:
                values.append(self.val[name])
            else:
                value = self.shape_value(name)
                if value is None:  # a live activation: zeros stand in for it
                    shape = self.shapes.get(name)
                    dtype = onnx.helper.tensor_dtype_to_np_dtype(self.loaded.dtypes.get(name, 1) or 1)
                    value = np.zeros([1] * len(shape) if shape else [], dtype=dtype)
                values.append(value)
        return values

    def _evaluate(self, node, name, full: bool) -> None:
        values = self.input_values(node)
        shapes = [self.shapes.get(i) if i else None for i in node.input]
        out_shapes = [self.shapes[o] for o in node.output if o]
        outs = evaluate(node, values, shapes, out_shapes, self.opset)
        # Zeros stood in for live activations (and for removed positions whose values are not
        # known): a removed position of the result is known only if it does not depend on them,
        # which a second evaluation with random values there tells (x * rsqrt(mean(x^2)) in an
        # RMSNorm depends on the live channels; a head's context softmax(s) @ 0 does not).
        probe = None if full or node.op_type in NORMS + WEIGHTED else self._probe_values(node)
        probed = evaluate(node, probe, shapes, out_shapes, self.opset) if probe is not None else None
        for index, (out, value) in enumerate(zip(node.output, outs)):
            value = self._apply_gate(node, out, value)
            self.val[out] = value
            if full:
                self.known[out] = True
                continue
            dead = self._dead_positions(out)
            if probed is not None and isinstance(dead, np.ndarray) and dead.any():
                shape = np.broadcast_shapes(value.shape, probed[index].shape, dead.shape)
                a, b = np.broadcast_to(value, shape), np.broadcast_to(probed[index], shape)
                with np.errstate(invalid="ignore"):
                    same = np.isclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True) if a.dtype.kind in "fc" else a == b
                dead = compress(np.broadcast_to(dead, shape) & same)
            self.known[out] = dead

    def _dead_positions(self, tensor: str) -> np.ndarray | bool:
        alive = self.alive(tensor)
        return False if alive is None else ~alive

    def _apply_gate(self, node, out: str, value: np.ndarray) -> np.ndarray:
        """A removed channel leaves a norm with its shift (beta) and a weighted op with its bias."""
        if node.op_type not in NORMS + WEIGHTED or out != node.output[0]:
            return value
        if node.op_type in WEIGHTED and not self.view.is_stored(weight_input(node) or ""):
            return value
        alive = self.alive(out)
        if alive is None or alive.all():
            return value
        shape = self.shapes[out]
        axis = output_channel_axis(node.op_type, len(shape))
        shift = np.zeros(shape[axis], dtype=np.float32)
        bias_index = bias_input(node.op_type)
        if bias_index is not None and len(node.input) > bias_index and node.input[bias_index]:
            bias = self.const(node.input[bias_index])
            if bias is not None and bias.size in (1, shape[axis]):
                shift = np.broadcast_to(bias.reshape(-1), shape[axis]).astype(np.float32)
        gate_shape = [1] * len(shape)
        gate_shape[axis] = shape[axis]
        shift = shift.reshape(gate_shape)
        target = np.broadcast_shapes(value.shape, alive.shape, shift.shape)
        full = np.where(np.broadcast_to(~alive, target), np.broadcast_to(shift, target), np.broadcast_to(value, target))
        return compress(full.astype(value.dtype))

    def _partial(self, node, name, outputs_dead) -> set[int]:
        """Some channels of the op's inputs or outputs are removed: track or fold their values."""
        revive: set[int] = set()
        if node.op_type in WEIGHTED and self.view.is_stored(weight_input(node) or ""):
            x = node.input[0]
            if self.has_dead(x) and not self.is_empty(node.output[0]):
                revive |= self._fold(node, name, x)
            if outputs_dead:
                zero = np.zeros([1] * len(self.shapes[node.output[0]]), dtype=np.float32)
                self.val[node.output[0]] = self._apply_gate(node, node.output[0], zero)
                self.known[node.output[0]] = self._dead_positions(node.output[0])
            return revive
        info = op_info(node.op_type, node.domain)
        if info is not None and info.reads_removed and computes_over_channels(self, node):
            # Its cutter adds the removed channels' values back (ops/statistics.py): they must be known.
            for tensor in node.input[:1]:
                revive |= self._revive_unknown(node, name, tensor, f"this {node.op_type} computes over")
        if node.op_type == "MatMul" and not outputs_dead:
            revive |= self._contracted(node, name)
        if not outputs_dead:
            # Removed input channels that vanish here (a reduction, a fixed op): nothing to carry.
            return revive
        self._evaluate(node, name, full=False)
        return revive

    def _fold(self, node, name, x: str) -> set[int]:
        """Fold the removed input channels' values into the op's output (its bias, or an added map)."""
        unknown = self._revive_unknown(node, name, x, f"this {node.op_type} reads")
        if unknown:
            return unknown
        dead = ~self.alive(x)
        value = self.val.get(x)
        if value is None:
            return set()
        shape = np.broadcast_shapes(value.shape, dead.shape)
        masked = np.where(np.broadcast_to(dead, shape), np.broadcast_to(value, shape), 0).astype(np.float32)
        if not masked.any():
            return set()
        inputs = [masked, self.const(node.input[1])]
        shapes = [self.shapes[x], inputs[1].shape]
        contribution = evaluate(_without_bias(node), inputs, shapes, [self.shapes[node.output[0]]], self.opset)[0]
        if not np.any(contribution):
            return set()
        out_ids = self.ids.get(node.output[0])
        channel_axes = {a for a in range(out_ids.ndim) if out_ids.shape[a] > 1} if out_ids is not None else set()
        channel_axes |= {1} if node.op_type in ("Conv", "ConvTranspose") else {len(self.shapes[node.output[0]]) - 1}
        uniform = all(contribution.shape[a] == 1 for a in range(contribution.ndim) if a not in channel_axes)
        if uniform:
            self.folds[name] = contribution
            return set()
        if self.approximate_borders:
            # The interior value is exact away from the padded borders.
            center = tuple(size // 2 if a not in channel_axes else slice(None)
                           for a, size in enumerate(contribution.shape))
            interior = contribution[center]
            self.folds[name] = interior.reshape([s if a in channel_axes else 1
                                                 for a, s in enumerate(contribution.shape)])
            self.approximated.append(name)
            return set()
        # Zero padding makes the removed channels' contribution differ at the borders: no bias can
        # hold it, so those channels stay (exactness first; retraining can still remove them).
        revive = set(np.unique(np.broadcast_to(self.analysis.tensor_ids[x], dead.shape)[dead]).tolist())
        self.notes.append(f"{name}: {len(revive)} removed input channel(s) hold a nonzero constant that this "
                          f"{node.op_type}'s padding makes vary over space; kept for exactness")
        return revive

    # ---- pass 2: rewrite ----------------------------------------------------------------------
    def rewrite(self) -> tuple[onnx.ModelProto, list[str]]:
        rw = Rewrite(self)
        removed = []
        for node, name in zip(self.graph.node, self.names):
            if node.op_type in ("Constant", "ConstantOfShape") and self.view.is_stored(node.output[0]):
                rw.keep_node(node)
                continue
            outputs = [o for o in node.output if o]
            gone = outputs and all(self.is_empty(o) or self.fully_known(o) for o in outputs)
            if gone and not any(o in self.graph_outputs for o in outputs):
                removed.append(name)
                continue
            new = onnx.NodeProto()
            new.CopyFrom(node)
            if not self._substitute_known_inputs(new, name, rw):
                raise MorphNetError(f"internal: {name} ({node.op_type}) would read a removed branch")
            info = op_info(node.op_type, node.domain)
            (info.cut if info else cut_nothing)(rw, new, name)
            rw.keep_node(new)
            if name in self.folds:
                rw.add_to_output(new, name, self.folds[name])
        return rw.finish(), removed

    def _substitute_known_inputs(self, node, name, rw) -> bool:
        """Inputs from removed branches: dropped from a Concat, a constant in broadcasting ops."""
        keep_inputs = []
        for index, tensor in enumerate(node.input):
            if not tensor or self.view.is_stored(tensor) or tensor not in self.known or not self.fully_known(tensor):
                keep_inputs.append(tensor)
                continue
            if self.is_empty(tensor):
                if node.op_type == "Concat":
                    continue
                if node.op_type in SHAPE_READERS:
                    keep_inputs.append(tensor)
                    continue
                return False
            if node.op_type not in BROADCASTING:
                return False
            value = rw.slice_value(tensor, self.val[tensor])
            if not self.static_spatial and any(size > 1 for size in value.shape[2:]):
                raise MorphNetError(f"a removed branch leaves a constant that varies over space at {name}; "
                                    f"export the model with static input shapes to prune it exactly")
            keep_inputs.append(rw.add_constant(f"{tensor}__const", value))
        del node.input[:]
        node.input.extend(keep_inputs)
        return True


def _without_bias(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(copy.input) > 2:
        del copy.input[2:]
    return copy


def apply_structure(loaded: LoadedModel, analysis: Analysis, structure: Structure,
                    approximate_borders: bool = False, approximate_norms: bool = False) -> SurgeryResult:
    """Write the smaller model for `structure` (the input model is not modified).

    Removed channels holding a nonzero constant that a padded conv turns into a border pattern are
    kept for exactness, unless `approximate_borders` folds their interior value into the bias.
    LayerNorms and means over the channels are written out with the removed channels' values added
    back, exact, unless `approximate_norms` keeps each op over the kept channels (ops/statistics.py).
    """
    surgeon = Surgeon(loaded, analysis, structure, approximate_borders, approximate_norms=approximate_norms)
    problems = surgeon.structural_problems()
    if problems:  # a structure given by hand; the method's own are repaired (feasibility.py)
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MorphNetError(f"the structure cannot be cut out: {problems[0]}{more}; keep a channel in some "
                            f"branch of every Concat, and channels on both sides of every split")
    for _ in range(8):
        surgeon.set_alive(surgeon.structure)
        surgeon.approximated = []
        revive = surgeon.follow_values()
        if not revive:
            break
        for element in revive:
            group, channel = analysis.element_group[element], analysis.element_channel[element]
            surgeon.structure.alive[int(group)][int(channel)] = True
    else:
        raise MorphNetError("internal: channels kept for exactness did not settle")
    model, removed = surgeon.rewrite()
    notes = surgeon.notes
    if approximated := sorted(set(surgeon.approximated)):
        shown = ", ".join(approximated[:5]) + (f" and {len(approximated) - 5} more" if len(approximated) > 5 else "")
        notes.append(f"approximated at the borders (interior value folded into the bias): {shown}")
    return SurgeryResult(model=model, structure=surgeon.structure, notes=notes, removed_ops=removed)
