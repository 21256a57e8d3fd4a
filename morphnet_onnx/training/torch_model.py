"""The user's graph as a torch module, for the `torch` backend (torch_backend.py): the training
graph (Constant-held weights made initializers, the batch static, the logits, FiGS's gates) converted
by onnx2torch, and a map from each trainable initializer's ONNX name to the torch tensor that holds
it (Gemm's transposes undone), so that trained weights go back by name."""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import onnx
import torch  # this module is imported only for --backend torch
from torch import fx, nn

from ..errors import MorphNetError
from ..graph_utils import drop_dead_nodes, graph_input_names
from ..loading.external import inline_weights
from ..loading.model import LoadedModel
from ..method.figs import GatePlacement, insert_gates
from ..method.regularizers import GroupRegularizer
from ..ops import BUFFER_INPUTS, TRAINABLE_INPUTS
from .backend import logits_of
from .graph import constants_to_initializers
from .rebatch import at_batch

CONVERTER = "onnx2torch==1.5.15"  # what `pip install morphnet-onnx[torch]` installs, and was tested

# The attributes of torch modules that onnx2torch fills from an op's initializers, by input slot.
_MODULE_SLOTS: list[tuple[type, dict[int, str]]] = [
    (nn.modules.conv._ConvNd, {1: "weight", 2: "bias"}),
    (nn.modules.batchnorm._BatchNorm, {1: "weight", 2: "bias", 3: "running_mean", 4: "running_var"}),
    (nn.modules.instancenorm._InstanceNorm, {1: "weight", 2: "bias"}),
    (nn.LayerNorm, {1: "weight", 2: "bias"}),
    (nn.Linear, {1: "weight", 2: "bias"}),
]


def _onnx2torch_convert():
    """onnx2torch's `convert`. onnx2torch imports torchvision at import time for its NMS and RoIAlign
    converters only (detection heads, never in the CNNs we train). Where torchvision is missing or
    cannot load (a CUDA torchvision wheel beside a CPU torch: "operator torchvision::nms does not
    exist"), a stand-in lets onnx2torch import; converting a model with those two ops then fails
    with a one-line error."""
    try:
        importlib.import_module("torchvision")  # optional: only onnx2torch's detection converters use it
    except Exception:  # ImportError, or RuntimeError/OSError from a wheel built for another torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]

        def missing(*args, **kwargs):
            raise MorphNetError("this model has NonMaxSuppression or RoiAlign, which need a working torchvision "
                                "matching your torch (pip install torchvision)")

        stand_in = types.ModuleType("torchvision")
        stand_in.ops = types.ModuleType("torchvision.ops")
        stand_in.ops.nms = stand_in.ops.batched_nms = stand_in.ops.roi_align = missing
        sys.modules["torchvision"] = stand_in
        sys.modules["torchvision.ops"] = stand_in.ops
    try:
        from onnx2torch import convert  # the optional converter of the `torch` extra
    except ImportError as exc:
        raise MorphNetError(f"--backend torch needs onnx2torch: pip install 'morphnet-onnx[torch]' "
                            f"(or pip install {CONVERTER})") from exc
    return convert


def torch_graph(loaded: LoadedModel, batch: int, task: str, regs: list[GroupRegularizer],
                gates: list[GatePlacement]) -> tuple[onnx.ModelProto, list[str]]:
    """The ONNX graph that is converted, and the names of its trainable initializers (the user's names)."""
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    inline_weights(model)  # a model loaded with external data keeps its weights on disk until here
    graph = model.graph
    constants_to_initializers(graph, TRAINABLE_INPUTS, BUFFER_INPUTS)
    if task == "ce":
        logits = logits_of(model)
        if logits != graph.output[0].name:  # train on the logits: the trailing Softmax goes
            del graph.output[:]
            graph.output.append(onnx.helper.make_empty_tensor_value_info(logits))
    drop_dead_nodes(graph)
    model = at_batch(model, loaded.model, loaded.shapes, loaded.name, batch)  # an export's fixed batch
    graph = model.graph
    for value in graph.input:
        if value.name in set(graph_input_names(model)):
            shape = value.type.tensor_type.shape
            dims = list(loaded.shapes[value.name])
            dims[0] = batch
            del shape.dim[:]
            for d in dims:
                shape.dim.add().dim_value = d
    del graph.value_info[:]
    for output in graph.output:
        output.type.tensor_type.elem_type = output.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
        output.type.tensor_type.ClearField("shape")
    inits = {t.name for t in graph.initializer}
    trainable: list[str] = []
    for node in graph.node:
        for index in TRAINABLE_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] in inits and node.input[index] not in trainable:
                trainable.append(node.input[index])
    if gates:
        trainable.extend(insert_gates(model, regs, gates))
    return model, trainable


