"""The torch backend (training/torch_backend.py): the same step as onnxruntime-training, the same
structure data-parallel as in one process, checkpoints, and the errors of the seam."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from builders import random_dataset
from conftest import REPO
from morphnet_onnx import LatencySettings, MorphNetError, latency_table
from morphnet_onnx.builders import Net
from morphnet_onnx.cli import main
from morphnet_onnx.loading.view import tensor_value
from morphnet_onnx.method.controller import BudgetController
from morphnet_onnx.cost.resources import parse_hardware
from morphnet_onnx.recipes.shrink import Budget, shrink, train
from morphnet_onnx.surgery.pruning import prepare
from morphnet_onnx.method.regularizers import group_regularizers
from morphnet_onnx.training.data import load_data
from morphnet_onnx.training.trainer import Trainer, TrainOptions

torch = pytest.importorskip("torch", reason="the torch backend needs torch (pip install 'morphnet-onnx[torch]')")
if importlib.util.find_spec("onnx2torch") is None:  # importing it needs the backend's torchvision stand-in
    pytest.skip("the torch backend needs onnx2torch (pip install 'morphnet-onnx[torch]')", allow_module_level=True)

TINY = REPO / "models" / "tiny_resnet.onnx"
LR = 0.01


def plain_net(path, width: int = 8):
    """No BatchNormalization (group-lasso gates), a Gemm without transB (nn.Linear holds it transposed)."""
    net = Net(input_shape=(1, 3, 8, 8), seed=3)
    x = net.relu(net.conv("input", 3, width, name="c1"))
    x = net.relu(net.conv(x, width, width, name="c2"))
    x = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    x = net.relu(net.gemm(x, width, 6, name="fc1"))
    w = net.const(net.rng.normal(0, 0.3, (6, 4)).astype(np.float32), "fc2.w")
    out = net.op("Gemm", [x, w, net.const(np.zeros(4, np.float32), "fc2.b")], name="fc2")
    onnx.save(net.model(out), str(path))
    return path


def learnable_data(folder, examples=128):
    """4 classes that depend on the input (the loss falls), 3x8x8."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((examples, 3, 8, 8)).astype(np.float32)
    labels = (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64) * 2 + (x[:, 1].mean(axis=(1, 2)) > 0)
    np.savez(folder / "train.npz", input=x, labels=labels)
    return folder / "train.npz"


def one_step(model, data_path, backend, optimizer, regularizer, lr=LR):
    """One Trainer step of `backend` (strength mode when regularized): the step's losses, the weights."""
    loaded, analysis = prepare(model, None, None, seed=0)
    data = load_data(data_path, None, loaded, "ce")
    options = TrainOptions(steps=1, batch_size=16, optimizer=optimizer, lr=lr, backend=backend, probe=False,
                           progress=False)
    kind, _, grouping = (regularizer or "").partition(":")  # "gamma:l2": the l2 grouping
    regs = group_regularizers(analysis, loaded, kind, grouping or "max") if regularizer else []
    controller = (BudgetController(analysis, loaded, regs, "flops", None, 5.0, 1e-2, parse_hardware(None, 1))
                  if regs else None)
    result = Trainer(loaded, options, regs, controller).run(data)
    return result.history[0], result.params, {t.name: np.array(tensor_value(t)) for t in loaded.model.graph.initializer}


@pytest.mark.parametrize("model_kind,regularizer", [("tiny", None), ("tiny", "gamma"), ("tiny", "gamma:l2"),
                                                    ("plain", "group-lasso")])
def test_one_step_sgd_matches_ort(tmp_path, model_kind, regularizer):
    """Plain SGD: the update is lr x gradient, so equal weights mean equal loss gradients (task and regularizer)."""
    model = TINY if model_kind == "tiny" else plain_net(tmp_path / "plain.onnx")
    data = (random_dataset(tmp_path, 32, 8) / "train.npz") if model_kind == "tiny" else learnable_data(tmp_path)
    # lr 1: the update is the gradient, far above the float rounding of the weights it is added to
    ort_info, ort_params, before = one_step(model, data, "ort", "sgd", regularizer, lr=1.0)
    torch_info, torch_params, _ = one_step(model, data, "torch", "sgd", regularizer, lr=1.0)
    for key in ("loss", "task", "reg"):
        assert torch_info[key] == pytest.approx(ort_info[key], rel=1e-5, abs=1e-7), key
    if regularizer:
        assert ort_info["reg"] > 0
    assert set(torch_params) == set(ort_params)
    # The step's update (the gradient), compared relative to the largest one: equal to 1e-4 of it.
    updates = {name: (value - before[name], torch_params[name] - before[name]) for name, value in ort_params.items()}
    largest = max(np.abs(ort).max() for ort, _ in updates.values())
    assert largest > 0
    for name, (ort, torch_update) in updates.items():
        np.testing.assert_allclose(torch_update, ort, rtol=0, atol=1e-4 * largest + 1e-7, err_msg=name)


