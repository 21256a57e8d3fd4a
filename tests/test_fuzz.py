"""Fuzzing: valid models mutated (inputs dropped, dims wrong, attributes bad, cycles, duplicate names)
through loading, analysis, check and prune. Only the tool's own one-line MorphNetError may escape.

The CI run is a few dozen examples; `pytest -m slow tests/test_fuzz.py` runs a longer one.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import failsafe_models as fm
from conftest import REPO
from morphnet_onnx import MorphNetError, check, prune
from morphnet_onnx.cli import main
from morphnet_onnx.surgery.pruning import prepare

BASES = {"good": fm.good, "multi_io": fm.multi_io, "if": fm.with_if, "qdq": fm.qdq,
         "tiny_resnet": lambda: onnx.load(str(REPO / "models" / "tiny_resnet.onnx"))}
BAD_ATTRIBUTES = [("kernel_shape", [5, 5]), ("kernel_shape", [0]), ("group", 3), ("group", 0), ("pads", [-1] * 4),
                  ("strides", [0, 0]), ("dilations", [9, 9]), ("axis", 7), ("axis", -9), ("perm", [0, 0]),
                  ("epsilon", -1.0), ("transB", 5), ("alpha", float("nan"))]


def _node_index(draw, model) -> int:
    return draw(st.integers(0, len(model.graph.node) - 1))


def mutate(draw, model: onnx.ModelProto) -> str:
    """One random change to `model` (in place); its description."""
    graph = model.graph
    kind = draw(st.sampled_from(["drop_input", "drop_initializer", "drop_node", "drop_output", "input_dims",
                                 "weight_dims", "weight_dtype", "bad_attribute", "cycle", "duplicate_output",
                                 "duplicate_node_name", "duplicate_initializer", "op_type", "shuffle", "opset",
                                 "rename_input", "empty_input_name", "scalar_weight", "truncated_weight",
                                 "untyped_input", "attribute_type"]))
    if not graph.node:
        return "nothing left to change"
    i = _node_index(draw, model)
    node = graph.node[i]
    if kind == "drop_input" and graph.input:
        del graph.input[draw(st.integers(0, len(graph.input) - 1))]
    elif kind == "drop_initializer" and graph.initializer:
        del graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
    elif kind == "drop_node":
        del graph.node[i]
    elif kind == "drop_output" and graph.output:
        del graph.output[draw(st.integers(0, len(graph.output) - 1))]
    elif kind == "input_dims" and graph.input:
        dims = graph.input[0].type.tensor_type.shape.dim
        if len(dims) > 1:
            dims[draw(st.integers(1, len(dims) - 1))].dim_value = draw(st.sampled_from([0, 1, 2, 5, 1000]))
    elif kind in ("weight_dims", "weight_dtype", "scalar_weight") and graph.initializer:
        t = graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
        try:
            value = numpy_helper.to_array(t)
        except ValueError:  # truncated by an earlier change
            return f"{kind} skipped: {t.name} unreadable"
        if kind == "weight_dims":
            value = np.resize(value, tuple(max(1, d + draw(st.integers(-1, 2))) for d in value.shape) or (2,))
        elif kind == "weight_dtype":
            value = value.astype(draw(st.sampled_from([np.float16, np.int64, np.int32, np.float64, np.bool_])))
        else:
            value = np.asarray(value.reshape(-1)[:1].reshape(()) if value.size else 0, value.dtype)
        t.CopyFrom(numpy_helper.from_array(value, t.name))
    elif kind == "bad_attribute":
        name, value = draw(st.sampled_from(BAD_ATTRIBUTES))
        for a in list(node.attribute):
            if a.name == name:
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(name, value))
    elif kind == "cycle" and i + 1 < len(graph.node) and node.input:
        later = graph.node[draw(st.integers(i + 1, len(graph.node) - 1))]
        node.input[0] = later.output[0]
    elif kind == "duplicate_output" and len(graph.node) > 1:
        other = graph.node[(i + 1) % len(graph.node)]
        node.output[0] = other.output[0]
    elif kind == "duplicate_node_name" and len(graph.node) > 1:
        node.name = graph.node[(i + 1) % len(graph.node)].name
    elif kind == "duplicate_initializer" and len(graph.initializer) > 1:
        graph.initializer[1].name = graph.initializer[0].name
    elif kind == "op_type":
        node.op_type = draw(st.sampled_from(["Relu", "Conv", "Gemm", "Concat", "Reshape", "Nonexistent", "Add"]))
    elif kind == "shuffle":
        order = draw(st.permutations(range(len(graph.node))))
        nodes = [onnx.NodeProto() for _ in order]
        for target, source in zip(nodes, order):
            target.CopyFrom(graph.node[source])
        del graph.node[:]
        graph.node.extend(nodes)
    elif kind == "opset":
        model.opset_import[0].version = draw(st.sampled_from([1, 7, 10, 22, 99]))
    elif kind == "rename_input" and node.input:
        node.input[draw(st.integers(0, len(node.input) - 1))] = "nowhere"
    elif kind == "empty_input_name" and node.input:
        node.input[0] = ""
    elif kind == "truncated_weight" and graph.initializer:
        t = graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
        if not t.raw_data:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))  # as raw_data
        t.raw_data = t.raw_data[: len(t.raw_data) // 2]
    elif kind == "untyped_input" and graph.input:
        graph.input[0].type.Clear()
    elif kind == "attribute_type" and node.attribute:
        a = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
        a.CopyFrom(helper.make_attribute(a.name, "text"))
    return f"{kind} at node {i}"


@st.composite
def mutated_models(draw):
    base = draw(st.sampled_from(sorted(BASES)))
    model = BASES[base]()
    changes = [mutate(draw, model) for _ in range(draw(st.integers(1, 3)))]
    return base, changes, model


def run_pipeline(model: onnx.ModelProto, fraction: float, seed: int) -> None:
    """load -> analysis -> check -> prune: anything but a MorphNetError is an escape."""
    try:
        loaded, analysis = prepare(model)
        check(model, fraction=fraction, seed=seed)
        first = next((g for g in analysis.prunable_groups), None)
        structure = {first.sources[0]: max(1, first.width // 2)} if first is not None else {}
        prune(model, structure)
    except MorphNetError as exc:
        text = str(exc)
        assert "\n" not in text and len(text) < 600, text


def _fuzz(example) -> None:
    base, changes, model = example
    try:
        run_pipeline(model, 0.5, 0)
    except AssertionError:
        raise
    except Exception as exc:  # an escape: show what was done to which model
        raise AssertionError(f"{base} after {changes}: {type(exc).__name__}: {exc}") from exc


FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=30, **FUZZ_SETTINGS)
@given(mutated_models())
def test_fuzz_mutated_models(example):
    _fuzz(example)


@pytest.mark.slow
@settings(max_examples=1000, **{**FUZZ_SETTINGS, "derandomize": False})
@given(mutated_models())
def test_fuzz_mutated_models_long(example):
    _fuzz(example)


# The escapes the fuzzer found, each fixed where it starts (io.check_graph, strict shape inference at
# load, check running the model as given), and kept here as one case each.

def _good_with(change) -> onnx.ModelProto:
    model = fm.good()
    change(model.graph, {n.name: n for n in model.graph.node}, {t.name: t for t in model.graph.initializer})
    return model


def _set(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


def _set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


ESCAPES = {
    # an op type changed under its inputs: Conv with a BatchNormalization's five (AxisError in a cutter)
    "schema": (lambda g, n, t: setattr(n["bn_a"], "op_type", "Conv"), "its schema allows 2..3"),
    # int64 conv weights (IndexError in a cutter)
    "weight_type": (lambda g, n, t: _set(t["a.w"], numpy_helper.to_array(t["a.w"]).astype(np.int64)),
                    "inconsistent, shape inference fails"),
    # a norm's mean as a scalar (ValueError in surgery's values)
    "rank": (lambda g, n, t: _set(t["bn_p.mean"], np.float32(0)), "inconsistent, shape inference fails"),
    # an input declared with 2 channels for a conv of 3 (onnxruntime's Fail escaped from check)
    "input_channels": (lambda g, n, t: setattr(g.input[0].type.tensor_type.shape.dim[1], "dim_value", 2),
                       "'a' (Conv) reads 2 channels, its weights [8, 3, 3, 3] (group 1) want 3"),
    # per-channel parameters of the wrong length (IndexError in a cutter, ValueError in surgery's values)
    "bias_length": (lambda g, n, t: _set(t["a.b"], np.zeros(7, np.float32)), "has 'a.b' of shape [7] for its 8"),
    "norm_length": (lambda g, n, t: _set(t["bn_p.var"], np.ones(9, np.float32)), "the model is inconsistent"),
    # a standard op that does not exist, and one given fewer inputs than its schema wants (shape
    # inference skips what follows an unknown op: IndexError in the Reshape rule)
    "unknown_op": (lambda g, n, t: setattr(n["bn_a"], "op_type", "Nonexistent"), "not an ONNX operator at opset 17"),
    "input_count": (lambda g, n, t: setattr(n["flat"], "op_type", "Reshape"), "its schema allows 2..2"),
    # a norm's epsilon as a string (numpy's UFuncTypeError in surgery's values)
    "attribute_type": (lambda g, n, t: _set_attribute(n["bn_a"], "epsilon", "text"),
                       "its attribute 'epsilon' of type STRING, its schema wants FLOAT"),
    # a zero stride: onnx's shape inference died with SIGFPE (the whole process)
    "zero_stride": (lambda g, n, t: _set_attribute(n["b"], "strides", [0, 0]),
                    "'b' (Conv) has strides [0, 0], which must be above 0"),
    "zero_group": (lambda g, n, t: _set_attribute(n["b"], "group", 0),
                   "'b' (Conv) has group 0, which must be above 0"),
    # negative conv pads: onnxruntime crashed the process (SIGSEGV) in check
    "negative_pads": (lambda g, n, t: _set_attribute(n["a"], "pads", [-1] * 4),
                      "'a' (Conv) has pads [-1, -1, -1, -1], which must be 0 or more"),
    # a GlobalAveragePool turned into a Relu: the head's Gemm gets 512 features for weights made for 8
    # (IndexError in the Gemm cutter)
    "gemm_features": (lambda g, n, t: setattr(n["pool"], "op_type", "Relu"),
                      "'fc' (Gemm) multiplies 512 features by weights [4, 8] made for 8"),
    # raw bytes cut short (numpy_helper's ValueError wherever the tensor was first decoded)
    "truncated_tensor": (lambda g, n, t: setattr(t["b.w"], "raw_data", t["b.w"].raw_data[:100]),
                         "initializer 'b.w' of dims [8, 8, 3, 3] holds 100 bytes, not 2304"),
    "dangling": (lambda g, n, t: n["b"].input.__setitem__(0, "nowhere"),
                 "reads 'nowhere', which no node, input or initializer provides"),
    "written_twice": (lambda g, n, t: n["bn_a"].output.__setitem__(0, n["a"].output[0]), "is written twice"),
    "cycle": (lambda g, n, t: n["a"].input.__setitem__(0, n["b"].output[0]), "nodes out of topological order"),
    "output_not_computed": (lambda g, n, t: setattr(g.output[0], "name", "logits"), "computed by no node"),
}


def test_check_names_a_model_onnxruntime_cannot_run(tmp_path, capsys):
    """A QuantizeLinear scale of 3 values for 8 channels: only onnxruntime notices (it escaped check)."""
    model = fm.qdq()
    scale = next(t for t in model.graph.initializer if t.name == "s")
    _set(scale, np.full(3, 0.05, np.float32))
    model.graph.node.remove(next(n for n in model.graph.node if n.name == "dq_w"))
    dq_w = helper.make_node("DequantizeLinear", ["q.w_int8", "s_w", "z"], ["dq_w_out"], name="dq_w")
    model.graph.node.insert(0, dq_w)
    model.graph.initializer.append(numpy_helper.from_array(np.float32(0.05), "s_w"))
    with pytest.raises(MorphNetError, match="onnxruntime cannot run the model on random inputs"):
        check(model)


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_fuzz_escape_is_one_line(case, tmp_path, capsys):
    change, match = ESCAPES[case]
    model = _good_with(change)
    with pytest.raises(MorphNetError, match=re.escape(match)):
        check(model)
    path = tmp_path / f"{case}.onnx"
    onnx.save(model, path)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and match in err


def test_bad_keep_regex_is_one_line():
    with pytest.raises(MorphNetError, match="--keep '\\(': not a regular expression"):
        check(fm.good(), keep=["("])


def test_an_attribute_the_schema_lacks_is_refused_whatever_its_type():
    """A Relu given a string `group`: the positivity check of `group` once compared the string with 0
    (TypeError); onnx's checker refuses the attribute in the model written, so loading refuses it."""
    model = _good_with(lambda g, n, t: _set_attribute(next(x for x in g.node if x.op_type == "Relu"), "group", "x"))
    with pytest.raises(MorphNetError, match="has an attribute 'group' its schema at opset 17 does not know"):
        check(model)
