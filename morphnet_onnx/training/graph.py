"""The training graph: what onnxruntime-training gets instead of the user's model.

- every input static at the training batch size (a symbolic batch crashes AveragePool's gradient),
  and an export's fixed batch made the training batch wherever a shape carries it (rebatch.py);
- BatchNormalization in training mode (batch statistics, 3 outputs), running stats frozen;
- only real parameters trainable: weights and biases of Conv/ConvTranspose/Gemm/MatMul (a MatMul's
  bias is the vector an Add puts on its output: torch's exporters write a Linear on inputs of rank 3
  or more so, every Linear of a transformer), norm scales and shifts, PRelu slopes, embedding
  tables, a transformer's position table and class token; every other initializer frozen;
- an initializer shared by several trained ops copied apart (onnxruntime fails with "Duplicate
  definition of ..._grad" otherwise); the first copy's trained value is written back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import inliner, numpy_helper, version_converter

from ..cost.resources import FLOAT_TYPES
from ..errors import MorphNetError, first_line
from ..graph_utils import drop_dead_nodes, graph_input_names
from ..loading.external import inline_weights
from ..loading.folding import QUANTIZATION
from ..loading.model import LoadedModel
from ..ops import TRAINABLE_INPUTS
from .rebatch import at_batch
from .rewrites import rewrite_for_training, verify_rewrites

# BN's training mode (3 outputs) exists from opset 14.
MIN_TRAINING_OPSET = 15


@dataclass
class TrainingGraph:
    model: onnx.ModelProto
    trainable: list[str]
    frozen: list[str]
    copies: dict[str, str] = field(default_factory=dict)  # untied copy -> original initializer
    rewritten: list[str] = field(default_factory=list)  # ops replaced by differentiable equivalents


# onnxruntime-training 1.19 aborts the process (no Python error) building gradients through these.
CONTROL_FLOW = {"If", "Loop", "Scan"}


def check_trainable(loaded: LoadedModel) -> None:
    """Ops onnxruntime-training cannot train: refused here, in one line naming the model."""
    ops = {n.op_type for n in loaded.model.graph.node}
    quantized = sorted(op for op in ops if op in QUANTIZATION or op.startswith("QLinear") or op.endswith("Integer"))
    if quantized:  # no gradients for them (onnxruntime-training's own error names no model)
        raise MorphNetError(f"{loaded.name}: quantized ops ({', '.join(quantized)}) cannot be trained; train and "
                            f"shrink the float model, then quantize the result")
    control = sorted(ops & CONTROL_FLOW)
    if control:
        raise MorphNetError(f"{loaded.name}: control flow ({', '.join(control)}) cannot be trained with "
                            f"onnxruntime-training; inspect, check, prune and expand work on this model")


def training_graph(loaded: LoadedModel, batch: int) -> TrainingGraph:
    check_trainable(loaded)
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    inline_weights(model)  # a model loaded with external data keeps its weights on disk until here
    opset = loaded.opset
    if opset < MIN_TRAINING_OPSET:
        try:
            model = version_converter.convert_version(model, MIN_TRAINING_OPSET)
        except Exception as exc:
            raise MorphNetError(f"{loaded.name}: cannot upgrade opset {opset} to {MIN_TRAINING_OPSET} for "
                                f"training ({first_line(exc)})") from exc
    if model.functions:  # onnxruntime-training has no gradient for a call of a model-local function
        model = inliner.inline_local_functions(model)
    constants_to_initializers(model.graph)
    drop_dead_nodes(model.graph)  # leftovers of folded constants (NF-ResNet's weight standardization)
    model = at_batch(model, loaded.model, loaded.shapes, loaded.name, batch)  # an export's fixed batch
    graph = model.graph
    real_inputs = set(graph_input_names(model))
    for value in graph.input:
        if value.name in real_inputs:
            dims = list(loaded.shapes[value.name])
            dims[0] = batch
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for d in dims:
                shape.dim.add().dim_value = d
    # Only float tensors train (a Gather's input 0 is an embedding table, or integer shape data).
    inits = {t.name for t in graph.initializer if t.data_type in FLOAT_TYPES}
    del graph.value_info[:]
    for output in graph.output:
        output.type.tensor_type.ClearField("shape")
    # Outputs get their static shapes at the training batch size (the checker wants shapes).
    inferred = onnx.shape_inference.infer_shapes(model)
    typed = {v.name: v for v in inferred.graph.output}
    for output in graph.output:
        if output.name in typed and typed[output.name].type.tensor_type.HasField("shape"):
            output.CopyFrom(typed[output.name])
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            for a in list(node.attribute):
                if a.name in ("training_mode", "spatial"):
                    node.attribute.remove(a)
            node.attribute.append(onnx.helper.make_attribute("training_mode", 1))
            del node.output[1:]
            node.output.extend([f"{node.output[0]}__batch_mean", f"{node.output[0]}__batch_var"])
    trainable: list[str] = []
    copies: dict[str, str] = {}
    used: set[str] = set()
    for node, index in trainable_slots(graph):
        name = node.input[index]
        if name not in inits:
            continue
        if name in used:
            copy = f"{name}__untied{len(copies) + 1}"
            source = next(t for t in graph.initializer if t.name == name)
            tensor = onnx.TensorProto()
            tensor.CopyFrom(source)
            tensor.name = copy
            graph.initializer.append(tensor)
            node.input[index] = copy
            copies[copy] = name
            name = copy
        used.add(name)
        if name not in trainable:
            trainable.append(name)
    # Rewrites come last: the trainable set is decided on the user's ops (an InstanceNormalization
    # scale stays trainable when the op becomes ReduceMean/Div/Mul).
    rewritten = _rewrite_verified(model, loaded, batch)
    # Frozen initializers read by several ops are fine; trainable ones are now single-use.
    frozen = [t.name for t in graph.initializer if t.name not in set(trainable)]
    return TrainingGraph(model=model, trainable=trainable, frozen=frozen, copies=copies, rewritten=rewritten)


def _rewrite_verified(model: onnx.ModelProto, loaded: LoadedModel, batch: int) -> list[str]:
    """Apply the differentiable rewrites in place and check the forward pass is unchanged."""
    before = onnx.ModelProto()
    before.CopyFrom(model)
    rewritten = rewrite_for_training(model, loaded.shapes, loaded.dtypes)
    if rewritten:
        error = verify_rewrites(before, model, loaded.shapes, batch=batch)
        if error > 1e-4:
            raise MorphNetError(f"{loaded.name}: internal: the differentiable rewrite of {', '.join(rewritten)} "
                                f"changes the outputs (relative difference {error:.2g})")
    return rewritten


def trainable_slots(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, int]]:
    """(node, input index) of every parameter slot, in node order: the slots of ops.TRAINABLE_INPUTS,
    the bias of each MatMul + Add (linear_bias_slot) and a transformer's token tables
    (token_table_slots)."""
    producer = {out: node for node in graph.node for out in node.output}
    inits = {t.name: t for t in graph.initializer}
    slots = []
    for node in graph.node:
        own = [i for i in TRAINABLE_INPUTS.get(node.op_type, ()) if i < len(node.input)]
        bias = linear_bias_slot(node, producer, inits)
        own += [bias] if bias is not None else []
        # a slot listed twice would be untied from itself (a (1, 1, C) bias is also a token table)
        own += [i for i in token_table_slots(node, inits) if i not in own]
        slots += [(node, i) for i in own]
    return slots


def linear_bias_slot(node: onnx.NodeProto, producer: dict[str, onnx.NodeProto],
                     inits: dict[str, onnx.TensorProto]) -> int | None:
    """The input of an Add that is a Linear layer's bias: an initializer of shape (C,) (or ones before
    it) added to a MatMul by an initializer weight with C output columns. Anything else an Add reads
    (a position table, a mask, a constant of a formula) is not a bias."""
    if node.op_type != "Add" or len(node.input) != 2:
        return None
    for index in (0, 1):
        matmul = producer.get(node.input[1 - index])
        if matmul is None or matmul.op_type != "MatMul" or node.input[index] not in inits or len(matmul.input) < 2:
            continue
        bias = tuple(inits[node.input[index]].dims)
        weight = tuple(inits[matmul.input[1]].dims) if matmul.input[1] in inits else None
        if weight and len(weight) == 2 and bias and all(d == 1 for d in bias[:-1]) and bias[-1] == weight[-1]:
            return index
    return None


# A token table's values are small: an additive mask (-inf, -1e4, -1e9) is no parameter.
TABLE_MAX_ABS = 100.0


def token_table_slots(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[int]:
    """The inputs of an Add or Concat that are a transformer's learned token tables: a position table
    added to the tokens or a class token concatenated to them, a float initializer of shape (1, T, C)
    beside a computed tensor of rank 3 (timm's and torch's `pos_embed`, `cls_token`), with finite
    values below TABLE_MAX_ABS. A fixed table a user wrote as a constant trains too."""
    if node.op_type not in ("Add", "Concat") or len(node.input) < 2:
        return []
    if all(not name or name in inits for name in node.input):  # nothing computed beside the tables
        return []
    slots = []
    for index, name in enumerate(node.input):
        shape = tuple(inits[name].dims) if name in inits else None
        if shape is None or len(shape) != 3 or shape[0] != 1 or shape[-1] < 2:
            continue
        table = numpy_helper.to_array(inits[name]) if inits[name].data_type in FLOAT_TYPES else None
        if table is not None and np.all(np.isfinite(table)) and np.max(np.abs(table)) < TABLE_MAX_ABS:
            slots.append(index)
    return slots


def constants_to_initializers(graph: onnx.GraphProto, *slot_tables: dict[str, tuple[int, ...]]) -> None:
    """Weights held by Constant nodes (folded or placeholder weights) become initializers, which a
    backend can train; the node order is otherwise kept. Slots: TRAINABLE_INPUTS unless given."""
    tables = slot_tables or (TRAINABLE_INPUTS,)
    slots = {node.input[i] for node in graph.node for table in tables for i in table.get(node.op_type, ())
             if i < len(node.input)}
    keep = []
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in slots and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)