@pytest.mark.parametrize("net", ["resnet18", "mobilenet_v2", "vit"])
def test_torchs_default_exports_step_as_ort_steps(tmp_path, net):
    """tools/first_contact.py's dynamo exports (opset 20: Reshape-19, ReduceMean-18's axes input, Gelu-20,
    a batch fixed at 1): converted at opset 17 and rebatched, one SGD step at batch 16 gives ort's loss
    and update."""
    model = REPO / "tests" / "data" / "torch" / "first_contact" / f"{net}_dynamo.onnx"
    rng = np.random.default_rng(0)
    data = tmp_path / "train.npz"
    np.savez(data, input=rng.standard_normal((32, 3, 32, 32)).astype(np.float32), labels=rng.integers(0, 10, 32))
    ort_info, ort_params, before = one_step(model, data, "ort", "sgd", None, lr=1.0)
    torch_info, torch_params, _ = one_step(model, data, "torch", "sgd", None, lr=1.0)
    assert torch_info["loss"] == pytest.approx(ort_info["loss"], rel=1e-4)
    updates = {name: (value - before[name], torch_params[name] - before[name]) for name, value in ort_params.items()}
    largest = max(np.abs(ort).max() for ort, _ in updates.values())
    for name, (ort, torch_update) in updates.items():
        np.testing.assert_allclose(torch_update, ort, rtol=0, atol=1e-3 * largest + 1e-6, err_msg=name)


def test_one_step_adamw_matches_ort(tmp_path):
    """onnxruntime-training's AdamW in torch. AdamW's first step is about lr x sign(gradient), so a
    gradient at float noise may take the other sign in the other engine: the update is compared where
    the two engines' gradients (measured by an SGD step) agree to 0.1%, and bounded by 2 lr elsewhere."""
    data = random_dataset(tmp_path, 32, 8) / "train.npz"
    ort_info, ort_params, before = one_step(TINY, data, "ort", "adamw", "gamma")
    torch_info, torch_params, _ = one_step(TINY, data, "torch", "adamw", "gamma")
    _, ort_sgd, _ = one_step(TINY, data, "ort", "sgd", "gamma", lr=1.0)
    _, torch_sgd, _ = one_step(TINY, data, "torch", "sgd", "gamma", lr=1.0)
    assert torch_info["loss"] == pytest.approx(ort_info["loss"], rel=1e-5)
    assert torch_info["reg"] == pytest.approx(ort_info["reg"], rel=1e-5)
    agreed = total = 0
    for name, value in ort_params.items():
        g_ort, g_torch = before[name] - ort_sgd[name], before[name] - torch_sgd[name]
        same = np.abs(g_ort - g_torch) <= 1e-3 * np.abs(g_ort)
        np.testing.assert_allclose(torch_params[name][same], value[same], rtol=0, atol=2e-6, err_msg=name)
        assert np.abs(torch_params[name] - value).max() <= 2 * LR + 1e-6
        agreed += int(same.sum())
        total += value.size
    assert agreed > 0.9 * total


def test_torch_backend_trains_shrinks_and_writes(tmp_path, capsys):
    data = random_dataset(tmp_path, 96, 40)
    code = main(["shrink", str(TINY), "--data", str(data / "train.npz"), "--val", str(data / "val.npz"),
                 "--budget-flops", "0.6x", "--steps", "8", "--batch-size", "16", "-o", str(tmp_path / "s.onnx"),
                 "--backend", "torch", "--no-progress", "--force", "--json"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert doc["steps"] == 8 and doc["cost_after"] <= 0.6 * doc["cost_before"] * (1 + 1e-9)
    assert doc["session_accuracy"] is not None
    onnx.checker.check_model(onnx.load(str(tmp_path / "s.onnx")), full_check=True)


def test_torch_checkpoint_and_resume_match_an_unbroken_run(tmp_path, kill_training_at):
    data = random_dataset(tmp_path, 96, 40)
    ckpt = tmp_path / "ckpt"

    def options(**kw):
        return TrainOptions(steps=6, batch_size=16, backend="torch", progress=False, **kw)

    with kill_training_at(4), pytest.raises(KeyboardInterrupt):  # killed after the checkpoint at step 3
        train(TINY, data / "train.npz", tmp_path / "a.onnx", options=options(checkpoint_dir=ckpt,
                                                                          checkpoint_every=3))
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 3 and state["run"]["backend"] == "torch" and (ckpt / state["checkpoint"]).exists()
    with pytest.raises(MorphNetError, match=r"another run \(backend differ\)"):
        train(TINY, data / "train.npz", tmp_path / "x.onnx",
              options=TrainOptions(steps=6, batch_size=16, progress=False, checkpoint_dir=ckpt, resume=True))
    train(TINY, data / "train.npz", tmp_path / "b.onnx", options=options(checkpoint_dir=ckpt, resume=True))
    train(TINY, data / "train.npz", tmp_path / "c.onnx", options=options())
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "b.onnx")).graph.initializer}
    c = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "c.onnx")).graph.initializer}
    for name in ("conv1.weight", "fc.weight", "bn1.weight"):
        np.testing.assert_allclose(b[name], c[name], rtol=1e-5, atol=1e-7)


