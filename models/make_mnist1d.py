"""Build the bundled MorphNet example: MNIST-1D data and a 1-D ResNet for it (no torch needed).

    pip install mnist1d && python models/make_mnist1d.py

- mnist1d_train.npz / mnist1d_val.npz: `x` float32 [N, 1, 40], `labels` int64 [N] (10 classes).
  12,000 samples generated offline by the mnist1d package with iid noise 0.05 and correlated noise
  0.4 (the default settings are too easy: width barely matters), split 80/20, seed 42.
- resnet1d_mnist1d.onnx: a 6-block 1-D ResNet, widths 32-32-64-128 (stem 32, stages 32/64/128 of two
  basic blocks), BatchNormalization kept, He-initialized random weights, symbolic batch, opset 17.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent


def make_data(seed: int = 42) -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = 12_000
    args.iid_noise_scale = 0.05
    args.corr_noise_scale = 0.4
    args.seed = seed
    data = make_dataset(args)
    for split, x, y in (("train", data["x"], data["y"]), ("val", data["x_test"], data["y_test"])):
        x = np.asarray(x, dtype=np.float32)[:, None, :]
        np.savez_compressed(HERE / f"mnist1d_{split}.npz", x=x, labels=np.asarray(y, dtype=np.int64))
        print(f"mnist1d_{split}.npz: x {x.shape}, labels {np.bincount(np.asarray(y)).tolist()}")


class Net1d:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def param(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv_bn(self, x: str, name: str, c_in: int, c_out: int, k: int = 3, stride: int = 1, relu: bool = True) -> str:
        w = self.param(f"{name}.weight", self.rng.normal(0, np.sqrt(2 / (c_in * k)), (c_out, c_in, k)))
        self.nodes.append(helper.make_node("Conv", [x, w], [f"{name}_conv"], name=f"{name}.conv", kernel_shape=[k],
                                           strides=[stride], pads=[k // 2, k // 2]))
        bn = [self.param(f"{name}.bn.{p}", v) for p, v in (
            ("weight", np.ones(c_out)), ("bias", np.zeros(c_out)), ("running_mean", np.zeros(c_out)),
            ("running_var", np.ones(c_out)))]
        self.nodes.append(helper.make_node("BatchNormalization", [f"{name}_conv"] + bn, [f"{name}_bn"],
                                           name=f"{name}.bn", epsilon=1e-5))
        if not relu:
            return f"{name}_bn"
        self.nodes.append(helper.make_node("Relu", [f"{name}_bn"], [f"{name}_relu"], name=f"{name}.relu"))
        return f"{name}_relu"

    def block(self, x: str, name: str, c_in: int, c_out: int, stride: int) -> str:
        h = self.conv_bn(x, f"{name}.conv1", c_in, c_out, stride=stride)
        h = self.conv_bn(h, f"{name}.conv2", c_out, c_out, relu=False)
        skip = x if stride == 1 and c_in == c_out else self.conv_bn(x, f"{name}.down", c_in, c_out, k=1,
                                                                      stride=stride, relu=False)
        self.nodes.append(helper.make_node("Add", [h, skip], [f"{name}_add"], name=f"{name}.add"))
        self.nodes.append(helper.make_node("Relu", [f"{name}_add"], [f"{name}_out"], name=f"{name}.relu"))
        return f"{name}_out"


def resnet1d(width: float = 1.0, seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    widths = [max(1, int(round(w * width))) for w in (32, 32, 64, 128)]
    net = Net1d(seed)
    x = net.conv_bn("x", "stem", 1, widths[0], k=5)
    c = widths[0]
    for stage, w in enumerate(widths[1:]):
        for i in range(2):
            x = net.block(x, f"layer{stage + 1}.{i}", c, w, stride=2 if stage > 0 and i == 0 else 1)
            c = w
    net.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    net.nodes.append(helper.make_node("Flatten", ["pooled"], ["features"], name="flatten"))
    w = net.param("fc.weight", net.rng.normal(0, np.sqrt(1 / c), (classes, c)))
    b = net.param("fc.bias", np.zeros(classes))
    net.nodes.append(helper.make_node("Gemm", ["features", w, b], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(net.nodes, "resnet1d_mnist1d",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 40])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
                              net.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="morphnet-onnx")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    make_data()
    onnx.save(resnet1d(), HERE / "resnet1d_mnist1d.onnx")
    print(f"wrote {HERE / 'resnet1d_mnist1d.onnx'}")


if __name__ == "__main__":
    main()
