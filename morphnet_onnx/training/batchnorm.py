"""Batch-norm running statistics, measured: onnxruntime-training keeps them frozen during training,
so after training they are measured with batch statistics in the layers before each norm (as in
training) and written into the model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph_utils import graph_input_names, onnx_opset, with_params
from ..loading.runtime import make_session
from .dataset import Dataset
from .rebatch import rebatch


def recalibrate_batchnorm(model: onnx.ModelProto, data: Dataset, batch: int, max_batches: int = 100) -> onnx.ModelProto:
    """Running statistics for every BatchNormalization, measured with batch statistics in the layers
    before it (as in training): onnxruntime-training keeps them frozen, so they are set here."""
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    if not bns:
        return model
    stats = onnx.ModelProto()
    stats.CopyFrom(model)
    opset = onnx_opset(stats)
    if opset < 15:
        stats = onnx.version_converter.convert_version(stats, 15)
    # The data comes in batches of `batch`, as in training: a model exported with a fixed batch (of
    # 1, say) is measured at the training batch size, as the training graph trains it.
    stats = rebatch(stats, batch).model
    graph = stats.graph
    real_inputs = set(graph_input_names(stats))
    for value in graph.input:
        if value.name in real_inputs and value.type.tensor_type.shape.dim:
            first = value.type.tensor_type.shape.dim[0]
            first.Clear()
            first.dim_value = batch
    outputs = []
    for index, node in enumerate(n for n in graph.node if n.op_type == "BatchNormalization"):
        for a in list(node.attribute):
            if a.name == "training_mode":
                node.attribute.remove(a)
        node.attribute.append(onnx.helper.make_attribute("training_mode", 1))
        del node.output[1:]
        node.output.extend([f"{node.output[0]}__rm{index}", f"{node.output[0]}__rv{index}"])
        outputs.append((node, node.input[0]))
    del graph.output[:]
    del graph.value_info[:]
    # Every input is viewed as (N, C, rest) and reduced over axes 0 and 2: no rank is needed, so a
    # norm over a tensor whose rank shape inference cannot tell (a weight standardization's BN over
    # an initializer of rank 3, NF-ResNet's) is measured like any other.
    flat = "morphnet/bn_flat_shape"
    graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), flat))
    axes = "morphnet/bn_axes"
    if max(opset, 15) >= 18:
        graph.initializer.append(numpy_helper.from_array(np.array([0, 2], dtype=np.int64), axes))
    names = []
    for index, (node, x) in enumerate(outputs):
        view, sq = f"morphnet/bn_view{index}", f"morphnet/bn_sq{index}"
        mean, meansq = f"morphnet/bn_mean{index}", f"morphnet/bn_meansq{index}"
        graph.node.append(onnx.helper.make_node("Reshape", [x, flat], [view]))
        graph.node.append(onnx.helper.make_node("Mul", [view, view], [sq]))
        for source, target in ((view, mean), (sq, meansq)):
            if max(opset, 15) >= 18:
                graph.node.append(onnx.helper.make_node("ReduceMean", [source, axes], [target], keepdims=0))
            else:
                graph.node.append(onnx.helper.make_node("ReduceMean", [source], [target], keepdims=0, axes=[0, 2]))
        graph.output.extend([onnx.helper.make_tensor_value_info(mean, onnx.TensorProto.FLOAT, None),
                             onnx.helper.make_tensor_value_info(meansq, onnx.TensorProto.FLOAT, None)])
        names.append((mean, meansq))
    session = make_session(stats, optimize=False)  # (training-mode norms: see make_session)
    input_names = [i.name for i in session.get_inputs()]
    sums = None
    count = 0
    for batch in data.batches(batch, True, 12345):
        values = session.run(None, {k: batch[k] for k in input_names})
        sums = values if sums is None else [a + b for a, b in zip(sums, values)]
        count += 1
        if count >= max_batches:
            break
    # Each norm has its own statistics tensors (loading unties exporter-shared ones), held as an
    # initializer or, for placeholder weights, a Constant node: with_params writes either.
    measured = {}
    for index, (node, _) in enumerate(outputs):  # the measured graph's norms, by their statistics' names
        mean = sums[2 * index] / count
        measured[node.input[3]] = mean
        measured[node.input[4]] = np.maximum(sums[2 * index + 1] / count - mean ** 2, 0)
    return with_params(model, measured)
