"""Build the small example models bundled in models/ (no torch needed): `python models/make_examples.py`.

tiny_resnet.onnx: a CIFAR-sized residual CNN with BatchNormalization kept (stem, two stages of two
basic blocks, global pool, linear classifier), random weights, opset 17, symbolic batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent


class Builder:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def param(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv_bn_relu(self, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1, relu: bool = True) -> str:
        name = self._name("conv")
        w = self.param(f"{name}.weight", self.rng.normal(0, np.sqrt(2 / (c_in * k * k)), (c_out, c_in, k, k)))
        y = f"{name}_out"
        self.nodes.append(helper.make_node("Conv", [x, w], [y], name=name, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4))
        bn = name.replace("conv", "bn")
        params = [self.param(f"{bn}.{p}", v) for p, v in (
            ("weight", self.rng.uniform(0.5, 1.5, c_out)), ("bias", self.rng.normal(0, 0.1, c_out)),
            ("running_mean", self.rng.normal(0, 0.1, c_out)), ("running_var", self.rng.uniform(0.5, 1.5, c_out)))]
        z = f"{bn}_out"
        self.nodes.append(helper.make_node("BatchNormalization", [y] + params, [z], name=bn, epsilon=1e-5))
        if not relu:
            return z
        r = f"{name}_relu"
        self.nodes.append(helper.make_node("Relu", [z], [r], name=f"{name}.relu"))
        return r

    def block(self, x: str, c_in: int, c_out: int, stride: int) -> str:
        h = self.conv_bn_relu(x, c_in, c_out, stride=stride)
        h = self.conv_bn_relu(h, c_out, c_out, relu=False)
        skip = x if stride == 1 and c_in == c_out else self.conv_bn_relu(x, c_in, c_out, k=1, stride=stride, relu=False)
        name = self._name("add")
        self.nodes.append(helper.make_node("Add", [h, skip], [f"{name}_out"], name=name))
        self.nodes.append(helper.make_node("Relu", [f"{name}_out"], [f"{name}_relu"], name=f"{name}.relu"))
        return f"{name}_relu"


def tiny_resnet(widths=(16, 32), blocks=2, classes=10, seed: int = 0) -> onnx.ModelProto:
    b = Builder(seed)
    x = b.conv_bn_relu("input", 3, widths[0])
    c = widths[0]
    for stage, width in enumerate(widths):
        for i in range(blocks):
            x = b.block(x, c, width, stride=2 if stage > 0 and i == 0 else 1)
            c = width
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    b.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten", axis=1))
    w = b.param("fc.weight", b.rng.normal(0, 0.1, (classes, c)))
    bias = b.param("fc.bias", np.zeros(classes))
    b.nodes.append(helper.make_node("Gemm", ["features", w, bias], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        b.nodes, "tiny_resnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="morphnet-onnx")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    onnx.save(tiny_resnet(), HERE / "tiny_resnet.onnx")
    print(f"wrote {HERE / 'tiny_resnet.onnx'}")


if __name__ == "__main__":
    main()
