"""Small models and data files for the fail-safe tests: one good model, the bad files every command
must refuse in one line, and the odd-but-valid models (quantized, control flow, functions, several
inputs and outputs) it must analyse with the parts it does not understand pinned.

Every model here reads `input` (N x 3 x 8 x 8, float) and writes 4 logits first, so one data file
(`input`, `input2`, `labels` in 0..3) fits all of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from builders import Net

CLASSES = 4
EXAMPLES = 32


def _trunk(net: Net, x: str = "input") -> str:
    """conv `a` (8) -> bn -> relu -> conv `p` (8) -> bn -> relu: `a` is the prunable group every odd
    model has; `p` feeds the odd part, which pins it."""
    a = net.relu(net.bn(net.conv(x, 3, 8, name="a"), 8, name="bn_a"))
    return net.relu(net.bn(net.conv(a, 8, 8, name="p"), 8, name="bn_p"))


def _head(net: Net, x: str, c: int = 8) -> str:
    pooled = net.op("GlobalAveragePool", [x], name="pool")
    return net.gemm(net.op("Flatten", [pooled], name="flat"), c, CLASSES, name="fc")


def good() -> onnx.ModelProto:
    net = Net(batch="N")
    b = net.relu(net.bn(net.conv(_trunk(net), 8, 8, name="b"), 8, name="bn_b"))
    return net.model(_head(net, b))


def nothing_to_prune() -> onnx.ModelProto:
    net = Net(batch="N")
    return net.model(net.gemm(net.op("Flatten", ["input"], name="flat"), 192, CLASSES, name="fc"))


def _typed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Outputs typed by onnx's shape inference (the model-building helpers leave them bare)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in inferred.graph.output}
    for out in model.graph.output:
        if out.name in known and known[out.name].type.tensor_type.HasField("shape"):
            out.CopyFrom(known[out.name])
    return model


def qdq() -> onnx.ModelProto:
    """QuantizeLinear/DequantizeLinear around conv `q`'s input and int8 weights: a QDQ model."""
    net = Net(batch="N")
    a = _trunk(net)
    scale, zero = net.const(np.float32(0.05), "s"), net.const(np.int8(0), "z")
    xq = net.op("QuantizeLinear", [a, scale, zero], name="q_x")
    x = net.op("DequantizeLinear", [xq, scale, zero], name="dq_x")
    w = net.const(net.rng.integers(-20, 20, (8, 8, 3, 3)).astype(np.int8), "q.w_int8")
    wf = net.op("DequantizeLinear", [w, scale, zero], name="dq_w")
    y = net.op("Conv", [x, wf], name="q", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return net.model(_head(net, net.relu(y)))


def qlinear() -> onnx.ModelProto:
    """A QLinearConv between QuantizeLinear and DequantizeLinear, after the float conv `a`."""
    net = Net(batch="N")
    a = _trunk(net)
    s, z = net.const(np.float32(0.05), "s"), net.const(np.uint8(128), "z")
    ws, wz = net.const(np.float32(0.01), "ws"), net.const(np.int8(0), "wz")
    w = net.const(net.rng.integers(-20, 20, (8, 8, 3, 3)).astype(np.int8), "ql.w")
    xq = net.op("QuantizeLinear", [a, s, z], name="q_x")
    yq = net.op("QLinearConv", [xq, s, z, w, ws, wz, s, z], name="ql", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = net.op("DequantizeLinear", [yq, s, z], name="dq_y")
    return net.model(_head(net, y))


def with_if() -> onnx.ModelProto:
    """An If between conv `a` and the head; both branches read `a`'s output from the outer scope."""
    net = Net(batch="N")
    a = _trunk(net)
    cond = net.const(np.array(True), "cond")
    then_g = helper.make_graph([helper.make_node("Relu", [a], ["then_out"])], "then", [],
                               [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Sigmoid", [a], ["else_out"])], "else", [],
                               [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    y = net.op("If", [cond], name="branch", then_branch=then_g, else_branch=else_g)
    return _typed(net.model(_head(net, y), output_shapes={"fc_out": ["N", CLASSES]}))


def with_loop() -> onnx.ModelProto:
    """A Loop (2 iterations) carrying conv `a`'s output through a Relu."""
    net = Net(batch="N")
    a = _trunk(net)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Relu", ["v_in"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    trips, cond = net.const(np.int64(2), "trips"), net.const(np.array(True), "keep_going")
    y = net.op("Loop", [trips, cond, a], name="loop", body=body)
    return _typed(net.model(_head(net, y), output_shapes={"fc_out": ["N", CLASSES]}))


def with_scan() -> onnx.ModelProto:
    """A Scan over conv `a`'s output (axis 1, the channels), adding each slice to a running sum."""
    net = Net(batch="N")
    a = _trunk(net)
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "x_t"], ["acc_out"]), helper.make_node("Identity", ["acc_out"], ["y_t"])],
        "body", [helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None),
                 helper.make_tensor_value_info("x_t", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, None)])
    zero = net.op("ReduceMean", [a], name="zero_like", axes=[1], keepdims=0)
    init = net.op("Mul", [zero, net.const(np.float32(0), "zero")], name="init")
    _, ys = net.op("Scan", [init, a], n_outputs=2, name="scan", body=body, num_scan_inputs=1,
                   scan_input_axes=[1], scan_output_axes=[1])
    return _typed(net.model(_head(net, ys), output_shapes={"fc_out": ["N", CLASSES]}))


