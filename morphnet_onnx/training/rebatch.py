"""Graphs made batch-generic: exports that fix the batch train at any batch size.

torch's default exporter (dynamo, since torch 2.9) writes static shapes unless it is given
`dynamic_shapes`: the input's batch is fixed (at 1, say), and so are the shape constants that carry
it: a `view(1, 512)` becomes a Reshape to [1, 512], a class token expanded to the batch becomes a
constant of batch 1 concatenated with the patches. Such a model runs at its batch only. Training
(and measuring batch statistics, and evaluating) at batch B needs a graph whose every batch-carrying
shape says B: `rebatch` finds them by tracing the batch through the graph with onnx's shape
inference, at a batch no other dim has (TRACE), and rewrites

- a Reshape whose input carries the batch and whose constant target lost it: the target dim where the
  batch starts (the first whose leading dims hold as many elements as the input's dims before the
  batch's) is multiplied by B / the export's batch;
- a Concat of tensors that carry the batch with ones that hold the export's batch on that axis (a
  class token, a constant of zeros), or a GatherElements whose indices carry it picking from such a
  tensor (RoBERTa's token types): those are expanded to B first;
- a Gather or GatherND that picks from a tensor carrying the batch and loses it, where a constant
  among its indices (or the arithmetic that makes them) holds the example numbers of the export's
  batch, arange(1) along an axis of 1 (transformers' attention mask, built by indexing the padding
  mask): that constant is made to hold arange(B).

What is written for the user keeps the user's static shapes: only the graphs that train, measure
and evaluate are rebatched. `check_rebatched` compares the rebatched graph with the user's graph,
example by example, so a pattern the rewrite does not know is a one-line error naming the node, not
a wrong model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from ..errors import MorphNetError
from ..graph_utils import fixed_batch, graph_input_names
from ..loading.runtime import make_session, random_feeds
from ..loading.shapes import skeleton

# The batch the tracing runs at: a prime no real dim is a multiple of.
TRACE = 9973


@dataclass
class Rebatched:
    model: onnx.ModelProto
    changes: list[str]  # what was rewritten, for messages ("Reshape node_view: [1, 512] -> [B, 512]")


def rebatch(model: onnx.ModelProto, batch: int) -> Rebatched:
    """A copy of `model` whose inputs take `batch` examples, with the shape constants that carry the
    export's fixed batch rewritten; the model itself when its batch is symbolic."""
    fixed = fixed_batch(model)
    if fixed is None:
        return Rebatched(model, [])
    plan: list[tuple] = []
    for _ in range(len(model.graph.node) + 1):
        traced, origin = _apply(model, TRACE, plan)
        step = _next_fix(traced, origin, fixed)
        if step is None or any(done[:3] == step[:3] for done in plan):  # nothing left, or a fix that did not hold
            break
        plan.append(step)
    out, _ = _apply(model, batch, plan)
    return Rebatched(out, [_describe(model, step, fixed) for step in plan])


def check_rebatched(original: onnx.ModelProto, shapes: dict, name: str, batch: int = 2) -> None:
    """The rebatched graph computes, example by example, what the user's graph computes at its fixed
    batch; MorphNetError naming what could not be rebatched otherwise."""
    fixed = fixed_batch(original)
    if fixed is None:
        return
    wide = rebatch(original, fixed * batch)
    feeds = random_feeds(original, shapes, fixed * batch, seed=0)
    try:
        got = make_session(wide.model).run(None, feeds)
    except Exception as exc:
        raise _refusal(name, original, fixed, wide, str(exc)) from exc
    expected = [np.concatenate(parts) for parts in zip(*(
        make_session(original).run(None, {k: v[i * fixed:(i + 1) * fixed] for k, v in feeds.items()})
        for i in range(batch)))]
    for a, b in zip(got, expected):
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-3, atol=1e-4):
            raise _refusal(name, original, fixed, wide, "the outputs differ between examples")


def at_batch(model: onnx.ModelProto, loaded_model: onnx.ModelProto, shapes: dict, name: str,
             batch: int) -> onnx.ModelProto:
    """`model` (the user's `loaded_model`, or a graph made from it) rebatched to `batch`, after
    `check_rebatched` proved the rewrite on the user's model; `model` itself when it takes any batch
    or already this one."""
    fixed = fixed_batch(loaded_model)
    if fixed is None or fixed == batch:
        return model
    check_rebatched(loaded_model, shapes, name)
    return rebatch(model, batch).model


