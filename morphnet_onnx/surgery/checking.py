"""`check`: prove on random data that surgery is exact for a model, before any training.

Zero the gates of a random fraction of every prunable group's channels, prune them, and compare the
outputs of the two models in onnxruntime.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..analysis.gates import gate_ops
from ..analysis.groups import Analysis
from ..analysis.walk import analyze
from ..cost.resources import compute_costs
from ..errors import MorphNetError, first_line
from ..graph_utils import graph_input_names
from ..loading.external import make_tensor, spill_for
from ..loading.model import LoadedModel, load
from ..loading.runtime import make_session, random_feeds
from ..loading.shapes import InputShapes
from ..ops import WEIGHTED, bias_input, weight_from_rows, weight_layout, weight_rows
from .apply import Surgeon
from .feasibility import repair_structure, vanishable_groups
from .pruning import prepare, prune_loaded, verify_model
from .structure import Structure


@dataclass
class CheckResult:
    passed: bool
    prunable_flops_share: float
    flops_before: float
    flops_after: float
    params_before: int
    params_after: int
    max_error: float  # worst |difference| / (atol + rtol |reference|), <= 1 passes
    groups_pruned: int
    groups_removed: int  # groups that lost every channel (branches removed)
    seconds: float
    notes: list[str] = field(default_factory=list)
    tensors_compared: int = 0  # outputs and intermediate tensors both models compute
    worst_tensor: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def random_structure(loaded: LoadedModel, analysis: Analysis, fraction: float, seed: int) -> Structure:
    """The Structure `check` prunes: `fraction` of every prunable group's channels removed at random
    (seed), a group emptied only at fraction 1 and where it may vanish, then repaired to what surgery can
    apply exactly."""
    rng = np.random.default_rng(seed)
    structure = Structure.full(analysis)
    vanish = vanishable_groups(loaded, analysis) if fraction >= 1.0 else set()
    for group in analysis.prunable_groups:
        count = int(round(fraction * group.width))
        if group.id not in vanish:
            count = min(count, group.width - 1)
        dead = rng.choice(group.width, size=count, replace=False)
        structure.alive[group.id][dead] = False
    return repair_structure(loaded, analysis, structure)


def zero_gates(model: onnx.ModelProto, loaded: LoadedModel, analysis: Analysis, structure: Structure) -> onnx.ModelProto:
    """A copy of the model where every removed channel's gates (norm scale and shift, or filter and
    bias of the ops writing it) are zero; shared initializers are copied apart first."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    alive_el = structure.element_alive(analysis)
    copy = LoadedModel(model=out, path=loaded.path, shapes=loaded.shapes, dtypes=loaded.dtypes)
    constants = copy.view
    spill = spill_for(model)
    counter = 0
    for node, name, positions in list(gate_ops(analysis, copy)):
        dead = ~alive_el[positions]
        if not dead.any():
            continue
        if node.op_type in WEIGHTED and (len(node.input) < 2 or not constants.is_stored(node.input[1])):
            continue
        bias = bias_input(node.op_type)
        slots = [1] if bias is None else [1, bias]  # the scale (or filter rows) and the shift
        for slot in slots:
            if slot >= len(node.input) or not node.input[slot]:
                continue
            source = node.input[slot]
            if not constants.is_stored(source):
                continue
            value = constants.value(source).copy()
            if node.op_type in WEIGHTED and slot == 1:
                layout = weight_layout(node, {source: value})
                rows = weight_rows(layout, value)
                rows[dead] = 0
                value = weight_from_rows(layout, rows, value.shape)
            elif value.size == len(dead):
                value = value.reshape(-1)
                value[dead] = 0
            else:
                continue
            counter += 1
            new_name = f"{source}__gated{counter}"
            out.graph.initializer.append(make_tensor(value, new_name, spill))
            node.input[slot] = new_name
    return out


