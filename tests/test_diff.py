"""`diff`: known surgeries list exactly their changes; renamed ops are matched by position; the plot,
the page and the command line."""

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest

from builders import Net
from conftest import REPO, TORCHVISION_DIR
from morphnet_onnx import MorphNetError, diff, prune
from morphnet_onnx.surgery.checking import random_structure
from morphnet_onnx.cli import main
from morphnet_onnx.report.diff import short_summary
from morphnet_onnx.report.pictures import AFTER_COLOR, STATUS_COLORS, check_picture_paths, plot_bytes, write_pictures
from morphnet_onnx.surgery.pruning import prepare, prune_loaded

TINY = REPO / "models" / "tiny_resnet.onnx"


# ---- models with known surgeries ---------------------------------------------------------------------

def negative_bn_shifts(model: onnx.ModelProto) -> onnx.ModelProto:
    """BN shifts below zero: removed channels hold ReLU(beta) = 0, so padded convs lose them exactly."""
    for tensor in model.graph.initializer:
        if tensor.name.endswith(".bias") and "bn" in tensor.name:
            value = -np.abs(onnx.numpy_helper.to_array(tensor)) - 0.1
            tensor.CopyFrom(onnx.numpy_helper.from_array(value.astype(np.float32), tensor.name))
    return model


def head(net: Net, x: str, channels: int) -> onnx.ModelProto:
    pooled = net.op("Flatten", [net.op("GlobalAveragePool", [x], name="pool")], axis=1, name="flat")
    return negative_bn_shifts(net.model(net.gemm(pooled, channels, 3, name="fc")))


def residual_model() -> onnx.ModelProto:
    net = Net(input_shape=(1, 3, 8, 8), seed=5)
    x = net.relu(net.bn(net.conv("input", 3, 8, name="stem", bias=False), 8, name="stem_bn"))
    h = net.relu(net.bn(net.conv(x, 8, 4, name="inner", bias=False), 4, name="inner_bn"))
    h = net.bn(net.conv(h, 4, 8, name="outer", bias=False), 8, name="outer_bn")
    return head(net, net.relu(net.op("Add", [x, h], name="join")), 8)


def concat_model() -> onnx.ModelProto:
    net = Net(input_shape=(1, 3, 8, 8), seed=2)
    a = net.relu(net.conv("input", 3, 4, name="tower_a"))
    b = net.relu(net.conv(net.relu(net.conv("input", 3, 3, k=1, name="tower_b1")), 3, 5, name="tower_b2"))
    x = net.op("Concat", [a, b], axis=1, name="cat")
    return head(net, net.relu(net.conv(x, 9, 6, k=1, name="mix")), 6)


def chain_model() -> onnx.ModelProto:
    net = Net(input_shape=(1, 3, 8, 8), seed=3)
    x = net.relu(net.bn(net.conv("input", 3, 8, name="c1", bias=False), 8, name="bn1"))
    x = net.relu(net.bn(net.conv(x, 8, 12, name="c2", bias=False), 12, name="bn2"))
    x = net.relu(net.bn(net.conv(x, 12, 6, name="c3", bias=False), 6, name="bn3"))
    return head(net, x, 6)


def se_model() -> onnx.ModelProto:
    net = Net(input_shape=(1, 3, 8, 8), seed=1)
    x = net.relu(net.conv("input", 3, 8, name="stem"))
    s = net.op("GlobalAveragePool", [x], name="se_pool")
    s = net.relu(net.conv(s, 8, 2, k=1, name="se_reduce"))
    s = net.op("Sigmoid", [net.conv(s, 2, 8, k=1, name="se_expand")], name="se_gate")
    x = net.op("Mul", [x, s], name="se_scale")
    return head(net, net.relu(net.conv(x, 8, 8, name="body")), 8)


def group_of(model, source):
    _, analysis = prepare(model)
    return next(g for g in analysis.groups if source in g.sources)


def removing(model, source):
    return prune(model, {"groups": [{"id": group_of(model, source).id, "alive": []}]}).model


def changes(d) -> dict[str, str]:
    return {layer.op: layer.status for layer in d.layers if layer.status != "same"}


def widths(d) -> dict[str, tuple]:
    return {layer.op: (layer.before and layer.before.width, layer.after and layer.after.width) for layer in d.layers}


# ---- known surgeries: exactly their changes ----------------------------------------------------------------

