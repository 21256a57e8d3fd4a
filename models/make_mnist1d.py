"""Build the bundled MorphNet example: MNIST-1D data and a 1-D ResNet for it (no torch needed).

    .venv/bin/pip install mnist1d && .venv/bin/python models/make_mnist1d.py

The network is built with `morphnet_onnx.builders`; tests/test_builders.py checks that the bundled
resnet1d_mnist1d.onnx is what `resnet1d()` builds.

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

from morphnet_onnx.builders import Net

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


def conv_bn(net: Net, x: str, name: str, c_in: int, c_out: int, k: int = 3, stride: int = 1,
            relu: bool = True) -> str:
    """Conv1d (He-initialized, no bias) -> BatchNormalization (identity statistics) -> Relu."""
    w = net.const(net.rng.normal(0, np.sqrt(2 / (c_in * k)), (c_out, c_in, k)).astype(np.float32), f"{name}.weight")
    net.op("Conv", [x, w], name=f"{name}.conv", outputs=[f"{name}_conv"], kernel_shape=[k], strides=[stride],
           pads=[k // 2, k // 2])
    bn = [net.const(v.astype(np.float32), f"{name}.bn.{p}") for p, v in (
        ("weight", np.ones(c_out)), ("bias", np.zeros(c_out)), ("running_mean", np.zeros(c_out)),
        ("running_var", np.ones(c_out)))]
    net.op("BatchNormalization", [f"{name}_conv"] + bn, name=f"{name}.bn", outputs=[f"{name}_bn"], epsilon=1e-5)
    if not relu:
        return f"{name}_bn"
    return net.op("Relu", [f"{name}_bn"], name=f"{name}.relu", outputs=[f"{name}_relu"])


def block(net: Net, x: str, name: str, c_in: int, c_out: int, stride: int) -> str:
    h = conv_bn(net, x, f"{name}.conv1", c_in, c_out, stride=stride)
    h = conv_bn(net, h, f"{name}.conv2", c_out, c_out, relu=False)
    skip = x if stride == 1 and c_in == c_out else conv_bn(net, x, f"{name}.down", c_in, c_out, k=1,
                                                          stride=stride, relu=False)
    net.op("Add", [h, skip], name=f"{name}.add", outputs=[f"{name}_add"])
    return net.op("Relu", [f"{name}_add"], name=f"{name}.relu", outputs=[f"{name}_out"])


def resnet1d(width: float = 1.0, seed: int = 0, classes: int = 10) -> onnx.ModelProto:
    widths = [max(1, int(round(w * width))) for w in (32, 32, 64, 128)]
    net = Net(input_shape=(1, 1, 40), batch="batch", seed=seed)
    x = conv_bn(net, "x", "stem", 1, widths[0], k=5)
    c = widths[0]
    for stage, w in enumerate(widths[1:]):
        for i in range(2):
            x = block(net, x, f"layer{stage + 1}.{i}", c, w, stride=2 if stage > 0 and i == 0 else 1)
            c = w
    net.op("GlobalAveragePool", [x], name="pool", outputs=["pooled"])
    net.op("Flatten", ["pooled"], name="flatten", outputs=["features"])
    w = net.const(net.rng.normal(0, np.sqrt(1 / c), (classes, c)).astype(np.float32), "fc.weight")
    b = net.const(np.zeros(classes, np.float32), "fc.bias")
    net.op("Gemm", ["features", w, b], name="fc", outputs=["logits"], transB=1)
    model = net.model("logits", input_name="x", graph_name="resnet1d_mnist1d",
                      output_shapes={"logits": ["batch", classes]}, producer_name="morphnet-onnx")
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    make_data()
    onnx.save(resnet1d(), HERE / "resnet1d_mnist1d.onnx")
    print(f"wrote {HERE / 'resnet1d_mnist1d.onnx'}")


if __name__ == "__main__":
    main()
