"""shrink / train / evaluate on small models and random data: budgets, data checks, checkpoints."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from builders import random_dataset, small_bn_net
from conftest import REPO
from morphnet_onnx import MorphNetError
from morphnet_onnx.cli import main
from morphnet_onnx.recipes.shrink import Budget, evaluate, shrink, train
from morphnet_onnx.surgery.pruning import prepare
from morphnet_onnx.method.regularizers import add_regularizer, group_regularizers, group_vectors
from morphnet_onnx.loading.model import load
from morphnet_onnx.loading.runtime import make_session
from morphnet_onnx.training.trainer import TrainOptions

TINY = REPO / "models" / "tiny_resnet.onnx"


@pytest.fixture
def data(tmp_path):
    return random_dataset(tmp_path, 96, 40, val_key="x")  # a single-input model's data may say `x`


def quick(**kw):
    kw.setdefault("batch_size", 16)
    return TrainOptions(progress=False, **kw)


def test_public_api_exposes_training_lazily():
    code = ("import sys, morphnet_onnx as m; assert 'onnxruntime.training' not in sys.modules; "
            "assert callable(m.shrink) and callable(m.train) and callable(m.evaluate); "
            "assert m.TrainOptions().epochs == 15 and m.Budget('flops', '0.5x').target(10) == 5")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_torch_is_not_needed():
    # onnxruntime-training imports torch by itself where it is installed (a dev venv): block it, so
    # the test means the same everywhere: the training path runs on a machine without torch.
    code = ("import sys; sys.modules['torch'] = None\n"
            "import morphnet_onnx.training.ort, morphnet_onnx.recipes.shrink\n"
            "from morphnet_onnx.training.ort import api, artifacts, onnxblock")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_default_backend_never_imports_torch(data):
    """`train` on the default (ort) backend, end to end, in a process where importing torch fails."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from morphnet_onnx.cli import main\n"
            f"code = main(['train', {str(TINY)!r}, '--data', {str(data / 'train.npz')!r}, '--steps', '2', "
            f"'--batch-size', '16', '-o', {str(data / 'o.onnx')!r}, '--no-progress'])\n"
            "assert code == 0 and 'morphnet_onnx.training.torch_backend' not in sys.modules\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (data / "o.onnx").exists()


def test_shrink_meets_a_flops_budget_and_writes_a_valid_model(data):
    out = data / "small.onnx"
    result = shrink(TINY, data / "train.npz", out, val=data / "val.npz", budget=Budget("flops", "0.5x"),
                    options=quick(steps=6), structure_path=data / "s.json")
    assert result.flops_after <= 0.5 * result.flops_before
    onnx.checker.check_model(str(out), full_check=True)
    make_session(onnx.load(str(out)))
    assert result.validation.examples == 40 and 0 <= result.validation.accuracy <= 1
    doc = json.loads((data / "s.json").read_text())
    assert doc["format"] == "morphnet-onnx-structure"


def test_shrink_size_budget_absolute(data):
    result = shrink(TINY, data / "train.npz", data / "small.onnx", budget=Budget("size", "20K"), options=quick(steps=4))
    assert result.resource == "size" and result.cost_after <= 20_000


def test_budget_below_the_unprunable_part_is_refused(data):
    with pytest.raises(MorphNetError, match="below what the unprunable part"):
        shrink(TINY, data / "train.npz", data / "x.onnx", budget=Budget("flops", "10"), options=quick(steps=2))
    assert not (data / "x.onnx").exists()


@pytest.mark.parametrize("text,full,expected", [("0.5x", 100.0, 50.0), ("2.1G", 1.0, 2.1e9), ("300k", 1.0, 3e5)])
def test_budget_parsing(text, full, expected):
    assert Budget("flops", text).target(full) == pytest.approx(expected)


def test_latency_budget_units():
    assert Budget("latency", "1.5ms").target(1.0) == pytest.approx(1.5e-3)
    with pytest.raises(MorphNetError, match="expected e.g."):
        Budget("latency", "fast").target(1.0)


