"""tools/zoo_train.py's learning check: it passes a model that learns and fails one that only runs."""

import importlib.util

import onnx

from conftest import REPO
from test_learning import _dead_bn_model

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
