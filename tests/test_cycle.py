"""cycle: rounds of shrink -> expand -> retrain from scratch, a table, resume without repeating."""

import json

import pytest

from builders import random_dataset
from conftest import REPO
from morphnet_onnx import Budget, MorphNetError, cycle
from morphnet_onnx.cli import main
from morphnet_onnx.training.trainer import TrainOptions

TINY = REPO / "models" / "tiny_resnet.onnx"


@pytest.fixture
def data(tmp_path):
    return random_dataset(tmp_path, 64, 32)


def quick():
    return TrainOptions(steps=4, batch_size=16, progress=False)


def run(data, out, resume=False, rounds=2):
    # Random data: the loss need not fall in 4 steps, so the learning guard is not what is tested here.
    return cycle(TINY, data / "train.npz", data / "val.npz", budget=Budget("flops", "0.8x"), out_dir=out,
                 rounds=rounds, options=quick(), resume=resume, force=True)


def test_two_rounds_write_every_model_and_a_table(data):
    out = data / "run"
    result = run(data, out)
    assert [row.round for row in result.rows] == [0, 1, 2]
    original, *rounds = result.rows
    assert original.multiplier is None and original.structure is None
    for index, row in enumerate(rounds, start=1):
        assert row.flops <= result.target and row.flops >= 0.9 * result.target
        assert row.accuracy is not None and row.multiplier > 1
        for name in (f"round{index}_shrunk.onnx", f"round{index}_structure.json", f"round{index}_expanded.onnx",
                     f"round{index}.onnx"):
            assert (out / name).exists()
    table = json.loads((out / "cycle.json").read_text())["table"]
    assert [row["round"] for row in table["rows"]] == [0, 1, 2]


def test_resume_skips_finished_steps_and_refuses_other_settings(data):
    out = data / "run"
    run(data, out, rounds=1)
    state = json.loads((out / "cycle.json").read_text())
    # A run killed after the expand of round 1: its training is redone, nothing before it.
    del state["steps"]["round1/train"]
    (out / "cycle.json").write_text(json.dumps(state))
    before = {name: (out / name).stat().st_mtime_ns for name in ("round0.onnx", "round1_shrunk.onnx",
                                                                  "round1_expanded.onnx")}
    result = run(data, out, resume=True, rounds=1)
    assert [row.round for row in result.rows] == [0, 1]
    assert {name: (out / name).stat().st_mtime_ns for name in before} == before
    with pytest.raises(MorphNetError, match="already holds a cycle"):
        run(data, out, rounds=1)
    with pytest.raises(MorphNetError, match="other settings"):
        cycle(TINY, data / "train.npz", data / "val.npz", budget=Budget("flops", "0.7x"), out_dir=out,
              rounds=1, options=quick(), resume=True, force=True)


@pytest.mark.parametrize("args, match", [
    (["--rounds", "0"], "--rounds"),
    (["--shrink-to", "1.5"], "--shrink-to"),
    (["--checkpoint-dir", "x"], "checkpoint"),
])
def test_cli_cycle_bad_input(data, capsys, args, match):
    code = main(["cycle", str(TINY), "--data", str(data / "train.npz"), "--val", str(data / "val.npz"),
                 "--budget-flops", "0.8x", "--out-dir", str(data / "run"), "--steps", "2"] + args)
    assert code == 2
    assert match in capsys.readouterr().err
    assert not (data / "run").exists()


def test_bad_data_writes_nothing(data, capsys):
    code = main(["cycle", str(TINY), "--data", str(data / "missing.npz"), "--val", str(data / "val.npz"),
                 "--budget-flops", "0.8x", "--out-dir", str(data / "run"), "--steps", "2"])
    assert code == 2
    assert "missing.npz" in capsys.readouterr().err
    assert not (data / "run").exists()