def test_residual_branch_removed():
    model = residual_model()
    d = diff(model, removing(model, "inner"))
    branch = ["inner", "inner_bn", "relu2", "outer", "outer_bn"]
    # The Add now reads the constant the dead branch left (its params grow); nothing else changes.
    assert changes(d) == {**{op: "removed" for op in branch}, "join": "changed"}
    assert len(d.removed) == 1 and not d.added
    removed = d.removed[0]
    assert (removed.ops, removed.kind, removed.entry, removed.exit) == (branch, "residual", ["relu1"], ["join"])
    assert d.totals["flops"][1] == pytest.approx(d.totals["flops"][0] - removed.flops)
    assert d.op_counts["Conv"] == (3, 1) and d.op_counts["Add"] == (1, 1)
    assert all(layer.matched_by == "name" for layer in d.layers if layer.status != "removed")


def test_concat_tower_dropped():
    model = concat_model()
    d = diff(model, removing(model, "tower_b2"))
    assert changes(d) == {"tower_b1": "removed", "relu2": "removed", "tower_b2": "removed", "relu3": "removed",
                          "cat": "narrower", "mix": "changed"}
    assert widths(d)["cat"] == (9, 4) and widths(d)["mix"] == (6, 6)
    assert [(b.kind, b.exit, b.entry) for b in d.removed] == [("concat", ["cat"], ["input"])]
    mix = next(layer for layer in d.layers if layer.op == "mix")
    assert mix.after.flops == pytest.approx(mix.before.flops * 4 / 9)
    assert not d.added