@pytest.mark.parametrize("kind, grouping", [("group-lasso", "max"), ("group-lasso", "l2"), ("gamma", "l2")])
def test_regularizer_subgraph_matches_numpy(kind, grouping):
    loaded, analysis = prepare(TINY)
    regs = group_regularizers(analysis, loaded, kind, grouping)
    assert any(len(r.members) > 1 for r in regs)  # residual streams: the grouping is exercised
    graph = onnx.GraphProto()
    graph.CopyFrom(loaded.model.graph)
    out = add_regularizer(graph, regs)
    del graph.output[:]
    graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    model = onnx.helper.make_model(graph, opset_imports=loaded.model.opset_import)
    model.ir_version = 8
    got = make_session(model).run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})[0]
    params = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.model.graph.initializer}
    expected = np.concatenate([group_vectors(regs, params)[r.group_id] for r in regs])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert {m.kind for r in group_regularizers(analysis, loaded, "auto") for m in r.members} == {"gamma"}


def test_train_checkpoint_and_resume_after_a_kill(data, kill_training_at):
    ckpt = data / "ckpt"
    with kill_training_at(5), pytest.raises(KeyboardInterrupt):  # killed after the checkpoint at step 4
        train(TINY, data / "train.npz", data / "a.onnx", options=quick(steps=7, checkpoint_dir=ckpt,
                                                                      checkpoint_every=2))
    assert json.loads((ckpt / "state.json").read_text())["step"] == 4
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint-00000004", "state.json"]
    assert not (data / "a.onnx").exists()
    resumed = train(TINY, data / "train.npz", data / "b.onnx", options=quick(steps=7, checkpoint_dir=ckpt, resume=True))
    assert resumed.steps == 7
    train(TINY, data / "train.npz", data / "c.onnx", options=quick(steps=7))  # never killed
    # Exact: the same data order, optimizer state and learning rates as the run never killed.
    assert (data / "b.onnx").read_bytes() == (data / "c.onnx").read_bytes()


@pytest.mark.slow
def test_shrink_resumes_mid_interval_to_the_same_result(data, kill_training_at):
    """Killed at a step between two lambda updates, with FiGS noise drawn every step: the resumed run
    feeds the cost weights of the last update (not new ones), the same noise, and writes the bytes of
    the run never killed; a checkpoint of another run is refused."""
    ckpt = data / "ck"

    def run(out, **kw):  # (no steps after the cut: all 5 steps are the regularized run that is killed)
        return shrink(TINY, data / "train.npz", data / out, budget=Budget("flops", "0.6x"), regularizer="figs",
                      options=quick(steps=5, **kw), force=True, structure_path=data / f"{out}.json",
                      finetune_steps=0)

    with kill_training_at(4, "shrink"), pytest.raises(KeyboardInterrupt, match="step 4 of 5; the checkpoint of step 3"):
        run("a.onnx", checkpoint_dir=ckpt, checkpoint_every=3)
    with pytest.raises(MorphNetError, match="another run .*total_steps"):
        shrink(TINY, data / "train.npz", data / "x.onnx", budget=Budget("flops", "0.6x"), regularizer="figs",
               options=quick(steps=6, checkpoint_dir=ckpt, resume=True), force=True, finetune_steps=0)
    resumed = run("b.onnx", checkpoint_dir=ckpt, resume=True)
    whole = run("c.onnx")
    assert resumed.steps == whole.steps == 5
    assert resumed.lambda_log == whole.lambda_log and resumed.learning == whole.learning
    assert (data / "b.onnx").read_bytes() == (data / "c.onnx").read_bytes()
    assert (data / "b.onnx.json").read_bytes() == (data / "c.onnx.json").read_bytes()


def test_nan_loss_stops_with_a_clear_message(data):
    with pytest.raises(MorphNetError, match="the loss became"):
        train(TINY, data / "train.npz", data / "x.onnx", options=quick(steps=30, lr=1e6, schedule="constant"))
    assert not (data / "x.onnx").exists()