class TensorRef:
    """A trainable ONNX initializer inside the torch module: the tensor, and whether the module holds
    it transposed (nn.Linear from a Gemm without transB)."""

    def __init__(self, tensor: torch.Tensor, transposed: bool) -> None:
        self.tensor, self.transposed = tensor, transposed

    def onnx_view(self) -> torch.Tensor:
        """The tensor in the user's layout (differentiable)."""
        return self.tensor.t() if self.transposed else self.tensor


def _initializer_tensors(gm: fx.GraphModule, model: onnx.ModelProto) -> dict[str, list[tuple[nn.Module, str, bool]]]:
    """Where each ONNX initializer went: (module, attribute, transposed) for every use. onnx2torch
    keeps no such map: it is read from each converted node's onnx_mapping (its ONNX inputs) and the
    fx arguments (initializers passed as buffers of `initializers`), or from the module's own
    parameters (a Conv's weight)."""
    nodes = {node.output[0]: node for node in model.graph.node if node.output}
    inits = {t.name for t in model.graph.initializer}
    where: dict[str, list[tuple[nn.Module, str, bool]]] = {}
    for fx_node in gm.graph.nodes:
        if fx_node.op != "call_module":
            continue
        module = gm.get_submodule(fx_node.target)
        mapping = getattr(module, "onnx_mapping", None)
        if mapping is None or not mapping.outputs or mapping.outputs[0] not in nodes:
            continue
        node = nodes[mapping.outputs[0]]
        values = [v for v in mapping.inputs if v]
        arguments = list(fx_node.args) + list(fx_node.kwargs.values())
        for value, argument in zip(values, arguments):
            if isinstance(argument, fx.Node) and argument.op == "get_attr" and \
                    str(argument.target).startswith("initializers.") and value in inits:
                holder, _, attribute = str(argument.target).rpartition(".")
                where.setdefault(value, []).append((gm.get_submodule(holder), attribute, False))
        inner = module
        if isinstance(module, nn.Sequential):  # a Conv behind an explicit padding module
            inner = next((m for m in reversed(module) if isinstance(m, nn.modules.conv._ConvNd)), module)
        for kind, slots in _MODULE_SLOTS:
            if not isinstance(inner, kind):
                continue
            for slot, attribute in slots.items():
                if slot < len(node.input) and node.input[slot] in inits and getattr(inner, attribute, None) is not None:
                    transposed = kind is nn.Linear and slot == 1 and not _attribute(node, "transB", 0)
                    where.setdefault(node.input[slot], []).append((inner, attribute, transposed))
            break
    return where


def _attribute(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def trainable_refs(gm: fx.GraphModule, model: onnx.ModelProto, trainable: list[str]) -> dict[str, TensorRef]:
    """Make every trainable initializer one nn.Parameter (buffers promoted, shared uses tied), check
    it holds the ONNX value, freeze everything else; return the map ONNX name -> tensor."""
    where = _initializer_tensors(gm, model)
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for parameter in gm.parameters():
        parameter.requires_grad_(False)
    refs: dict[str, TensorRef] = {}
    for name in trainable:
        uses = where.get(name)
        if not uses:
            raise MorphNetError(f"--backend torch: internal: the converted module holds no tensor for the trained "
                                f"initializer {name!r}")
        if len({transposed for _, _, transposed in uses}) > 1:
            raise MorphNetError(f"--backend torch: the weight {name!r} is used both as a Gemm weight and another "
                                f"way; train this model with --backend ort")
        module, attribute, transposed = uses[0]
        current = getattr(module, attribute)
        parameter = current if isinstance(current, nn.Parameter) else nn.Parameter(current.detach().clone())
        parameter.requires_grad_(True)
        for module, attribute, _ in uses:
            if attribute in module._buffers:
                del module._buffers[attribute]
            if attribute in module._parameters:
                del module._parameters[attribute]
            module.register_parameter(attribute, parameter)
        ref = TensorRef(parameter, transposed)
        held = ref.onnx_view().detach().cpu().numpy()
        if held.shape != values[name].shape or not np.array_equal(held, values[name]):
            raise MorphNetError(f"--backend torch: the converted module's tensor for {name!r} does not hold the "
                                f"ONNX initializer (a scaled Gemm?); train this model with --backend ort")
        refs[name] = ref
    return refs


def convert_model(model: onnx.ModelProto, name: str) -> fx.GraphModule:
    convert = _onnx2torch_convert()
    try:
        return convert(model, attach_onnx_mapping=True)
    except MorphNetError:
        raise
    except Exception as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise MorphNetError(f"{name}: onnx2torch cannot convert this model ({text}); train it with --backend ort") \
            from exc