def _refusal(name: str, model: onnx.ModelProto, fixed: int, wide: Rebatched, why: str) -> MorphNetError:
    first = next((n for n in model.graph.node if n.op_type in ("Reshape", "Expand", "Concat", "ConstantOfShape")),
                 None)
    where = f" (e.g. {first.op_type} {first.name!r})" if first is not None and not wide.changes else ""
    return MorphNetError(
        f"{name}: the export fixes the batch at {fixed}{where} and it could not be made batch-generic "
        f"({why.splitlines()[0][:160]}); re-export with dynamic_shapes={{'x': {{0: torch.export.Dim('batch')}}}} "
        f"(or dynamo=False with dynamic_axes), or train with --batch-size {fixed}")


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    inferred = shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=True)
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = value.type.tensor_type
        if tt.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    return shapes


def _carries(shape: tuple[int, ...] | None) -> int | None:
    """The axis that holds the traced batch (alone or merged with other dims), or None."""
    for axis, dim in enumerate(shape or ()):
        if dim > 0 and dim % TRACE == 0:
            return axis
    return None


def _next_fix(traced: onnx.ModelProto, origin: list[int | None], fixed: int) -> tuple | None:
    """The first node, in graph order, where the traced batch is lost: ("reshape", node index, dim,
    the target at the export's batch), ("expand", node index, input slot, axis, the input's shape: a
    Concat's or a GatherElements' input) or ("index", ...: `_index_fix`)."""
    shapes = _shapes(traced)
    for node, index in zip(traced.graph.node, origin):
        if index is None:  # an Expand this rewrite inserted
            continue
        if node.op_type == "Reshape":
            source = shapes.get(node.input[0])
            axis = _carries(source)
            target = _constant(traced, node.input[1])
            if axis is None or target is None or -1 in source:
                continue
            kept = _carries(shapes.get(node.output[0]))
            # A batch that lands on the target's -1 is lost too: [1, 17, -1, 16] at batch B makes B x 4
            # heads (transformers' attention reshapes, written at the export's batch).
            if kept is not None and not (kept < len(target) and target.reshape(-1)[kept] == -1):
                continue
            dims = _resolved(target, source, fixed)
            before = int(np.prod(source[:axis]))
            for k in range(len(dims)):
                if int(np.prod(dims[:k])) == before and dims[k] % fixed == 0:
                    return ("reshape", index, k, dims)
        elif node.op_type == "GatherElements":
            # indices that carry the batch pick from a constant the export wrote at its batch (RoBERTa's
            # token types, a buffer expanded to the batch): the constant is expanded to B first
            data, picks = shapes.get(node.input[0]), shapes.get(node.input[1])
            axis = _carries(picks)
            gather_axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if (axis is not None and data is not None and -1 not in data and _carries(data) is None
                    and data[axis] == fixed and gather_axis % len(data) != axis):
                return ("expand", index, 0, axis, list(data))
        elif node.op_type in ("Gather", "GatherND"):
            step = _index_fix(traced, origin, shapes, node, index, fixed)
            if step is not None:
                return step
        elif node.op_type == "Concat":
            ins = [shapes.get(i) for i in node.input]
            if any(s is None or -1 in s for s in ins):
                continue
            rank = len(ins[0])
            concat_axis = next(a.i for a in node.attribute if a.name == "axis") % rank
            axes = {_carries(s) for s in ins} - {None}
            if len(axes) != 1 or concat_axis in axes:
                continue
            (axis,) = axes
            for slot, s in enumerate(ins):
                if _carries(s) is None and s[axis] == fixed:
                    return ("expand", index, slot, axis, list(s))
    return None


# Ops between a Gather's indices and a constant that holds the batch index (index arithmetic).
INDEX_ARITHMETIC = ("Add", "Sub", "Mul", "Cast")


def _index_fix(traced: onnx.ModelProto, origin: list[int | None], shapes: dict, node: onnx.NodeProto, index: int,
               fixed: int) -> tuple | None:
    """("index", node index in the user's graph, input slot, axis, component, the constant) for the
    constant that holds the example numbers of a Gather/GatherND which loses the batch it picks from;
    component: which index component holds them (GatherND), None where the whole constant does."""
    axis = _carries(shapes.get(node.input[0]))
    if axis is None or _carries(shapes.get(node.output[0])) is not None:
        return None
    if node.op_type == "GatherND":
        indices = _constant(traced, node.input[1])
        if indices is None or indices.ndim < 2 or axis >= indices.shape[-1] or any(
                a.name == "batch_dims" and a.i for a in node.attribute):
            return None
        along = _example_axis(indices[..., axis], fixed)
        return None if along is None else ("index", index, 1, along, axis, indices)
    rank = len(shapes[node.input[0]])
    if next((a.i for a in node.attribute if a.name == "axis"), 0) % rank != axis:
        return None
    producers = {out: (number, n) for number, n in zip(origin, traced.graph.node) if number is not None
                 for out in n.output}
    pending, seen = [node.input[1]], set()
    while pending:
        name = pending.pop()
        if name in seen or name not in producers:
            continue
        seen.add(name)
        number, producer = producers[name]
        if producer.op_type not in INDEX_ARITHMETIC:
            continue
        for slot, value in enumerate(producer.input):
            constant = _constant(traced, value)
            if constant is None:
                pending.append(value)
            elif constant.dtype.kind in "iu" and (along := _example_axis(constant, fixed)) is not None:
                return ("index", number, slot, along, None, constant)
    return None