def test_figs_trains_on_torch(tmp_path):
    data = random_dataset(tmp_path, 64, 16)
    result = shrink(TINY, data / "train.npz", None, budget=Budget("flops", "0.6x"), regularizer="figs",
                    options=TrainOptions(steps=4, batch_size=16, backend="torch", progress=False), force=True,
                    finetune_steps=0)
    assert result.steps == 4 and result.cost_after <= 0.6 * result.cost_before * (1 + 1e-9)


def test_ort_refuses_to_run_under_torchrun(tmp_path, monkeypatch, capsys):
    data = random_dataset(tmp_path, 32, 8)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code = main(["train", str(TINY), "--data", str(data / "train.npz"), "--steps", "1", "--batch-size", "16",
                 "-o", str(tmp_path / "t.onnx"), "--no-progress"])
    assert code == 2
    assert "add --backend torch" in capsys.readouterr().err
    with pytest.raises(MorphNetError, match="multiple of the 2 processes"):
        train(TINY, data / "train.npz", None, options=TrainOptions(steps=1, batch_size=15, backend="torch",
                                                                    progress=False))


def test_two_gloo_processes_learn_what_one_process_learns(tmp_path):
    """torchrun, 2 processes on CPU (gloo), each on half of every batch of 16; against one process on
    the whole batches: the same structure and the same written weights. No BatchNormalization here:
    on CPU each rank normalises its own half (SyncBatchNorm needs GPUs)."""
    model = plain_net(tmp_path / "plain.onnx")
    data = learnable_data(tmp_path)
    args = ["shrink", str(model), "--data", str(data), "--budget-flops", "0.5x", "--steps", "40", "--batch-size",
            "16", "--lr", "0.01", "--backend", "torch", "--finetune-steps", "0", "--force", "--no-progress",
            "--json"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    one = subprocess.run([sys.executable, "-m", "morphnet_onnx", *args, "-o", str(tmp_path / "one.onnx"),
                          "--save-structure", str(tmp_path / "one.json")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "morphnet_onnx", *args, "-o", str(tmp_path / "two.onnx"), "--save-structure",
                          str(tmp_path / "two.json")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    doc_one = json.loads(one.stdout.splitlines()[-1])
    lines = [line for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 prints, rank 1 does not
    doc_two = json.loads(lines[0])
    groups_one = json.loads((tmp_path / "one.json").read_text())["groups"]
    groups_two = json.loads((tmp_path / "two.json").read_text())["groups"]
    assert groups_one == groups_two
    assert any(len(g.get("alive", [])) < g["width"] for g in groups_one)  # something was pruned
    assert doc_two["decision"]["learned_cost"] == pytest.approx(doc_one["decision"]["learned_cost"], rel=1e-9)
    assert doc_two["learning"]["last_loss"] == pytest.approx(doc_one["learning"]["last_loss"], rel=1e-4)
    a = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "one.onnx")).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "two.onnx")).graph.initializer}
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_measured_latency_under_torchrun_is_measured_on_rank_zero(tmp_path):
    """torchrun, 2 gloo processes, `--hardware measure` with a table file: rank 0 calibrates the hold
    and lands, the other rank takes its table targets (recipes/measured.py): both cut the same
    structure, or the fine-tune's DistributedDataParallel would refuse to start."""
    # width 64 (floor 0.18-0.30x in 4 tables): at 8 (a 10 us model) the floor measured 0.83-0.86x, and
    # once a table's fit put it at 1.000x, above the budget asked
    model = plain_net(tmp_path / "plain.onnx", width=64)
    data = learnable_data(tmp_path)
    table = tmp_path / "table.json"
    measured = latency_table(model, LatencySettings(threads=1), table_path=table, cache=False, copies=3)
    # halfway between the floor and the full model
    budget = f"{(1 + measured.floor.median_s / measured.full.median_s) / 2:.3f}x"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "morphnet_onnx", "shrink", str(model), "--data", str(data), "--budget-latency",
                          budget, "--hardware", "measure", "--latency-threads", "1", "--latency-table", str(table),
                          "--steps", "80", "--batch-size", "16", "--lr", "0.01", "--backend", "torch", "--force",
                          "--no-progress", "--json", "-o", str(tmp_path / "two.onnx")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    lines = [line for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["latency"]["landing"] and doc["decision"]["finetune_steps"] > 0
    assert doc["decision"]["hold_calibrations"]  # rank 0 measured while training, and rank 1 followed it
    onnx.checker.check_model(str(tmp_path / "two.onnx"), full_check=True)
