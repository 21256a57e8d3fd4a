"""Test helpers for graphs: `Net` (the package's builder, re-exported so tests import it from one
place) and `independent_flops`, a FLOP count written apart from the library's cost model."""

from __future__ import annotations

import numpy as np
import onnx

from morphnet_onnx.builders import Net

__all__ = ["Net", "concat_of_two_branches", "independent_flops", "random_dataset", "small_bn_net", "spread_gates",
           "tiny_residual_net"]


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


def concat_of_two_branches() -> onnx.ModelProto:
    """Convs `a` (4 channels) and `b` (5) concatenated and read by a 1x1 conv `head`: a Concat tower."""
    net = Net(input_shape=(1, 3, 8, 8), seed=2)
    a = net.relu(net.conv("input", 3, 4, name="a"))
    b = net.relu(net.conv("input", 3, 5, name="b"))
    x = net.op("Concat", [a, b], axis=1, name="cat")
    return net.model(net.conv(x, 9, 2, k=1, name="head"))


def fire_modules(count: int = 3) -> onnx.ModelProto:
    """SqueezeNet's fire modules in a row: a 1x1 squeeze, then a 1x1 and a padded 3x3 expand (with
    BatchNormalization, so both have gates), concatenated; the next module squeezes the Concat.
    Either expand of a module may vanish, not both."""
    net = Net(input_shape=(1, 3, 8, 8), seed=3)
    x, width = net.relu(net.conv("input", 3, 8, name="stem")), 8
    for i in range(count):
        squeeze = net.relu(net.bn(net.conv(x, width, 4, k=1, name=f"squeeze{i}"), 4, name=f"squeeze{i}_bn"))
        branches = [net.relu(net.bn(net.conv(squeeze, 4, 6, k=k, name=f"expand{k}x{k}_{i}"), 6,
                                    name=f"expand{k}x{k}_{i}_bn")) for k in (1, 3)]
        x, width = net.op("Concat", branches, axis=1, name=f"cat{i}"), 12
    return net.model(net.conv(x, width, 2, k=1, name="head"))


def random_dataset(folder, examples: int, val_examples: int, val_key: str = "input"):
    """train.npz and val.npz of random 3x32x32 inputs and 10-class labels (for models/tiny_resnet.onnx)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((examples, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, examples)
    np.savez(folder / "train.npz", input=x, labels=labels)
    np.savez(folder / "val.npz", **{val_key: x[:val_examples]}, labels=labels[:val_examples])
    return folder


def small_bn_net(folder, examples: int = 64):
    """net.onnx (two 3x3 conv + BN + ReLU layers of 8 channels on 3x8x8 inputs, a 4-class Gemm: steps of
    milliseconds), train.npz (`examples`) and val.npz (half of them) in `folder`."""
    net = Net(input_shape=(1, 3, 8, 8), batch="N")
    x = net.relu(net.bn(net.conv("input", 3, 8, name="conv1"), 8, name="bn1"))
    x = net.relu(net.bn(net.conv(x, 8, 8, name="conv2"), 8, name="bn2"))
    x = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    onnx.save(net.model(net.gemm(x, 8, 4, name="fc")), str(folder / "net.onnx"))
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((examples, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 4, examples)
    np.savez(folder / "train.npz", input=inputs, labels=labels)
    np.savez(folder / "val.npz", input=inputs[:examples // 2], labels=labels[:examples // 2])
    return folder


def learnable_bn_net(folder, examples: int = 64):
    """small_bn_net with train.npz labelled so the network can learn it (the signs of two channels'
    means): a model trained on it scores well enough to teach (distillation.py)."""
    small_bn_net(folder, examples)
    with np.load(folder / "train.npz") as arrays:
        inputs = arrays["input"]
    means = inputs.mean(axis=(2, 3))
    np.savez(folder / "train.npz", input=inputs, labels=(2 * (means[:, 0] > 0) + (means[:, 1] > 0)).astype(np.int64))
    return folder


def tiny_residual_net(width: int = 16, batch: str | int = "N") -> onnx.ModelProto:
    """A stem, one residual block and a classifier, 3x8x8 inputs: small enough to time in seconds."""
    net = Net(input_shape=(1, 3, 8, 8), batch=batch)
    x = net.relu(net.bn(net.conv("input", 3, width, name="stem"), width, name="stem_bn"))
    y = net.relu(net.bn(net.conv(x, width, width, name="mid"), width, name="mid_bn"))
    y = net.op("Add", [x, y], name="join")
    pooled = net.op("Flatten", [net.op("GlobalAveragePool", [y], name="pool")], name="flat")
    return net.model(net.gemm(pooled, width, 4, name="fc"))


def spread_gates(loaded, regs, seed: int = 0) -> dict:
    """The model's parameters with every gate drawn over two decades, so that every goal a decision
    is asked for has its own prefix of the ranking."""
    rng = np.random.default_rng(seed)
    params = {t.name: onnx.numpy_helper.to_array(t).copy() for t in loaded.model.graph.initializer}
    for reg in regs:
        for member in reg.members:
            params[member.param] = (10 ** rng.uniform(-1, 1, params[member.param].shape)).astype(np.float32)
    return params