@pytest.mark.parametrize("arrays,match", [
    ({"wrong": np.zeros((4, 3, 32, 32), np.float32), "labels": np.zeros(4, np.int64)}, "no array for model input"),
    ({"input": np.zeros((4, 3, 16, 16), np.float32), "labels": np.zeros(4, np.int64)}, "wants \\[3, 32, 32\\]"),
    ({"input": np.zeros((4, 3, 32, 32), np.float64), "labels": np.zeros(4, np.int64)}, "save it as float32"),
    ({"input": np.zeros((4, 3, 32, 32), np.float32), "labels": np.full(4, 12)}, "10 classes"),
    ({"input": np.zeros((0, 3, 32, 32), np.float32), "labels": np.zeros(0, np.int64)}, "empty"),
    ({"input": np.zeros((4, 3, 32, 32), np.float32)}, "no 'labels'"),
])
def test_bad_data_is_one_line_exit_2(tmp_path, arrays, match, capsys):
    np.savez(tmp_path / "d.npz", **arrays)
    code = main(["train", str(TINY), "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "o.onnx"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    import re
    assert re.search(match, err), err
    assert not (tmp_path / "o.onnx").exists()


def test_cli_shrink_train_evaluate(data, capsys):
    out = data / "s.onnx"
    assert main(["shrink", str(TINY), "--data", str(data / "train.npz"), "--val", str(data / "val.npz"),
                 "--budget-flops", "0.6x", "--steps", "4", "--batch-size", "16", "-o", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["flops_after"] <= 0.6 * doc["flops_before"] and "accuracy" in doc["validation"]
    assert main(["evaluate", str(out), "--data", str(data / "val.npz"), "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1
    assert main(["shrink", str(TINY), "--data", str(data / "train.npz"), "--strength", "1e-12", "--steps", "2",
                 "--batch-size", "2", "-o", str(data / "t.onnx")]) == 0


def test_evaluate_api(data):
    result = evaluate(TINY, data / "val.npz")
    assert result.examples == 40 and 0 <= result.top5 <= 1 and result.accuracy <= result.top5


def test_mse_regression(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "r.npz", input=rng.standard_normal((32, 3, 32, 32)).astype(np.float32),
             labels=rng.standard_normal((32, 10)).astype(np.float32))
    result = train(TINY, tmp_path / "r.npz", tmp_path / "r.onnx", val=tmp_path / "r.npz",
                   options=quick(steps=3, loss="mse"))
    assert result.validation.mse > 0 and result.validation.accuracy is None
    assert evaluate(tmp_path / "r.onnx", tmp_path / "r.npz", loss="mse").mse == pytest.approx(result.validation.mse)


def test_data_module(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    result = shrink(TINY, None, tmp_path / "m.onnx", budget=Budget("flops", "0.7x"),
                    options=quick(steps=2, batch_size=8), data_module="helpers.batches:tiny_batches")
    assert result.flops_after <= 0.7 * result.flops_before
    with pytest.raises(MorphNetError, match="cannot import"):
        shrink(TINY, None, tmp_path / "m2.onnx", budget=Budget("flops", "0.7x"), options=quick(steps=2),
               data_module="nope.missing:fn")


@pytest.mark.parametrize("op", ["HardSwish", "HardSigmoid", "InstanceNormalization", "LayerNormalization", "Resize",
                                "CastLike"])
def test_ops_without_gradients_are_rewritten_and_train(tmp_path, op):
    from builders import Net

    net = Net(input_shape=(1, 3, 8, 8), batch="N", seed=2)
    x = net.conv("input", 3, 6, name="c1")
    if op == "InstanceNormalization":
        x = net.op(op, [x, net.const(np.linspace(0.5, 1.5, 6).astype(np.float32)),
                        net.const(np.linspace(-0.2, 0.2, 6).astype(np.float32))])
    elif op == "LayerNormalization":
        x = net.op(op, [x, net.const(np.ones(8, np.float32)), net.const(np.zeros(8, np.float32))], axis=-1)
    elif op == "Resize":
        x = net.op(op, [x, "", net.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    elif op == "CastLike":  # the dynamo exporter's optimize=False graphs: a constant cast like an activation
        x = net.op("Mul", [x, net.op(op, [net.const(np.array(1.5, np.float64)), x])])
    else:
        x = net.op(op, [x])
    x = net.op("Flatten", [net.op("GlobalAveragePool", [net.conv(x, 6, 4, name="c2")])], axis=1)
    model = net.model(net.gemm(x, 4, 3, name="fc"))
    onnx.save(model, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((8, 3, 8, 8)).astype(np.float32),
             labels=rng.integers(0, 3, 8))
    result = shrink(tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "o.onnx", strength=1e-12,
                    options=quick(steps=2, batch_size=2))
    written = onnx.load(str(tmp_path / "o.onnx"))
    assert op in {n.op_type for n in written.graph.node}  # the rewrite stays out of the written model
    assert result.steps == 2


def test_native_crash_in_the_probe_becomes_one_line(tmp_path, monkeypatch):
    import subprocess as sp

    from morphnet_onnx.training import probe

    def crashed(*args, **kwargs):
        return sp.CompletedProcess(args, -8, "", "Non-zero status code returned while running AveragePoolGrad "
                                                 "node. Name:'pool_grad'\n")

    monkeypatch.setattr(probe.subprocess, "run", crashed)
    with pytest.raises(MorphNetError, match=r"m.onnx: onnxruntime crashed \(SIGFPE\) in op 'pool_grad'"):
        probe.run_probe(tmp_path, [np.zeros(2, np.float32)], "m.onnx")


def test_probe_reports_onnxruntime_errors(tmp_path):
    from morphnet_onnx.training import probe

    with pytest.raises(MorphNetError, match="m.onnx: onnxruntime cannot take a training step"):
        probe.run_probe(tmp_path, [np.zeros(2, np.float32)], "m.onnx")  # no artifacts there


def test_ops_nothing_reads_do_not_break_training(tmp_path):
    """NF-ResNet: once its standardized weights are folded, the weight-standardization
    BatchNormalization is read by nothing; its scale must not become an unreachable trainable leaf."""
    from builders import Net

    net = Net(input_shape=(1, 3, 8, 8), batch="N", seed=3)
    x = net.relu(net.conv("input", 3, 6, name="c1"))
    net.op("BatchNormalization", [net.const(np.ones((1, 6, 27), np.float32)), net.const(np.ones(6, np.float32)),
                                  net.const(np.zeros(6, np.float32)), net.const(np.zeros(6, np.float32)),
                                  net.const(np.ones(6, np.float32))], name="dead_bn")
    x = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    model = net.model(net.gemm(x, 6, 3, name="fc"))
    onnx.save(model, tmp_path / "nf.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((4, 3, 8, 8)).astype(np.float32),
             labels=rng.integers(0, 3, 4))
    result = train(tmp_path / "nf.onnx", tmp_path / "d.npz", tmp_path / "o.onnx", options=quick(steps=2, batch_size=2))
    assert result.steps == 2


def test_shrink_latency_budget(data):
    result = shrink(TINY, data / "train.npz", data / "lat.onnx", budget=Budget("latency", "0.6x"), hardware="T4",
                    options=quick(steps=3))
    assert result.resource == "latency" and result.cost_after <= 0.6 * result.cost_before


def test_shrink_save_structure_and_the_deprecated_spelling(data, capsys):
    common = ["shrink", str(TINY), "--data", str(data / "train.npz"), "--budget-flops", "0.7x", "--steps", "2",
              "--batch-size", "16", "--force", "--no-progress", "--finetune-steps", "0"]
    assert main(common + ["-o", str(data / "a.onnx"), "--save-structure", str(data / "a.json")]) == 0
    assert json.loads((data / "a.json").read_text())["format"] == "morphnet-onnx-structure"
    assert "deprecated" not in capsys.readouterr().err
    assert main(common + ["-o", str(data / "b.onnx"), "--structure", str(data / "b.json")]) == 0
    assert (data / "b.json").exists()
    assert "--save-structure" in capsys.readouterr().err


def test_train_init_fresh_starts_from_new_weights(data):
    kept = train(TINY, data / "train.npz", None, options=quick(steps=1, lr=1e-9))
    # (seed 0 would redraw this model's own weights: models/make_examples.py draws them the same way)
    fresh = train(TINY, data / "train.npz", None, options=quick(steps=1, lr=1e-9, seed=5), init="fresh")
    original = {t.name: t for t in onnx.load(str(TINY)).graph.initializer}
    conv = next(n for n in fresh.model.graph.node if n.op_type == "Conv").input[1]
    value = lambda model: next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == conv)
    assert np.allclose(value(kept.model), onnx.numpy_helper.to_array(original[conv]), atol=1e-6)
    assert not np.allclose(value(fresh.model), onnx.numpy_helper.to_array(original[conv]), atol=1e-3)
    with pytest.raises(MorphNetError, match="--init"):
        train(TINY, data / "train.npz", None, options=quick(steps=1), init="warm")


def test_batchnorm_statistics_need_no_rank_and_take_the_training_batch():
    """A norm over an initializer of rank 3 (a weight standardization, whose rank shape inference does
    not report) and a norm of a model exported with a fixed batch of 1, measured at batch 4."""
    from onnx import helper, numpy_helper

    from morphnet_onnx.training.evaluation import evaluate_model
    from morphnet_onnx.training.batchnorm import recalibrate_batchnorm
    from morphnet_onnx.training.arrays import ArrayDataset as Dataset

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((1, 2, 5)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    for prefix, width, fill in (("a", 2, 0.0), ("b", 3, 0.0)):
        for slot, value in (("s", 1.0), ("t", 0.0), ("m", fill), ("v", 1.0)):
            inits.append(numpy_helper.from_array(np.full(width, value, np.float32), f"{prefix}.{slot}"))
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["w", "a.s", "a.t", "a.m", "a.v"], ["w_std"]),
         helper.make_node("BatchNormalization", ["x", "b.s", "b.t", "b.m", "b.v"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((8, 3, 4)).astype(np.float32) * 2 + 1
    measured = recalibrate_batchnorm(model, Dataset({"x": x}, np.zeros(8, np.int64), "d"), batch=4)
    values = {t.name: numpy_helper.to_array(t) for t in measured.graph.initializer}
    np.testing.assert_allclose(values["a.m"], weight.mean(axis=(0, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values["a.v"], weight.var(axis=(0, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(values["b.m"], x.mean(axis=(0, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values["b.v"], x.var(axis=(0, 2)), rtol=1e-4, atol=1e-6)
    # The fixed batch of 1 is also how it is evaluated: 8 examples, one at a time.
    assert evaluate_model(measured, Dataset({"x": x}, x, "d"), "mse").examples == 8


def test_outputs_that_would_overwrite_an_input_are_refused_before_training(data):
    before = (data / "train.npz").read_bytes()
    with pytest.raises(MorphNetError, match="-o .*train.npz: refusing to overwrite the input"):
        train(TINY, data / "train.npz", data / "train.npz", options=quick(steps=2))
    with pytest.raises(MorphNetError, match="--save-structure .*val.npz: refusing to overwrite the input"):
        shrink(TINY, data / "train.npz", data / "s.onnx", val=data / "val.npz", strength=1e-3,
               structure_path=data / "val.npz", options=quick(steps=2))
    assert (data / "train.npz").read_bytes() == before and not (data / "s.onnx").exists()


@pytest.mark.slow
def test_the_same_seed_writes_the_same_bytes_at_any_thread_count(tmp_path):
    """With 1 or 3 onnxruntime threads (run after run too, then: tests/test_interrupt.py compares the
    bytes of separate processes; docs/training.md#determinism)."""
    small_bn_net(tmp_path)
    written = []
    for threads in (1, 3):
        out = tmp_path / f"out{len(written)}.onnx"
        shrink(tmp_path / "net.onnx", tmp_path / "train.npz", out, budget=Budget("flops", "0.6x"), force=True,
               options=TrainOptions(steps=30, batch_size=8, threads=threads, seed=5, progress=False),
               structure_path=tmp_path / f"{out.name}.json")
        written.append((out.read_bytes(), (tmp_path / f"{out.name}.json").read_bytes()))
    assert written[0] == written[1]


def test_transformer_biases_and_token_tables_train(tmp_path):
    """torch's exporters write a Linear on a rank-3 input as MatMul + Add: the Add's vector is the
    layer's bias and trains, and so do a position table added to the tokens and a class token
    concatenated to them (all were frozen: no bias or position table of a transformer learned); an
    additive mask (values like -1e9) and a table read only by constants stay frozen."""
    from builders import Net
    from onnx import helper, numpy_helper

    from morphnet_onnx.training.graph import token_table_slots, trainable_slots, training_graph

    rng = np.random.default_rng(0)
    net = Net(input_shape=(1, 4, 8), batch="N", seed=0)
    x = net.op("MatMul", ["input", net.const(rng.standard_normal((8, 6)).astype(np.float32), name="fc.weight")])
    # a (1, 1, C) bias, as surgery writes a removed unit's constant after a MatMul: a bias and a
    # token table at once, listed once (twice, it was untied from itself and onnxruntime failed)
    x = net.op("Add", [net.const(rng.standard_normal((1, 1, 6)).astype(np.float32), name="fc.bias"), x])
    x = net.op("Add", [x, net.const(0.02 * rng.standard_normal((1, 4, 6)).astype(np.float32), name="pos")])
    x = net.op("ReduceMean", [x], axes=[1], keepdims=0)
    loaded = load(net.model(net.gemm(x, 6, 3, name="head")))
    graph = training_graph(loaded, batch=2)
    assert {"fc.bias", "fc.weight", "pos"} <= set(graph.trainable)
    assert [n.input[i] for n, i in trainable_slots(loaded.model.graph) if n.op_type == "Add"] == ["fc.bias", "pos"]
    mask = numpy_helper.from_array(np.full((1, 4, 4), -1e9, np.float32), "mask")
    add_mask = helper.make_node("Add", ["scores", "mask"], ["masked"])
    assert token_table_slots(add_mask, {"mask": mask}) == []
    onnx.save(loaded.model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((16, 4, 8)).astype(np.float32), labels=rng.integers(0, 3, 16))
    train(tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "t.onnx", options=quick(steps=3, batch_size=4))
    before, after = ({t.name: numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer}
                     for p in (tmp_path / "m.onnx", tmp_path / "t.onnx"))
    assert not np.allclose(before["fc.bias"], after["fc.bias"]) and not np.allclose(before["pos"], after["pos"])


def test_native_errors_give_their_reason_not_a_signature():
    from morphnet_onnx.errors import native_reason

    signature = "/onnxruntime_src/x/builder.cc:141 onnxruntime::training::Builder::Builder(onnxruntime::Graph*, " \
                "const std::unordered_set<std::string>&, const onnxruntime::logging::Logger&) "
    assert native_reason(RuntimeError(signature + "w couldn't find the consumer node.")) == \
        "w couldn't find the consumer node."
    assert native_reason(RuntimeError(signature + "gradient_builder != nullptr was false. The gradient builder has "
                                      "not been registered: CastLike for node c")) == \
        "The gradient builder has not been registered: CastLike for node c"
    assert native_reason(RuntimeError("plain\nlast line")) == "last line"


def test_training_mode_norms_run_without_onnxruntimes_graph_optimizations():
    """onnxruntime 1.19's graph optimizations compute a training-mode BatchNormalization wrongly when
    its statistics outputs are unread (scale 0 and shift 0 gave nonzero outputs): the batch-statistics
    pass (batchnorm.py) opens its session with `optimize=False`. Found on a shrunk ResNet whose
    branch was held at zero: 98.7% in its session, 18.1% with the statistics measured that way."""
    from onnx import helper, numpy_helper

    from morphnet_onnx.training.arrays import ArrayDataset as Dataset
    from morphnet_onnx.training.batchnorm import recalibrate_batchnorm

    inits = [numpy_helper.from_array(np.full(4, v, np.float32), n) for n, v in (("s", 0.0), ("b", 0.0), ("m", 0.0),
                                                                                ("v", 1.0))]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [8, 4, 5, 5])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    x = (np.random.default_rng(0).standard_normal((8, 4, 5, 5)) * 3 + 1).astype(np.float32)
    assert np.abs(make_session(model, optimize=False).run(None, {"x": x})[0]).max() == 0.0
    measured = recalibrate_batchnorm(model, Dataset({"x": x}, np.zeros(8, np.int64), "d"), batch=8)
    stats = {t.name: numpy_helper.to_array(t) for t in measured.graph.initializer}
    np.testing.assert_allclose(stats["m"], x.mean(axis=(0, 2, 3)), rtol=1e-5)
