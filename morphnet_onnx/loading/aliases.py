"""Loading: constants an exporter shares between layers given tensors of their own.

torch's exporters deduplicate equal initializers: the TorchScript exporter reads them through
`Identity` nodes (every untrained BatchNormalization of one width then reads one tensor), the dynamo
exporter hands the same tensor to every layer (every untrained LayerNorm of a transformer reads
blocks.0.ln1.weight). Training and surgery need each layer's parameters apart, under the user's names.
"""

from __future__ import annotations

import onnx

from ..ops import LAYER_PARAMETER_SLOTS


def resolve_constant_aliases(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Give every alias of a constant its own initializer; return the model and the count resolved.

    torch's exporter deduplicates initializers with equal values: in an untrained network every
    BatchNormalization of one width has the same scale, shift and statistics, so all but one read
    the kept tensor through `Identity` nodes named like the user's parameters. Each stage that
    trains, re-measures or cuts a norm's parameters must see that norm's own tensor, so here
    `Identity` chains over initializers (or Constant nodes) become initializers under the
    Identity's output name, and a layer's own parameter (ops' `layer_slots`: norm parameters, biases)
    that several layers read directly is copied apart (`<name>__<k>`). Weights stay shared: a weight
    two layers read is tied on purpose (a language model's embedding and output head). The caller's
    model is never changed: a copy is returned when anything moved.
    """
    aliases = _identity_aliases(model.graph)
    shared = _shared_layer_parameters(model.graph, set(aliases))
    if not aliases and not shared:
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    sources = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.attribute and node.attribute[0].name == "value":
            sources.setdefault(node.output[0], node.attribute[0].t)
    added: list[onnx.TensorProto] = []
    for output, source in aliases.items():
        tensor = onnx.TensorProto()
        tensor.CopyFrom(sources[source])
        tensor.name = output
        added.append(tensor)
    graph_outputs = {o.name for o in graph.output}
    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in aliases)]
    del graph.node[:]
    graph.node.extend(keep)
    taken = set(sources) | set(aliases) | {o for n in graph.node for o in n.output} | graph_outputs
    readers: dict[str, int] = {}
    for node in graph.node:
        for slot in LAYER_PARAMETER_SLOTS.get(node.op_type, ()):
            name = node.input[slot] if slot < len(node.input) else ""
            if name not in shared:
                continue
            readers[name] = readers.get(name, 0) + 1
            if readers[name] == 1:
                continue  # the first reader keeps the user's tensor
            copy_name = _fresh_name(f"{name}__{readers[name]}", taken)
            tensor = onnx.TensorProto()
            tensor.CopyFrom(sources[name] if name in sources else next(t for t in added if t.name == name))
            tensor.name = copy_name
            added.append(tensor)
            node.input[slot] = copy_name
    graph.initializer.extend(added)
    if out.ir_version < 4:  # IR 3 wants every initializer among the graph inputs
        graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in added)
    return out, len(aliases) + sum(count - 1 for count in readers.values())


def _identity_aliases(graph: onnx.GraphProto) -> dict[str, str]:
    """{Identity output: the initializer or Constant it finally reads}, for Identity chains over constants."""
    constants = _constant_names(graph)
    outputs = {o.name for o in graph.output}
    aliases: dict[str, str] = {}
    for node in graph.node:  # topological order: a chain's links come in order
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            continue
        source = node.input[0]
        source = aliases.get(source, source)
        if source in constants:
            aliases[node.output[0]] = source
    return aliases


def _shared_layer_parameters(graph: onnx.GraphProto, aliases: set[str]) -> set[str]:
    """Constants read as a layer's own parameter (a norm's scale, shift, statistics; a bias) by more
    than one layer (an alias counts as its own tensor)."""
    constants = _constant_names(graph) | aliases
    seen: dict[str, int] = {}
    for node in graph.node:
        for slot in LAYER_PARAMETER_SLOTS.get(node.op_type, ()):
            name = node.input[slot] if slot < len(node.input) else ""
            if name in constants:
                seen[name] = seen.get(name, 0) + 1
    return {name for name, count in seen.items() if count > 1}


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names |= {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output and n.attribute
              and n.attribute[0].name == "value"}
    return names


def _fresh_name(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate
