"""The command line: tables, --json, one-line errors with exit code 2, --debug tracebacks."""

import argparse
import json
import subprocess
import sys

import onnx
import pytest

from builders import Net
from conftest import LIGHT_DIR, REPO
import morphnet_onnx as mn
from morphnet_onnx import MorphNetError
from morphnet_onnx.cli import main


def test_inspect_prints_groups_and_totals(capsys):
    assert main(["inspect", str(REPO / "models" / "tiny_resnet.onnx")]) == 0
    out = capsys.readouterr().out
    assert "Channel groups of" in out
    assert "FLOPs 36.5M (MACs 18.3M)" in out
    assert "6 of 7 groups prunable" in out
    assert "reaches the model output 'logits'" in out


def test_inspect_json(capsys):
    assert main(["inspect", str(LIGHT_DIR / "light_resnet50.onnx"), "--json", "--hardware", "T4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"flops", "params", "groups", "macs", "latency_s", "prunable_flops_share"} <= set(doc)
    assert doc["flops"] == pytest.approx(8.178e9, rel=1e-3)
    assert doc["hardware"]["name"] == "T4"
    assert len(doc["groups"]) == 38
    for group in doc["groups"]:
        assert {"id", "width", "ops", "prunable"} <= set(group)


def test_unknown_ops_are_shown_not_errors(tmp_path, capsys):
    net = Net()
    x = net.conv("input", 3, 8, name="c")
    y = net.op("Einsum", [x], equation="nchw->nchw", name="weird")
    out = net.conv(net.conv(y, 8, 8, name="d"), 8, 2, name="e")
    path = tmp_path / "unknown.onnx"
    onnx.save(net.model(out), path)
    assert main(["inspect", str(path)]) == 0
    assert "[W] not understood, channels kept: weird (Einsum)" in capsys.readouterr().out


def test_nothing_to_prune_is_an_error(tmp_path, capsys):
    net = Net(input_shape=(1, 16))
    path = tmp_path / "linear.onnx"
    onnx.save(net.model(net.gemm("input", 16, 4, name="fc")), path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "linear.onnx: nothing to prune" in err


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "morphnet_onnx.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("content", [b"garbage", b""])
def test_bad_file_one_line_exit_2_no_traceback(tmp_path, content):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    result = run_cli("inspect", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_and_debug_traceback(tmp_path):
    result = run_cli("inspect", str(tmp_path / "nope.onnx"))
    assert result.returncode == 2 and "nope.onnx: no such file" in result.stderr
    result = run_cli("--debug", "inspect", str(tmp_path / "nope.onnx"))
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_bad_input_shape_option(tmp_path):
    result = run_cli("inspect", str(LIGHT_DIR / "light_squeezenet.onnx"), "--input-shape", "data_0:1x3xX")
    assert result.returncode == 2 and "expected NAME:DxDxD" in result.stderr


def test_check_and_prune_commands(tmp_path, capsys):
    model = REPO / "models" / "tiny_resnet.onnx"
    assert main(["check", str(model), "--fraction", "1.0"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("PASSED") and "removed whole" in out
    assert main(["check", str(model), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is True and 0 < doc["prunable_flops_share"] <= 1
    assert doc["flops_after"] < doc["flops_before"]
    structure = tmp_path / "s.json"
    structure.write_text(json.dumps({"conv2": 3, "conv8": 20}))
    out_model = tmp_path / "small.onnx"
    assert main(["prune", str(model), "--structure", str(structure), "-o", str(out_model),
                 "--approximate-borders", "--save-structure", str(tmp_path / "applied.json")]) == 0
    assert "wrote" in capsys.readouterr().out
    onnx.checker.check_model(str(out_model), full_check=True)
    assert json.loads((tmp_path / "applied.json").read_text())["alive_counts"]["conv2"] == 3


def test_prune_approximate_norms_keeps_each_layer_norm_one_op(tmp_path, capsys):
    from test_attention import vit_block_model
    model = tmp_path / "block.onnx"
    onnx.save(vit_block_model(heads=2), str(model))
    structure = tmp_path / "s.json"
    structure.write_text(json.dumps({"embed": 12}))  # the embedding width, 16 -> 12
    counts = []
    for flags in ([], ["--approximate-norms"]):
        out_model = tmp_path / f"small{len(flags)}.onnx"
        assert main(["prune", str(model), "--structure", str(structure), "-o", str(out_model), *flags]) == 0
        onnx.checker.check_model(str(out_model), full_check=True)
        counts.append(sum(n.op_type == "LayerNormalization" for n in onnx.load(str(out_model)).graph.node))
    assert counts == [0, 3]  # written out exactly, or kept over the 12 channels


@pytest.mark.parametrize("content,match", [
    ('{"conv2": 99}', "above its width"),
    ('{"groups": [{"id": 42, "alive": []}]}', "group 42 does not exist"),
    ("{not json", "not valid JSON"),
])
def test_prune_bad_structure_exits_2_and_writes_nothing(tmp_path, content, match):
    structure = tmp_path / "s.json"
    structure.write_text(content)
    out = tmp_path / "out.onnx"
    result = run_cli("prune", str(REPO / "models" / "tiny_resnet.onnx"), "--structure", str(structure), "-o", str(out))
    assert result.returncode == 2 and match in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()


def test_prune_never_overwrites_the_input(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes((REPO / "models" / "tiny_resnet.onnx").read_bytes())
    structure = tmp_path / "s.json"
    structure.write_text('{"conv2": 8}')
    before = model.read_bytes()
    result = run_cli("prune", str(model), "--structure", str(structure), "-o", str(model))
    assert result.returncode == 2 and "refusing to overwrite" in result.stderr
    assert model.read_bytes() == before


def test_check_nothing_to_prune(tmp_path):
    net = Net(input_shape=(1, 16))
    path = tmp_path / "linear.onnx"
    onnx.save(net.model(net.gemm("input", 16, 4, name="fc")), path)
    result = run_cli("check", str(path))
    assert result.returncode == 2 and "nothing to prune" in result.stderr


@pytest.mark.parametrize("call, match", [
    (lambda: mn.check(REPO / "models" / "tiny_resnet.onnx", fraction=2), "--fraction"),
    (lambda: mn.prune(REPO / "models" / "tiny_resnet.onnx", {}, round_to=0), "--round-to"),
    (lambda: mn.TrainOptions(lr=0), "--lr"),
    (lambda: mn.TrainOptions(steps=0), "--steps"),
    (lambda: mn.TrainOptions(optimizer="adam"), "--optimizer"),
    (lambda: mn.TrainOptions(resume=True), "--checkpoint-dir"),
    (lambda: mn.shrink(REPO / "models" / "tiny_resnet.onnx", None, strength=-1.0), "--strength"),
    (lambda: mn.shrink(REPO / "models" / "tiny_resnet.onnx", None, strength=1.0,
                                                 round_to=0), "--round-to"),
    (lambda: mn.Budget("energy", "1x"), "budget resource"),
    (lambda: mn.ShrinkOptions(), "give either a budget"),
    (lambda: mn.ShrinkOptions(budget=mn.Budget("flops", "0.5x"), strength=1.0), "give either a budget"),
    (lambda: mn.ShrinkOptions(strength=1.0, threshold=0), "--threshold"),
    (lambda: mn.ShrinkOptions(strength=1.0, regularizer="l1"), "--regularizer"),
    (lambda: mn.ShrinkOptions(strength=1.0, hardware="A0"), "--hardware"),
    (lambda: mn.ShrinkOptions(strength=1.0, cost_batch_size=0), "--cost-batch-size"),
    (lambda: mn.ShrinkOptions(strength=1.0, finetune_steps=-1), "--finetune-steps"),
    (lambda: mn.ShrinkOptions(budget="0.5x"), "expected a Budget"),
])
def test_python_api_validates_its_arguments_like_the_cli(call, match):
    with pytest.raises(MorphNetError, match=match):
        call()


def test_shrink_options_map_one_to_one_onto_the_cli_options():
    """Every ShrinkOptions field is a `shrink` option of the same name (`--budget-*` for budget), and
    `shrink` takes the fields as keywords or as one object, not both."""
    from dataclasses import fields

    from morphnet_onnx.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    shrink_parser = commands.choices["shrink"]
    flags = {flag for action in shrink_parser._actions for flag in action.option_strings}
    for field in fields(mn.ShrinkOptions):
        if field.name == "budget":
            assert {"--budget-flops", "--budget-size", "--budget-latency"} <= flags
        else:
            assert "--" + field.name.replace("_", "-") in flags, field.name
    model = REPO / "models" / "tiny_resnet.onnx"
    with pytest.raises(TypeError, match="not both"):
        mn.shrink(model, None, method=mn.ShrinkOptions(strength=1.0), strength=1.0)
    with pytest.raises(TypeError, match="budget_flops"):
        mn.shrink(model, None, budget_flops="0.5x")
    assert mn.ShrinkOptions(strength=1.0, keep="conv1").keep == ("conv1",)


def test_every_help_shows_the_default_of_every_option_that_has_one_and_an_example():
    """`morphnet-onnx COMMAND --help`: options in groups, each default shown, an example line."""
    from morphnet_onnx.cli.parser import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        text = " ".join(sub.format_help().split())
        assert f"example: morphnet-onnx {name}" in text, name
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            if action.default is None or action.default is False:
                continue
            shown = " ".join(sub._get_formatter()._expand_help(action).split()) if action.help else ""
            assert f"default: {action.default}" in shown or "(default" in (action.help or ""), (name, action.dest)


def test_shrink_recipe_defaults_are_shrink_options_defaults(tmp_path):
    """The CLI's recipe defaults (shown in --help) are ShrinkOptions' own: one recipe, two doors."""
    from morphnet_onnx.cli.commands import RECIPE_OPTIONS
    from morphnet_onnx.cli.parser import build_parser

    args = build_parser().parse_args(["shrink", "m.onnx", "--data", "d.npz", "--budget-flops", "0.5x", "-o", "o.onnx"])
    defaults = mn.ShrinkOptions(budget=mn.Budget("flops", "0.5x"))
    for name in RECIPE_OPTIONS:
        assert getattr(args, name) == getattr(defaults, name), name
    assert args.finetune_steps is None and defaults.finetune_steps is None