def check(model: str | os.PathLike | onnx.ModelProto, fraction: float = 0.5, seed: int = 0,
          input_shapes: InputShapes | None = None, keep: list[str] | None = None,
          atol: float = 1e-4, rtol: float = 1e-3) -> CheckResult:
    """Zero a random `fraction` of every prunable group's channels, prune them, compare outputs.

    >>> check("resnet50.onnx").passed       # doctest: +SKIP
    True
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise MorphNetError(f"--fraction {fraction}: must be between 0 and 1")
    start = time.perf_counter()
    loaded, analysis = prepare(model, input_shapes, keep, seed=seed)
    if not analysis.prunable_groups:
        raise MorphNetError(f"{loaded.name}: nothing to prune (no prunable channel group; see `inspect`)")
    structure = random_structure(loaded, analysis, fraction, seed)
    gated = zero_gates(loaded.model, loaded, analysis, structure)
    gated_loaded = LoadedModel(model=gated, path=loaded.path, shapes=loaded.shapes, dtypes=loaded.dtypes,
                               upgraded_from=loaded.upgraded_from)
    result = prune_loaded(gated_loaded, analysis, structure)
    verify_model(result.model, "the pruned model")
    batch = check_batch(loaded)
    feeds = random_feeds(loaded.model, loaded.shapes, batch, seed)
    # Every tensor both models compute is compared, not just the outputs: in a randomly initialized
    # network the logits often no longer depend on the input, and an output-only check is blind.
    surgeon = Surgeon(gated_loaded, analysis, result.structure)
    tensors = _shared_tensors(gated, result.model, loaded)
    try:
        expected = dict(zip(tensors, make_session(_with_outputs(gated, tensors)).run(tensors, feeds)))
    except Exception as exc:  # the model as given does not run: the user's model, not the surgery
        raise MorphNetError(f"{loaded.name}: onnxruntime cannot run the model on random inputs "
                            f"({first_line(exc, 300)}); is it a valid model?") from exc
    got = dict(zip(tensors, make_session(_with_outputs(result.model, tensors)).run(tensors, feeds)))
    worst, worst_tensor = 0.0, ""
    for name in tensors:
        reference = expected[name]
        for axis, kept in surgeon.keep(name).items():
            reference = reference.take(kept, axis=axis)
        error = _error(got[name], reference, atol, rtol)
        if error > worst:
            worst, worst_tensor = error, name
    before = compute_costs(analysis, loaded)
    after_loaded = load(result.model, input_shapes)
    after = compute_costs(analyze(after_loaded), after_loaded)
    pruned = sum(1 for g in analysis.groups if not result.structure.alive[g.id].all())
    removed = sum(1 for g in analysis.groups if not result.structure.alive[g.id].any())
    return CheckResult(
        passed=bool(worst <= 1.0), prunable_flops_share=before.prunable_flops / before.flops if before.flops else 0.0,
        flops_before=before.flops, flops_after=after.flops, params_before=before.params, params_after=after.params,
        max_error=worst, groups_pruned=pruned, groups_removed=removed, seconds=time.perf_counter() - start,
        notes=result.notes + analysis.notes, tensors_compared=len(tensors), worst_tensor=worst_tensor)


def _shared_tensors(original: onnx.ModelProto, pruned: onnx.ModelProto, loaded: LoadedModel) -> list[str]:
    """Float tensors that both models compute under the same name (the pruned one keeps names) and
    that the model's outputs depend on: a side output nothing reads, such as the running statistics
    of a BatchNormalization exported in training mode (outputs 1 and 2), is not what the model
    computes."""
    produced = {o for n in original.graph.node for o in n.output}
    needed = _ancestors(original)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    names = [o for n in pruned.graph.node for o in n.output
             if o in produced and o in needed and loaded.dtypes.get(o) in floats and o in loaded.shapes]
    outputs = [o.name for o in pruned.graph.output]
    return list(dict.fromkeys(outputs + names))


def _ancestors(model: onnx.ModelProto) -> set[str]:
    """Every tensor the graph outputs are computed from (subgraphs' outer reads count as reads)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    needed: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is not None:
            stack.extend(i for i in node.input if i)
            stack.extend(_subgraph_reads(node))
    return needed


def _subgraph_reads(node: onnx.NodeProto) -> list[str]:
    """Names an If/Loop/Scan body reads (from the outer scope too)."""
    reads = []
    for a in node.attribute:
        for graph in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for inner in graph.node:
                reads.extend(i for i in inner.input if i)
                reads.extend(_subgraph_reads(inner))
    return reads


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    out.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    return out


def _error(got: np.ndarray, reference: np.ndarray, atol: float, rtol: float) -> float:
    """Worst |difference| as a fraction of atol x scale + rtol |reference| (scale: the tensor's max)."""
    if got.shape != reference.shape:
        return float("inf")
    if not reference.size:
        return 0.0
    scale = max(1.0, float(np.max(np.abs(reference))))
    err = np.abs(got.astype(np.float64) - reference) / (atol * scale + rtol * np.abs(reference))
    return float(np.max(err))


def check_batch(loaded: LoadedModel) -> int:
    """The batch `check` feeds: 2 when the first model input's batch dimension is symbolic, else the
    batch that input declares. models/tiny_resnet.onnx's input is ["batch", 3, 32, 32]:

    >>> check_batch(load("models/tiny_resnet.onnx"))   # doctest: +SKIP
    2
    """
    first = graph_input_names(loaded.model)[0]
    dims = next(i for i in loaded.model.graph.input if i.name == first).type.tensor_type.shape.dim
    symbolic = bool(dims) and not dims[0].HasField("dim_value")
    return 2 if symbolic else loaded.shapes[first][0]