def _example_axis(values: np.ndarray, fixed: int) -> int | None:
    """The first axis of `values` of length `fixed` along which they count the examples 0..fixed-1."""
    for axis, length in enumerate(values.shape):
        shape = [1] * values.ndim
        shape[axis] = fixed
        if length == fixed and np.array_equal(values, np.broadcast_to(np.arange(fixed).reshape(shape), values.shape)):
            return axis
    return None


def _examples_at(step: tuple, batch: int) -> np.ndarray:
    """The constant of an "index" step, counting `batch` examples along its axis."""
    _, _, _, axis, component, constant = step
    first = np.take(constant, [0], axis=axis)
    values = np.repeat(first, batch, axis=axis)
    shape = [1] * values.ndim
    shape[axis] = batch
    count = np.arange(batch).reshape(shape)
    if component is None:
        return np.broadcast_to(count, values.shape).astype(constant.dtype)
    values[..., component] = np.broadcast_to(count[..., 0], values.shape[:-1])
    return values


def _resolved(target: np.ndarray, source: tuple[int, ...], fixed: int) -> list[int]:
    """The Reshape target with 0 (copy) and -1 (infer) resolved at the export's batch."""
    at_fixed = [d // TRACE * fixed if d % TRACE == 0 else d for d in source]
    dims = [int(at_fixed[i]) if d == 0 else int(d) for i, d in enumerate(target)]
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1]))
        dims[dims.index(-1)] = int(np.prod(at_fixed)) // known
    return dims


def _apply(model: onnx.ModelProto, batch: int, plan: list[tuple]) -> tuple[onnx.ModelProto, list[int | None]]:
    """A copy of `model` at `batch` with every fix of `plan` made for it, and for each of its nodes
    the index of the node it was in `model` (None for an inserted Expand)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    fixed = fixed_batch(model)
    real = set(graph_input_names(out))
    for value in graph.input:
        if value.name in real and value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[0].dim_value = batch
    del graph.value_info[:]
    for output in graph.output:
        output.type.tensor_type.ClearField("shape")
    inserted = {}
    for number, step in enumerate(plan):
        node = graph.node[step[1]]
        if step[0] == "index":
            name = f"{node.input[step[2]]}__batch{number}"
            graph.initializer.append(numpy_helper.from_array(_examples_at(step, batch), name))
            node.input[step[2]] = name
            continue
        dims = list(step[-1])
        if step[0] == "reshape":
            dims[step[2]] = dims[step[2]] // fixed * batch
            name = f"{node.input[1]}__batch{number}"
            graph.initializer.append(numpy_helper.from_array(np.array(dims, dtype=np.int64), name))
            node.input[1] = name
        else:
            _, _, slot, axis, _ = step
            dims[axis] = batch
            shape_name, expanded = f"{node.input[slot]}__batch_shape{number}", f"{node.input[slot]}__batch{number}"
            graph.initializer.append(numpy_helper.from_array(np.array(dims, dtype=np.int64), shape_name))
            inserted[step[1]] = inserted.get(step[1], []) + [onnx.helper.make_node(
                "Expand", [node.input[slot], shape_name], [expanded], name=f"{node.name}__batch{number}")]
            node.input[slot] = expanded
    nodes, origin = [], []
    for index, node in enumerate(graph.node):
        for new in inserted.get(index, []):
            nodes.append(new)
            origin.append(None)
        nodes.append(node)
        origin.append(index)
    del graph.node[:]
    graph.node.extend(nodes)
    return out, origin


def _describe(model: onnx.ModelProto, step: tuple, fixed: int) -> str:
    node = model.graph.node[step[1]]
    if step[0] == "reshape":
        return f"Reshape {node.name!r}: dim {step[2]} of its target carries the batch"
    if step[0] == "index":
        return f"{node.op_type} {node.name!r}: input {node.input[step[2]]!r} counts the examples of the batch"
    return f"{node.op_type} {node.name!r}: input {node.input[step[2]]!r} expanded from batch {fixed} to the batch"
