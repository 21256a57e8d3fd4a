"""Build small ONNX graphs op by op with numpy weights: the one builder the tests, the bundled examples
(models/make_examples.py, models/make_mnist1d.py) and the benchmarks (tools/bench_inspect.py) use.

>>> net = Net(input_shape=(1, 3, 8, 8))
>>> y = net.relu(net.bn(net.conv("input", 3, 8), 8))
>>> model = net.model(y)          # opset 17, IR 8, the output typed by onnx's shape inference
>>> [n.op_type for n in model.graph.node]
['Conv', 'BatchNormalization', 'Relu']

`const` and `op` add any initializer or node under the names given; `conv`, `bn`, `gemm` and
`matmul` draw their weights from the builder's seeded generator, so one seed gives one model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    """A graph under construction: every method adds nodes and returns the output tensor's name.

    The model has one float input `input_shape` whose first dimension is `batch` (an int, or a name
    for a symbolic batch).
    """

    def __init__(self, input_shape=(1, 3, 8, 8), opset: int = 17, seed: int = 0, batch: str | int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.input_shape = tuple(input_shape)
        self.batch = batch
        self.opset = opset
        self.n = 0

    def name(self, kind: str) -> str:
        """A fresh name: `kind` and a counter shared by every generated name."""
        self.n += 1
        return f"{kind}{self.n}"

    def const(self, array, name: str | None = None) -> str:
        """Add an initializer holding `array` (its dtype as given)."""
        name = name or self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_outputs: int = 1, name: str | None = None,
           outputs: list[str] | None = None, **attrs) -> str | list[str]:
        """Add a node; its outputs are `outputs`, or `<name>_out` (`<name>_out<i>` for several)."""
        name = name or self.name(op_type.lower())
        if outputs is None:
            outputs = [f"{name}_out{i}" if n_outputs > 1 else f"{name}_out" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs if len(outputs) > 1 else outputs[0]

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

    def model(self, outputs: str | list[str], input_name: str = "input", graph_name: str = "test",
              output_shapes: dict[str, list] | None = None, producer_name: str = "") -> onnx.ModelProto:
        """The model (opset `opset`, IR 8). Outputs are float; with `output_shapes` ({output: dims})
        they are declared as given, otherwise typed by onnx's shape inference where it can."""
        outputs = [outputs] if isinstance(outputs, str) else outputs
        shape = list(self.input_shape)
        shape[0] = self.batch
        declared = output_shapes or {}
        graph = helper.make_graph(
            self.nodes, graph_name, [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, declared.get(o)) for o in outputs], self.inits)
        extra = {"producer_name": producer_name} if producer_name else {}
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], **extra)
        model.ir_version = 8
        if output_shapes is not None:
            return model
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
