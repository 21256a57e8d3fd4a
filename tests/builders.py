"""Small ONNX graphs for tests, built op by op with numpy weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    """A graph under construction: every method adds nodes and returns the output tensor's name."""

    def __init__(self, input_shape=(1, 3, 8, 8), opset: int = 17, seed: int = 0, batch: str | int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.input_shape = tuple(input_shape)
        self.batch = batch
        self.opset = opset
        self.n = 0

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def const(self, array, name: str | None = None) -> str:
        name = name or self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_outputs: int = 1, name: str | None = None, **attrs) -> str | list[str]:
        name = name or self.name(op_type.lower())
        outputs = [f"{name}_out{i}" if n_outputs > 1 else f"{name}_out" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs if n_outputs > 1 else outputs[0]

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, group: int = 1, stride: int = 1, bias: bool = True,
             name: str | None = None, dims: int = 2) -> str:
        name = name or self.name("conv")
        w = self.const(self.rng.normal(0, 0.3, (c_out, c_in // group) + (k,) * dims).astype(np.float32), f"{name}.w")
        inputs = [x, w]
        if bias:
            inputs.append(self.const(self.rng.normal(0, 0.1, c_out).astype(np.float32), f"{name}.b"))
        return self.op("Conv", inputs, name=name, kernel_shape=[k] * dims, pads=[k // 2] * (2 * dims),
                       group=group, strides=[stride] * dims)

    def bn(self, x: str, c: int, name: str | None = None) -> str:
        name = name or self.name("bn")
        params = [self.const(v.astype(np.float32), f"{name}.{p}") for p, v in (
            ("scale", self.rng.uniform(0.5, 1.5, c)), ("bias", self.rng.normal(0, 0.2, c)),
            ("mean", self.rng.normal(0, 0.1, c)), ("var", self.rng.uniform(0.5, 1.5, c)))]
        return self.op("BatchNormalization", [x] + params, name=name)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def gemm(self, x: str, k: int, n: int, name: str | None = None) -> str:
        name = name or self.name("fc")
        w = self.const(self.rng.normal(0, 0.3, (n, k)).astype(np.float32), f"{name}.w")
        b = self.const(np.zeros(n, np.float32), f"{name}.b")
        return self.op("Gemm", [x, w, b], name=name, transB=1)

    def matmul(self, x: str, k: int, n: int, name: str | None = None) -> str:
        name = name or self.name("linear")
        w = self.const(self.rng.normal(0, 0.3, (k, n)).astype(np.float32), f"{name}.w")
        return self.op("MatMul", [x, w], name=name)

    def model(self, outputs: str | list[str], input_name: str = "input") -> onnx.ModelProto:
        outputs = [outputs] if isinstance(outputs, str) else outputs
        shape = list(self.input_shape)
        shape[0] = self.batch
        graph = helper.make_graph(
            self.nodes, "test", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        # Give the outputs their inferred types so full_check passes on the written model.
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # custom ops a test adds its domain for later
            return model
        known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for output in model.graph.output:
            if output.name in known and known[output.name].type.tensor_type.HasField("shape"):
                output.CopyFrom(known[output.name])
        return model


def independent_flops(model: onnx.ModelProto, input_shapes: dict | None = None) -> float:
    """2 x MACs of Conv/ConvTranspose/Gemm/MatMul from onnx's own shape inference, written apart from
    the library's cost model so the two can check each other."""
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for v in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    for name, s in (input_shapes or {}).items():
        shapes[name] = list(s)
    total = 0.0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w = shapes[node.input[1]]
            out = shapes[node.output[0]]
            if node.op_type == "Conv":
                total += 2 * np.prod(out) * w[1] * np.prod(w[2:])
            else:
                x = shapes[node.input[0]]
                total += 2 * np.prod(x) * w[1] * np.prod(w[2:])
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes[node.input[0]]
            out = shapes[node.output[0]]
            trans_a = next((a_.i for a_ in node.attribute if a_.name == "transA"), 0)
            k = a[0] if (node.op_type == "Gemm" and trans_a) else a[-1]
            total += 2 * np.prod(out) * k
    return float(total)
