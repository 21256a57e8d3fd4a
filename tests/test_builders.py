"""morphnet_onnx.builders: the one graph builder; the bundled example models are what it builds."""

import doctest
import importlib.util

import onnx
import pytest

from conftest import REPO
from morphnet_onnx import builders
from morphnet_onnx.builders import Net


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "models" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script, function, file", [
    ("make_examples", "tiny_resnet", "tiny_resnet.onnx"),
    ("make_mnist1d", "resnet1d", "resnet1d_mnist1d.onnx"),
])
def test_bundled_models_are_what_their_scripts_build(script, function, file):
    built = getattr(_script(script), function)()
    assert built.SerializeToString() == (REPO / "models" / file).read_bytes()


def test_docstring_example():
    assert doctest.testmod(builders).failed == 0


def test_outputs_declared_or_inferred():
    net = Net(input_shape=(1, 3, 8, 8), batch="N")
    y = net.gemm(net.op("Flatten", [net.op("GlobalAveragePool", [net.conv("input", 3, 4)])]), 4, 2)
    inferred = net.model(y)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 2]
    declared = net.model(y, graph_name="g", output_shapes={y: ["N", 2]}, producer_name="p")
    assert declared.graph.name == "g" and declared.producer_name == "p"
    onnx.checker.check_model(declared, full_check=True)


def test_named_outputs():
    net = Net()
    assert net.op("Relu", ["input"], name="r", outputs=["y"]) == "y"
    assert net.op("Split", ["y"], name="s", outputs=["a", "b"], axis=1) == ["a", "b"]
    assert net.op("Split", ["y"], n_outputs=2, name="t", axis=1) == ["t_out0", "t_out1"]
