"""tools/bench_speed.py's `materialize`: the light torchvision copies' placeholders become random
initializers of the same names and shapes, the model's own ConstantOfShape nodes stay. The benchmark
itself takes minutes and measures time: it is never run by the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from morphnet_onnx import inspect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))  # bench_speed imports its sibling tools
spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "tools" / "bench_speed.py")
bs = importlib.util.module_from_spec(spec)
sys.modules["bench_speed"] = bs
spec.loader.exec_module(bs)


def test_light_resnet18_gets_real_weights_and_keeps_its_costs():
    light = onnx.load(str(ROOT / "tests" / "data" / "torchvision" / "resnet18_bn.onnx"))
    placeholders = {n.output[0]: n.input[0] for n in light.graph.node if n.op_type == "ConstantOfShape"}
    model, count = bs.materialize(light)
    onnx.checker.check_model(model, full_check=True)
    assert count == len(placeholders) > 0
    assert not any(n.op_type == "ConstantOfShape" for n in model.graph.node)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert not any(name.endswith(bs.SHAPE_SUFFIX) for name in weights)
    for name, shape_name in placeholders.items():
        shape = numpy_helper.to_array(next(t for t in light.graph.initializer if t.name == shape_name))
        assert list(weights[name].shape) == shape.tolist()
        assert np.unique(weights[name]).size > 1  # random, not a constant fill
    assert (weights["bn1.running_var"] > 0).all() and (weights["bn1.weight"] > 0).all()
    before, after = inspect(light), inspect(model)
    assert after.costs.flops == before.costs.flops and after.costs.params == before.costs.params


def test_constant_node_placeholder_and_the_models_own_constant_of_shape():
    shape = numpy_helper.from_array(np.array([4, 3], np.int64), "w" + bs.SHAPE_SUFFIX)
    fill = numpy_helper.from_array(np.array([0.5], np.float32))
    nodes = [
        helper.make_node("Constant", [], ["w" + bs.SHAPE_SUFFIX], value=shape),
        helper.make_node("ConstantOfShape", ["w" + bs.SHAPE_SUFFIX], ["w"], value=fill),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("Shape", ["y"], ["s"]),
        helper.make_node("ConstantOfShape", ["s"], ["z"], value=fill),  # the model's own: stays
        helper.make_node("Add", ["y", "z"], ["out"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])])
    model, count = bs.materialize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(model, full_check=True)
    assert count == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Shape", "ConstantOfShape", "Add"]
    assert [t.name for t in model.graph.initializer] == ["w"]
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == (4, 3)