def with_function() -> onnx.ModelProto:
    """conv `a`, then a model-local function `local.fn::Act` (a Relu), then conv `b` and the head."""
    net = Net(batch="N")
    a = _trunk(net)
    y = net.op("Act", [a], name="act")
    net.nodes[-1].domain = "local.fn"
    b = net.relu(net.conv(y, 8, 8, name="b"))
    model = net.model(_head(net, b), output_shapes={"fc_out": ["N", CLASSES]})
    fn = helper.make_function("local.fn", "Act", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])],
                              [helper.make_opsetid("", 17)])
    model.functions.append(fn)
    model.opset_import.append(helper.make_opsetid("local.fn", 1))
    return _typed(model)


def multi_io() -> onnx.ModelProto:
    """A second input added after conv `a` (through conv `a2`), two outputs (the logits and conv `b`'s
    feature map)."""
    net = Net(batch="N")
    a = net.relu(net.bn(net.conv("input", 3, 8, name="a"), 8, name="bn_a"))
    mixed = net.op("Add", [a, net.conv("input2", 3, 8, name="a2")], name="mix")
    b = net.relu(net.bn(net.conv(mixed, 8, 8, name="b"), 8, name="bn_b"))
    model = net.model([_head(net, b), b], output_shapes={})
    model.graph.input.append(helper.make_tensor_value_info("input2", TensorProto.FLOAT, ["N", 3, 8, 8]))
    return _typed(model)


def missing_initializer() -> onnx.ModelProto:
    model = good()
    kept = [t for t in model.graph.initializer if t.name != "b.w"]  # conv `b` reads it
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


ODD_MODELS = {"nothing_to_prune": nothing_to_prune, "qdq": qdq, "qlinear": qlinear, "if": with_if,
              "loop": with_loop, "scan": with_scan, "function": with_function, "multi_io": multi_io}


def write_bad_model(kind: str, folder: Path, good_path: Path) -> Path:
    """A model path that is not a usable model, of the given kind."""
    path = folder / f"{kind}.onnx"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    elif kind == "text":
        path.write_text("name,value\nlr,0.1\n")
    elif kind == "truncated":
        data = good_path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "missing":
        pass
    elif kind == "directory":
        path.mkdir()
    elif kind == "missing_initializer":
        onnx.save(missing_initializer(), path)
    elif kind == "missing_external_data":
        onnx.save_model(good(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{kind}.data", size_threshold=0)
        (folder / f"{kind}.data").unlink()
    else:
        raise ValueError(kind)
    return path


BAD_MODELS = ["empty", "random_bytes", "text", "truncated", "missing", "directory", "missing_initializer",
              "missing_external_data"]


def data_arrays(examples: int = EXAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((examples, 3, 8, 8)).astype(np.float32),
            "input2": rng.standard_normal((examples, 3, 8, 8)).astype(np.float32),
            "labels": rng.integers(0, CLASSES, examples)}


def write_bad_data(kind: str, folder: Path) -> Path:
    """A data file that is wrong in one way; the message must name the file (and the key)."""
    path = folder / f"{kind}.npz"
    arrays = data_arrays()
    if kind == "missing":
        return path
    if kind == "not_npz":
        path.write_text("input,labels\n1,2\n")
        return path
    if kind == "wrong_key":
        arrays["image"] = arrays.pop("input")
    elif kind == "no_labels":
        del arrays["labels"]
    elif kind == "wrong_shape":
        arrays["input"] = arrays["input"][:, :, :4]
    elif kind == "wrong_dtype":
        arrays["input"] = arrays["input"].astype(np.float64)
    elif kind == "nan":
        arrays["input"][5, 0, 0, 0] = np.nan
    elif kind == "inf":
        arrays["input"][7, 1, 2, 3] = np.inf
    elif kind == "label_range":
        arrays["labels"][3] = CLASSES
    elif kind == "negative_label":
        arrays["labels"][3] = -1
    elif kind == "float_labels":
        arrays["labels"] = arrays["labels"].astype(np.float32)
    elif kind == "length_mismatch":
        arrays["labels"] = arrays["labels"][:-1]
    elif kind == "too_few":
        arrays = data_arrays(examples=3)
    elif kind == "empty":
        arrays = data_arrays(examples=0)
    elif kind == "scalar_input":
        arrays["input"] = np.float32(1.0)
    else:
        raise ValueError(kind)
    np.savez(path, **arrays)
    return path


BAD_DATA = ["missing", "not_npz", "wrong_key", "no_labels", "wrong_shape", "wrong_dtype", "nan", "inf",
            "label_range", "negative_label", "float_labels", "length_mismatch", "too_few", "empty", "scalar_input"]

