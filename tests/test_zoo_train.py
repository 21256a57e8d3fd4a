"""tools/zoo_train.py's learning check: it passes a model that learns and fails one that only runs."""

import importlib.util
import sys

import numpy as np
import onnx
import pytest

from conftest import REPO
from morphnet_onnx.cli import main
from test_learning import _dead_bn_model

sys.path.insert(0, str(REPO / "tools"))  # the tools import their harness
spec = importlib.util.spec_from_file_location("zoo_train", REPO / "tools" / "zoo_train.py")
zoo_train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zoo_train)


def test_learn_mode_passes_a_torch_export_that_learns(tmp_path):
    row = zoo_train.learn_one(REPO / "tests" / "data" / "torch" / "resnet_digits_bn_untrained.onnx", 60, 300, tmp_path)
    assert row["passed"] and row["learns"] and row["agrees"], row
    assert row["last_loss"] <= 0.5 * row["first_loss"]
    assert row["written_top1"] == row["session_top1"]


def test_learn_mode_fails_a_model_that_runs_but_does_not_learn(tmp_path):
    path = tmp_path / "dead.onnx"
    onnx.save(_dead_bn_model(0.0), str(path))
    row = zoo_train.learn_one(path, 60, 300, tmp_path)
    assert row["trains"] and not row["learns"] and not row["passed"]
    assert "does not learn" in row["error"]
    assert "| dead | no |" in zoo_train.table([row], "learn")


NF_RESNET = REPO / "tests" / "data" / "torch" / "nf_resnet_tiny.onnx"  # tools/export_nf_resnet.py


@pytest.mark.slow
def test_a_weight_standardized_nf_resnet_with_a_fixed_batch_trains_and_learns(tmp_path):
    """timm's NF-ResNets standardize every conv weight with a BatchNormalization over a rank-3
    reshape of it; exported at a fixed batch of 1, `shrink --batch-size 1` stopped in the batch-norm
    statistics ("ReduceMean axis must be in [-rank, rank-1]. input rank was 3"), and any other
    batch size at the fixed batch of the statistics and evaluation sessions."""
    data = zoo_train._random_batch(NF_RESNET, tmp_path, 8)
    code = main(["shrink", str(NF_RESNET), "--data", str(data), "--val", str(data), "--steps", "2",
                 "--batch-size", "1", "--strength", "1e-12", "--force", "-o", str(tmp_path / "s.onnx"),
                 "--no-progress"])
    assert code == 0 and (tmp_path / "s.onnx").exists()
    assert zoo_train.run_one(NF_RESNET, 2, 300, tmp_path)["passed"]  # batch 2 on a batch-1 export
    row = zoo_train.learn_one(NF_RESNET, 60, 300, tmp_path, lr=1e-2)
    assert row["passed"] and row["learns"] and row["agrees"], row


@pytest.mark.slow
def test_land_mode_measures_the_written_model_against_the_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    row = zoo_train.land_one(REPO / "models" / "tiny_resnet.onnx", 6, 600, tmp_path)
    assert row["trains"] and row["tries"] >= 1 and row["goal"] == pytest.approx(0.5), row
    assert row["miss"] == pytest.approx(row["achieved"] / 0.5 - 1, abs=1e-3)
    assert row["passed"] == (-0.10 <= row["miss"] <= 0.05)
    assert f"| tiny_resnet | {'yes' if row['passed'] else 'no'} | {row['achieved']:.3f}x" in zoo_train.table([row], "land")


def test_random_data_fits_text_exports_every_input_and_their_per_token_logits(tmp_path):
    """Token ids for integer inputs, ones for an attention mask, and for per-token logits random
    targets of their shape trained with --loss mse (before: one float array for the first input,
    which `shrink` refused: "'input_ids' is float32, the model input wants int64")."""
    exports = REPO / "tests" / "data" / "transformers"
    gpt2 = np.load(zoo_train._random_batch(exports / "gpt2_torchscript.onnx", tmp_path, 4))
    assert gpt2["input_ids"].dtype == np.int64 and gpt2["input_ids"].max() < zoo_train.TOKENS
    assert gpt2["labels"].shape == (4, 16, 128) and gpt2["labels"].dtype == np.float32
    assert zoo_train._loss_option(exports / "gpt2_torchscript.onnx") == ["--loss", "mse"]
    bert = np.load(zoo_train._random_batch(exports / "bert_torchscript.onnx", tmp_path, 4))
    assert (bert["attention_mask"] == 1).all() and bert["labels"].shape == (4,)
    assert zoo_train._loss_option(exports / "bert_torchscript.onnx") == []
