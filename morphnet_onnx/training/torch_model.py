"""The user's graph as a torch module, for the `torch` backend (torch_backend.py): the training
graph (Constant-held weights made initializers, the batch static, the logits, FiGS's gates) converted
by onnx2torch, and a map from each trainable initializer's ONNX name to the torch tensor that holds
it (Gemm's transposes undone), so that trained weights go back by name."""

from __future__ import annotations

import importlib
import math
import sys
import types

import numpy as np
import onnx
import torch  # this module is imported only for --backend torch
from torch import fx, nn

from ..cost.resources import FLOAT_TYPES
from ..errors import MorphNetError
from ..graph_utils import attr, drop_dead_nodes, graph_input_names
from ..loading.external import inline_weights
from ..loading.model import LoadedModel
from ..method.figs import GatePlacement, insert_gates
from ..method.regularizers import GroupRegularizer
from ..ops import BUFFER_INPUTS, TRAINABLE_INPUTS
from .backend import logits_of
from .graph import constants_to_initializers, trainable_slots
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
    inits = {t.name for t in graph.initializer if t.data_type in FLOAT_TYPES}  # (training/graph.py)
    trainable: list[str] = []
    for node, index in trainable_slots(graph):  # the same parameters as onnxruntime-training's
        if node.input[index] in inits and node.input[index] not in trainable:
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
                    transposed = kind is nn.Linear and slot == 1 and not attr(node, "transB", 0)
                    where.setdefault(node.input[slot], []).append((inner, attribute, transposed))
            break
    return where


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


# onnx2torch 1.5.15 converts ops as they are up to opset 17. These changed from 18 to 21 only in the
# types they take (a model at a newer opset runs the same at 17), or in what the attributes tested
# beside them select; the Reduce* ops' axes moved from an attribute to an input at 18 (moved back
# here when they are constant); Gelu (opset 20) is written out.
CONVERTED_OPSET = 17
SAME_AT_CONVERTED = {"Reshape", "Cast", "CastLike", "Constant", "Identity", "Shape", "Size", "Equal", "ConstantOfShape",
                     "Flatten", "Squeeze", "Unsqueeze", "Transpose", "IsInf", "IsNaN", "AveragePool", "Pad", "Resize"}
DIFFERENT_WHEN = {"Pad": lambda node: len(node.input) > 3 or attr(node, "mode", b"constant") == b"wrap",
                  "Resize": lambda node: attr(node, "antialias", 0) != 0 or bool(attr(node, "axes", None))
                  or attr(node, "keep_aspect_ratio_policy", b"stretch") != b"stretch"
                  or attr(node, "coordinate_transformation_mode", b"") == b"half_pixel_symmetric",
                  "Cast": lambda node: attr(node, "saturate", 1) == 0,
                  "AveragePool": lambda node: any(d != 1 for d in attr(node, "dilations", [1])),
                  "Reshape": lambda node: attr(node, "allowzero", 0) != 0}
REDUCE = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
          "ReduceProd", "ReduceSum", "ReduceSumSquare"}


def at_converted_opset(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """`model` (a copy) at CONVERTED_OPSET when it is newer and every op means there what it means at
    its own opset; MorphNetError naming the op otherwise."""
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    if opset <= CONVERTED_OPSET:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    constants = {t.name: t for t in out.graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in out.graph.node if n.op_type == "Constant"})
    nodes = []
    for node in out.graph.node:
        if node.domain not in ("", "ai.onnx") or \
                onnx.defs.get_schema(node.op_type, opset).since_version <= CONVERTED_OPSET:
            nodes.append(node)
            continue
        if node.op_type == "Reshape" and node.input[1] in constants and \
                0 not in onnx.numpy_helper.to_array(constants[node.input[1]]).tolist():
            _drop_attribute(node, "allowzero")  # without a 0 in the target it changes nothing
        if node.op_type == "Gelu":
            nodes.extend(_gelu(node))
        elif node.op_type in REDUCE and (len(node.input) < 2 or node.input[1] in constants) \
                and attr(node, "noop_with_empty_axes", 0) == 0:
            if len(node.input) > 1:
                axes = onnx.numpy_helper.to_array(constants[node.input[1]]).tolist()
                del node.input[1:]
                node.attribute.append(onnx.helper.make_attribute("axes", axes))
            _drop_attribute(node, "noop_with_empty_axes")
            nodes.append(node)
        elif node.op_type in SAME_AT_CONVERTED and not DIFFERENT_WHEN.get(node.op_type, lambda n: False)(node):
            nodes.append(node)
        else:
            raise MorphNetError(f"{name}: onnx2torch converts up to opset {CONVERTED_OPSET}, and {node.op_type} "
                                f"{node.name!r} of opset {opset} has no equivalent there; train it with --backend ort")
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    for entry in out.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = CONVERTED_OPSET
    return out


def _drop_attribute(node: onnx.NodeProto, name: str) -> None:
    for a in [a for a in node.attribute if a.name == name]:
        node.attribute.remove(a)


def _gelu(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Gelu (opset 20) as the opset-18 ops it stands for: x/2 (1 + erf(x/sqrt 2)), or with
    approximate="tanh" x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x, y, base = node.input[0], node.output[0], node.name or node.output[0]
    approximate = next((a.s for a in node.attribute if a.name == "approximate"), b"none")

    def const(suffix: str, value: float) -> onnx.NodeProto:
        return onnx.helper.make_node("Constant", [], [f"{base}/{suffix}"], name=f"{base}/{suffix}",
                                     value=onnx.helper.make_tensor(f"{base}/{suffix}", onnx.TensorProto.FLOAT, [], [value]))

    def op(kind: str, inputs: list[str], out: str) -> onnx.NodeProto:
        return onnx.helper.make_node(kind, inputs, [out], name=f"{base}/{out.rsplit('/', 1)[-1]}")

    half, one = const("half", 0.5), const("one", 1.0)
    if approximate == b"tanh":
        cube_k, scale = const("k", 0.044715), const("s", math.sqrt(2 / math.pi))
        body = [cube_k, scale,
                op("Mul", [x, x], f"{base}/x2"), op("Mul", [f"{base}/x2", x], f"{base}/x3"),
                op("Mul", [f"{base}/x3", f"{base}/k"], f"{base}/kx3"), op("Add", [x, f"{base}/kx3"], f"{base}/inner"),
                op("Mul", [f"{base}/inner", f"{base}/s"], f"{base}/arg"), op("Tanh", [f"{base}/arg"], f"{base}/t")]
    else:
        root = const("root2", math.sqrt(2))
        body = [root, op("Div", [x, f"{base}/root2"], f"{base}/arg"), op("Erf", [f"{base}/arg"], f"{base}/t")]
    return [half, one, *body, op("Add", [f"{base}/t", f"{base}/one"], f"{base}/t1"),
            op("Mul", [x, f"{base}/half"], f"{base}/xh"), onnx.helper.make_node(
                "Mul", [f"{base}/xh", f"{base}/t1"], [y], name=f"{base}/out")]


def convert_model(model: onnx.ModelProto, name: str) -> fx.GraphModule:
    convert = _onnx2torch_convert()
    model = at_converted_opset(model, name)
    try:
        return convert(model, attach_onnx_mapping=True)
    except MorphNetError:
        raise
    except Exception as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise MorphNetError(f"{name}: onnx2torch cannot convert this model ({text}); train it with --backend ort") \
            from exc