def test_widths_halved():
    model = chain_model()
    _, analysis = prepare(model)
    half = {"groups": [{"id": g.id, "alive_count": g.width // 2} for g in analysis.groups if g.prunable]}
    d = diff(model, prune(model, half).model)
    assert not d.removed and not d.added
    expected = {}
    for conv, bn, relu, width in (("c1", "bn1", "relu1", 8), ("c2", "bn2", "relu2", 12), ("c3", "bn3", "relu3", 6)):
        for op in (conv, bn, relu):
            expected[op] = "narrower"
            assert widths(d)[op] == (width, width // 2)
    for op in ("pool", "flat"):
        expected[op] = "narrower"
    expected["fc"] = "changed"  # its input halved, its 3 outputs stay
    assert changes(d) == expected
    assert [layer.op for layer in d.compute_layers] == ["c1", "c2", "c3", "fc"]


def test_se_block_folded_into_a_constant_scale():
    model = se_model()
    d = diff(model, removing(model, "se_reduce"))
    branch = ["se_pool", "se_reduce", "relu2", "se_expand", "se_gate"]
    assert changes(d) == {**{op: "removed" for op in branch}, "se_scale": "changed"}
    assert [(b.ops, b.kind, b.entry, b.exit) for b in d.removed] == [(branch, "gate", ["relu1"], ["se_scale"])]
    scale = next(layer for layer in d.layers if layer.op == "se_scale")
    assert (scale.before.params, scale.after.params) == (0, 8)  # the gate is now a constant per channel


def test_same_model_has_no_changes():
    d = diff(TINY, TINY)
    assert not changes(d) and not d.removed and not d.added
    assert all(before == after for before, after in d.totals.values())


# ---- matching by position ---------------------------------------------------------------------------

def renamed(model: onnx.ModelProto, prefix: str = "x") -> onnx.ModelProto:
    """A copy with every node and every tensor (inputs and outputs included) renamed, nodes reordered
    where the order is free (outputs first is not possible; graph order stays topological)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = {}
    for value in list(graph.input) + list(graph.output):
        names[value.name] = f"{prefix}_io_{len(names)}"
    for node in graph.node:
        for t in node.output:
            names.setdefault(t, f"{prefix}_t{len(names)}")
    for index, node in enumerate(graph.node):
        node.name = f"{prefix}_node_{index}"
        node.input[:] = [names.get(t, t) for t in node.input]
        node.output[:] = [names.get(t, t) for t in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = names.get(value.name, value.name)
    return out


@pytest.mark.parametrize("build,source", [(residual_model, "inner"), (concat_model, "tower_b2"), (se_model, "se_reduce")])
def test_renamed_ops_are_matched_by_position(build, source):
    model = build()
    after = removing(model, source)
    by_name = diff(model, after)
    by_position = diff(model, renamed(after))
    assert changes(by_position) == changes(by_name)
    assert widths(by_position) == widths(by_name)
    assert [(b.ops, b.kind) for b in by_position.removed] == [(b.ops, b.kind) for b in by_name.removed]
    assert not by_position.added
    matched = [layer for layer in by_position.layers if layer.after is not None]
    assert matched and all(layer.matched_by == "position" for layer in matched)
    assert {layer.after.op for layer in matched} <= {n.name for n in renamed(after).graph.node}


def test_both_models_renamed_and_every_node_unnamed():
    model = chain_model()
    half = prune(model, {"c2": 6}).model
    for after in (renamed(half), _unnamed(half)):
        d = diff(renamed(model, "y"), after)
        assert {op.split("_")[-1]: s for op, s in changes(d).items()} == {"3": "narrower", "4": "narrower",
                                                                          "5": "narrower", "6": "changed"}
        assert not d.removed and not d.added


def _unnamed(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        node.name = ""
    return out


def test_names_that_contradict_the_wiring_are_not_trusted():
    """A tool that reuses names for other ops (here the convs' names rotated) must not pair the wrong ops."""
    model = chain_model()
    after = prune(model, {"c2": 6}).model
    rotation = {"c1": "c2", "c2": "c3", "c3": "c1", "bn1": "bn2", "bn2": "bn3", "bn3": "bn1"}
    for node in after.graph.node:
        node.name = rotation.get(node.name, node.name)
    d = diff(model, after)
    assert changes(d) == {"c2": "narrower", "bn2": "narrower", "relu2": "narrower", "c3": "changed"}
    assert {layer.op: layer.after.op for layer in d.layers if layer.op in rotation} == rotation


@pytest.mark.skipif(not (TORCHVISION_DIR / "mobilenet_v3_small_bn.onnx").exists(), reason="torchvision exports missing")
def test_real_model_se_block_folded_and_renamed():
    path = TORCHVISION_DIR / "mobilenet_v3_small_bn.onnx"
    group = group_of(str(path), "/features/features.1/block/block.1/fc1/Conv")
    after = prune(str(path), {"groups": [{"id": group.id, "alive": []}]}).model
    block = "/features/features.1/block/block.1/"
    expected = {block + op: "removed" for op in ("avgpool/GlobalAveragePool", "fc1/Conv", "activation/Relu",
                                                 "fc2/Conv", "scale_activation/HardSigmoid")}
    expected[block + "Mul"] = "changed"
    for candidate in (after, renamed(after)):
        d = diff(str(path), candidate)
        assert changes(d) == expected
        assert [b.kind for b in d.removed] == ["gate"] and not d.added
        assert sum(1 for layer in d.layers if layer.matched_by) == len(d.layers) - 5


# ---- structures, the API's arguments -------------------------------------------------------------------

def test_two_structure_files_of_one_model(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"groups": [{"id": 1, "alive": list(range(16))}]}))
    second.write_text(json.dumps({"groups": [{"id": 1, "alive": []}]}))
    d = diff(first, second, model=TINY)
    assert {op: s for op, s in changes(d).items() if s == "removed"} == {op: "removed" for op in
                                                                        ("conv2", "bn2", "conv2.relu", "conv3", "bn3")}
    assert [b.kind for b in d.removed] == ["residual"]
    assert "a.json applied to" in d.before
    # The model the structure file names is used when --model is not given; a model side serves too.
    for path in (first, second):
        doc = json.loads(path.read_text())
        doc["model"] = str(TINY)
        path.write_text(json.dumps(doc))
    assert changes(diff(first, second)) == changes(d)
    assert [b.ops for b in diff(TINY, second).removed] == [b.ops for b in d.removed]


def test_structure_without_its_model_is_a_clear_error(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"conv2": 3}')
    with pytest.raises(MorphNetError, match="give --model"):
        diff(path, path)


def test_short_summary_names_totals_and_branches():
    model = residual_model()
    lines = short_summary(diff(model, removing(model, "inner")))
    assert lines[0].startswith("diff: FLOPs ") and "params" in lines[0] and "latency" in lines[0]
    assert "1 branch removed (5 ops)" in lines[1]
    assert lines[2] == ("diff: removed inner .. outer_bn (5 ops, from relu1, into join): "
                        "residual branch: the block collapsed to its skip")
    assert len(lines) == 3


def test_json_document():
    model = concat_model()
    doc = json.loads(json.dumps(diff(model, removing(model, "tower_b2")).to_dict()))
    assert {"before", "after", "layers", "removed", "added", "totals"} <= set(doc)
    assert {"flops", "macs", "params", "param_bytes", "latency_s", "ops", "op_count"} <= set(doc["totals"])
    assert doc["totals"]["ops"]["Conv"] == {"before": 4, "after": 2}
    flops = doc["totals"]["flops"]
    assert flops["change_pct"] == pytest.approx((flops["after"] - flops["before"]) / flops["before"] * 100)
    cat = next(layer for layer in doc["layers"] if layer["op"] == "cat")
    assert cat["before"]["width"] == 9 and cat["after"]["width"] == 4 and cat["status"] == "narrower"
    removed = next(layer for layer in doc["layers"] if layer["op"] == "tower_b1")
    assert removed["after"] is None and removed["status"] == "removed"
    assert doc["removed"][0]["kind"] == "concat" and doc["removed"][0]["ops"] == ["tower_b1", "relu2", "tower_b2", "relu3"]


# ---- pictures -------------------------------------------------------------------------------------------

@pytest.fixture
def residual_diff():
    model = residual_model()
    return diff(model, removing(model, "inner"))


def test_png_and_svg_plots_are_valid(tmp_path, residual_diff):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    png, svg = tmp_path / "p.png", tmp_path / "p.SVG"
    assert write_pictures(residual_diff, plot=png) == [png]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib_image.imread(png)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600
    write_pictures(residual_diff, plot=svg)
    root = ET.fromstring(svg.read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    text = svg.read_text()
    assert AFTER_COLOR in text and "inner" in text  # the "after" bars and the layer names
    assert plot_bytes(residual_diff, "svg") == svg.read_bytes()  # the same diff, the same file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.SVG", "p.png"]  # no temp files left


@pytest.mark.parametrize("plot,html,match", [
    ("p.jpg", None, "--plot .*p.jpg: the file name must end in .png or .svg"),
    (None, "p.txt", "--html .*p.txt: the file name must end in .html or .htm"),
    ("nofolder/p.png", None, "does not exist"),
])
def test_bad_picture_paths(tmp_path, plot, html, match):
    with pytest.raises(MorphNetError, match=match):
        check_picture_paths(plot and tmp_path / plot, html and tmp_path / html)


def test_missing_matplotlib_is_one_clear_message(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(MorphNetError, match=r"pip install 'morphnet-onnx\[plot\]'"):
        check_picture_paths(tmp_path / "p.png")


def html_of(d, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "diff.html"
    write_pictures(d, html_path=path)
    return path, path.read_text()


def test_html_page_is_self_contained(tmp_path, residual_diff):
    _, page = html_of(residual_diff, tmp_path)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from a network
    assert "<script" not in page and "<link" not in page
    assert page.count("<svg") == 2  # the plot and the topology, inline
    for op in ("inner", "outer_bn", "join", "fc"):
        assert f">{op}<" in page
    assert "8 \u2192 removed" in page  # outer's width, as drawn in the topology
    assert "residual branch: the block collapsed to its skip" in page
    # The drawing parses as SVG, with one box per op.
    drawing = page[page.index('<svg xmlns="http://www.w3.org/2000/svg" width'):]
    drawing = drawing[:drawing.index("</svg>") + 6]
    root = ET.fromstring(drawing)
    boxes = root.findall("{http://www.w3.org/2000/svg}g")
    assert len(boxes) == len(residual_diff.layers)
    assert sum("removed" in box.get("class") for box in boxes) == 5


def _chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium to render the page (Debian: apt-get install chromium)")
def test_html_page_renders_in_headless_chromium(tmp_path, residual_diff):
    image = pytest.importorskip("matplotlib.image")
    page, _ = html_of(residual_diff, tmp_path)
    shot = tmp_path / "shot.png"
    result = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                             "--window-size=1200,2000", "--hide-scrollbars", page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert shot.exists(), result.stderr[-2000:]
    pixels = (image.imread(shot)[:, :, :3] * 255).round().astype(int)
    assert pixels.shape[:2] == (2000, 1200)

    def count(hex_color):
        rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).max(axis=2) <= 3).sum())

    assert count(AFTER_COLOR) > 2000  # the plot's "after" bars are on screen
    assert count(STATUS_COLORS["removed"][0]) > 2000  # so are the removed ops' boxes in the topology
    assert count(STATUS_COLORS["changed"][0]) > 200  # and the Add that now reads a constant
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not a blank or error page


# ---- command line ---------------------------------------------------------------------------------------

def test_cli_diff_tables_json_and_inspect_synonym(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(residual_model(), model)
    small = tmp_path / "small.onnx"
    onnx.save(removing(residual_model(), "inner"), small)
    assert main(["diff", str(model), str(small)]) == 0
    out = capsys.readouterr().out
    assert "removed inner .. outer_bn (5 ops, from relu1, into join): residual branch" in out
    assert "Totals" in out and "latency (V100)" in out and "removed" in out
    assert main(["diff", str(model), str(small), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert main(["inspect", str(model), str(small), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == doc
    assert [b["kind"] for b in doc["removed"]] == ["residual"]


def test_cli_diff_pictures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot, page = tmp_path / "w.svg", tmp_path / "d.html"
    assert main(["diff", str(TINY), str(TINY), "--plot", str(plot), "--html", str(page), "--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # the document alone on stdout
    assert f"wrote {plot}" in captured.err and plot.exists() and page.exists()


@pytest.mark.parametrize("args,match", [
    (["diff", str(TINY), "{tmp}/nope.onnx"], "nope.onnx: no such file"),
    (["diff", str(TINY), str(TINY), "--plot", "{tmp}/w.gif"], "must end in .png or .svg"),
    (["diff", "{tmp}/s.json", "{tmp}/s.json"], "give --model"),
    (["inspect", str(TINY), "--plot", "{tmp}/w.png"], "give two models"),
])
def test_cli_diff_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, match):
    (tmp_path / "s.json").write_text('{"conv2": 3}')
    before = sorted(tmp_path.iterdir())
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert sorted(tmp_path.iterdir()) == before


def test_prune_ends_with_the_short_diff_and_writes_pictures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model = tmp_path / "m.onnx"
    onnx.save(residual_model(), model)
    structure = tmp_path / "s.json"
    structure.write_text(json.dumps({"groups": [{"id": group_of(residual_model(), "inner").id, "alive": []}]}))
    out_model, page = tmp_path / "small.onnx", tmp_path / "d.html"
    assert main(["prune", str(model), "--structure", str(structure), "-o", str(out_model), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "diff: removed inner .. outer_bn (5 ops, from relu1, into join): residual branch" in out
    assert f"wrote {page}" in out and page.read_text().startswith("<!DOCTYPE html>")


def test_prune_with_a_bad_plot_path_prunes_nothing(tmp_path, capsys):
    structure = tmp_path / "s.json"
    structure.write_text('{"conv2": 8}')
    out_model = tmp_path / "small.onnx"
    assert main(["prune", str(TINY), "--structure", str(structure), "-o", str(out_model),
                 "--plot", str(tmp_path / "w.pdf")]) == 2
    assert "must end in .png or .svg" in capsys.readouterr().err
    assert not out_model.exists()


def test_names_decide_between_identical_parallel_ops():
    """Two identical towers, the first removed: only the names say which one is gone."""
    net = Net(input_shape=(1, 3, 8, 8), seed=4)
    a = net.relu(net.conv("input", 3, 4, name="twin_a"))
    b = net.relu(net.conv("input", 3, 4, name="twin_b"))
    x = net.op("Concat", [a, b], axis=1, name="cat")
    model = head(net, net.relu(net.conv(x, 8, 6, k=1, name="mix")), 6)
    d = diff(model, removing(model, "twin_a"))
    assert [b.ops for b in d.removed] == [["twin_a", "relu1"]]
    assert changes(d) == {"twin_a": "removed", "relu1": "removed", "cat": "narrower", "mix": "changed"}


def test_shrink_ends_with_the_short_diff_and_writes_the_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", input=rng.standard_normal((32, 3, 32, 32)).astype(np.float32),
             labels=rng.integers(0, 10, 32))
    out, plot = tmp_path / "s.onnx", tmp_path / "w.png"
    assert main(["shrink", str(TINY), "--data", str(tmp_path / "train.npz"), "--budget-flops", "0.6x", "--steps", "4",
                 "--batch-size", "16", "--no-progress", "-o", str(out), "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    flops_line = next(line for line in lines if line.startswith("diff: FLOPs 36.5M -> "))
    assert lines[-1] == f"wrote {plot}" and plot.read_bytes()[:4] == b"\x89PNG"
    written = diff(TINY, out)
    assert flops_line == short_summary(written)[0]
    assert written.totals["flops"][1] <= 0.6 * written.totals["flops"][0]


@pytest.mark.skipif(not (TORCHVISION_DIR / "resnet18_folded.onnx").exists(), reason="torchvision exports missing")
def test_norms_folded_by_another_tool_are_bypassed_ops():
    """torch's export with BatchNormalization folded into the convs: every norm is gone, its conv feeds
    what the norm fed, nothing is narrower and no branch is reported removed."""
    bn, folded = TORCHVISION_DIR / "resnet18_bn.onnx", TORCHVISION_DIR / "resnet18_folded.onnx"
    d = diff(bn, folded)
    gone = [layer for layer in d.layers if layer.status == "removed"]
    assert len(gone) == 20 and {layer.op_type for layer in gone} == {"BatchNormalization"}
    assert {branch.kind for branch in d.removed} == {"bypassed"} and not d.added
    assert {layer.status for layer in d.layers} == {"same", "changed", "removed"}
    assert all(layer.op_type == "Conv" for layer in d.layers if layer.status == "changed")  # they took the bias
    assert d.totals["flops"][0] == d.totals["flops"][1]
    assert "0 branches removed (0 ops), 20 ops bypassed, 0 ops added" in short_summary(d)[1]
    back = diff(folded, bn)
    assert {branch.kind for branch in back.added} == {"inserted"} and not back.removed


@pytest.mark.parametrize("before,kw,match", [
    (42, {}, "got int"),
    (TINY, {"hardware": "Z80"}, "--hardware 'Z80'"),
    (TINY, {"cost_batch_size": 0}, "--cost-batch-size 0"),
])
def test_api_checks_its_arguments(before, kw, match):
    with pytest.raises(MorphNetError, match=match):
        diff(before, TINY, **kw)


def downsample_block_model() -> onnx.ModelProto:
    """A bottleneck whose first conv and its downsample conv are alike (1x1) and read the same tensor."""
    net = Net(input_shape=(1, 3, 8, 8), seed=6)
    x = net.relu(net.bn(net.conv("input", 3, 8, name="stem", bias=False), 8, name="stem_bn"))
    h = net.relu(net.bn(net.conv(x, 8, 4, k=1, name="reduce", bias=False), 4, name="reduce_bn"))
    h = net.bn(net.conv(h, 4, 12, name="expand", bias=False), 12, name="expand_bn")
    skip = net.bn(net.conv(x, 8, 12, k=1, name="downsample", bias=False), 12, name="downsample_bn")
    return head(net, net.relu(net.op("Add", [h, skip], name="join")), 12)


def test_renamed_block_without_its_branch_keeps_its_downsample():
    """Position alone: of two alike convs reading one tensor, the one whose neighbours match stays."""
    model = downsample_block_model()
    after = removing(model, "reduce")
    by_name, by_position = diff(model, after), diff(model, renamed(after))
    assert [b.ops for b in by_name.removed] == [["reduce", "reduce_bn", "relu2", "expand", "expand_bn"]]
    assert changes(by_position) == changes(by_name)
    assert [(b.ops, b.kind) for b in by_position.removed] == [(b.ops, b.kind) for b in by_name.removed]


@pytest.mark.parametrize("name", ["resnet18_bn", "mobilenet_v3_small_bn", "googlenet_bn"])
def test_real_models_pruned_at_random_match_by_position_as_by_name(name):
    """check's random structure with whole branches removed: renaming every node changes nothing."""
    path = TORCHVISION_DIR / f"{name}.onnx"
    if not path.exists():
        pytest.skip("torchvision exports missing")
    loaded, analysis = prepare(str(path), seed=0)
    result = prune_loaded(loaded, analysis, random_structure(loaded, analysis, 1.0, 0), approximate_borders=True)
    by_name, by_position = diff(loaded.model, result.model), diff(loaded.model, renamed(result.model))
    assert by_name.removed and changes(by_name)
    assert changes(by_position) == changes(by_name)
    assert widths(by_position) == widths(by_name)
    assert [(b.ops, b.kind) for b in by_position.removed] == [(b.ops, b.kind) for b in by_name.removed]
