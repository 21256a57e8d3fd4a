"""Build the small example models bundled in models/ (no torch needed): `.venv/bin/python models/make_examples.py`
(with `morphnet_onnx.builders`, the builder the tests use; tests/test_builders.py checks that the bundled
file is what this script builds).

tiny_resnet.onnx: a CIFAR-sized residual CNN with BatchNormalization kept (stem, two stages of two
basic blocks, global pool, linear classifier), random weights, opset 17, symbolic batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from morphnet_onnx.builders import Net

HERE = Path(__file__).resolve().parent


def conv_bn_relu(net: Net, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1, relu: bool = True) -> str:
    """Conv (He-initialized, no bias) -> BatchNormalization -> Relu, named conv<i>, bn<i>, conv<i>.relu."""
    name = net.name("conv")
    w = net.const(net.rng.normal(0, np.sqrt(2 / (c_in * k * k)), (c_out, c_in, k, k)).astype(np.float32),
                  f"{name}.weight")
    y = net.op("Conv", [x, w], name=name, kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
    bn = name.replace("conv", "bn")
    params = [net.const(v.astype(np.float32), f"{bn}.{p}") for p, v in (
        ("weight", net.rng.uniform(0.5, 1.5, c_out)), ("bias", net.rng.normal(0, 0.1, c_out)),
        ("running_mean", net.rng.normal(0, 0.1, c_out)), ("running_var", net.rng.uniform(0.5, 1.5, c_out)))]
    z = net.op("BatchNormalization", [y] + params, name=bn, epsilon=1e-5)
    if not relu:
        return z
    return net.op("Relu", [z], name=f"{name}.relu", outputs=[f"{name}_relu"])


def block(net: Net, x: str, c_in: int, c_out: int, stride: int) -> str:
    """A basic residual block: two conv-bn (relu between), a 1x1 conv-bn skip when the shape changes."""
    h = conv_bn_relu(net, x, c_in, c_out, stride=stride)
    h = conv_bn_relu(net, h, c_out, c_out, relu=False)
    skip = x if stride == 1 and c_in == c_out else conv_bn_relu(net, x, c_in, c_out, k=1, stride=stride, relu=False)
    name = net.name("add")
    added = net.op("Add", [h, skip], name=name)
    return net.op("Relu", [added], name=f"{name}.relu", outputs=[f"{name}_relu"])


def tiny_resnet(widths=(16, 32), blocks=2, classes=10, seed: int = 0) -> onnx.ModelProto:
    net = Net(input_shape=(1, 3, 32, 32), batch="batch", seed=seed)
    x = conv_bn_relu(net, "input", 3, widths[0])
    c = widths[0]
    for stage, width in enumerate(widths):
        for i in range(blocks):
            x = block(net, x, c, width, stride=2 if stage > 0 and i == 0 else 1)
            c = width
    net.op("GlobalAveragePool", [x], name="pool", outputs=["pooled"])
    net.op("Flatten", ["pooled"], name="flatten", outputs=["features"], axis=1)
    w = net.const(net.rng.normal(0, 0.1, (classes, c)).astype(np.float32), "fc.weight")
    bias = net.const(np.zeros(classes, np.float32), "fc.bias")
    net.op("Gemm", ["features", w, bias], name="fc", outputs=["logits"], transB=1)
    model = net.model("logits", graph_name="tiny_resnet", output_shapes={"logits": ["batch", classes]},
                      producer_name="morphnet-onnx")
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    onnx.save(tiny_resnet(), HERE / "tiny_resnet.onnx")
    print(f"wrote {HERE / 'tiny_resnet.onnx'}")


if __name__ == "__main__":
    main()
