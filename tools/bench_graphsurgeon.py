#!/usr/bin/env python3
"""Time onnx-graphsurgeon's import/export against morphnet_onnx's loading (DEV-ONLY tool; results and the
decision go in docs/benchmarks.md, "onnx-graphsurgeon").

onnx-graphsurgeon is not a dependency of the package; install it next to it to run this
(`.venv/bin/pip install onnx-graphsurgeon`).

Models: the graph-only torchvision exports in tests/data/torchvision/ (default resnet50_bn and vit_b_16_bn),
each twice: as committed ("light": every weight a ConstantOfShape placeholder) and with its weights made
real ("weights": every placeholder replaced by an initializer of the same shape and dtype, random
values; the size of a real export), written to a temporary folder first. For each file, alternated
`--repeats` times in one process (ABAB..., gc.collect() outside the timers):

- `onnx.load(path)`;
- `morphnet_onnx.load(path)`: onnx.load + opset check + constant-alias resolution + shape inference
  with folding (what every command starts with);
- `gs.import_onnx(model)` of a model already loaded with onnx.load, and `gs.export_onnx(graph)` of it;
- `model.SerializeToString()` of the loaded model, for scale: the in-memory part of writing a model today.

    .venv/bin/python tools/bench_graphsurgeon.py [--repeats 5] [--models resnet50_bn,vit_b_16_bn] [--json OUT]

Prints a Markdown table of medians (seconds) and the file sizes, and what gs's IR holds of the constants
and shapes morphnet_onnx needs: how many tensors are `gs.Constant`, how many outputs of Constant and
ConstantOfShape nodes are `gs.Variable` instead, how many Variables carry a fully static shape. Exit
status 2 when onnx-graphsurgeon is missing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from harness import machine_info, timed, write_json  # tools/harness.py
from morphnet_onnx.loading.model import load

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "torchvision"


def with_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The graph-only export with every ConstantOfShape placeholder over a constant shape made an
    initializer of that shape (normal values x 0.02 in the fill's dtype)."""
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            shapes[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept, added, shape_inputs = [], [], set()
    for node in out.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape_inputs.add(node.input[0])
            fill = next((a.t for a in node.attribute if a.name == "value"), None)
            dtype = onnx.helper.tensor_dtype_to_np_dtype(fill.data_type) if fill is not None else np.float32
            shape = [int(d) for d in shapes[node.input[0]].reshape(-1)]
            value = (rng.standard_normal(shape) * 0.02).astype(dtype)
            added.append(numpy_helper.from_array(value, node.output[0]))
        else:
            kept.append(node)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(added)
    # The placeholders' shape tensors (initializers or Constant nodes) go when nothing else reads them.
    read = {i for n in out.graph.node for i in n.input}
    dead = shape_inputs - read
    inits = [t for t in out.graph.initializer if t.name not in dead]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    kept = [n for n in out.graph.node if not (n.op_type == "Constant" and n.output[0] in dead)]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    onnx.checker.check_model(out)
    return out


def ir_facts(graph, gs) -> dict:
    """What the imported graph holds as values and shapes."""
    tensors = graph.tensors()
    variables = [t for t in tensors.values() if isinstance(t, gs.Variable)]
    return {
        "constants": sum(isinstance(t, gs.Constant) for t in tensors.values()),
        "constant_node_outputs": sum(len(n.outputs) for n in graph.nodes if n.op == "Constant"),
        "constant_of_shape_outputs": sum(len(n.outputs) for n in graph.nodes if n.op == "ConstantOfShape"),
        "variables": len(variables),
        "static_variables": sum(1 for t in variables if t.shape is not None
                                and all(isinstance(d, int) for d in t.shape)),
    }


def bench_file(path: Path, repeats: int, gs) -> dict:
    times: dict[str, list[float]] = {"onnx.load": [], "io.load": [], "gs.import_onnx": [], "gs.export_onnx": [],
                                     "serialize": []}
    nodes, facts = None, None
    for i in range(repeats):
        order = ("onnx", "io") if i % 2 == 0 else ("io", "onnx")
        for what in order:
            if what == "io":
                seconds, loaded = timed(load, str(path))
                times["io.load"].append(seconds)
                del loaded
                continue
            seconds, model = timed(onnx.load, str(path))
            times["onnx.load"].append(seconds)
            seconds, graph = timed(gs.import_onnx, model)
            times["gs.import_onnx"].append(seconds)
            nodes = len(graph.nodes)
            facts = facts or ir_facts(graph, gs)
            seconds, exported = timed(gs.export_onnx, graph)
            times["gs.export_onnx"].append(seconds)
            seconds, data = timed(model.SerializeToString)
            times["serialize"].append(seconds)
            del model, graph, exported, data
    return {"file": path.name, "bytes": path.stat().st_size, "nodes": nodes, "ir": facts, "runs_s": times,
            "median_s": {k: statistics.median(v) for k, v in times.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50_bn,vit_b_16_bn", help="names in tests/data/torchvision/")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    try:
        import onnx_graphsurgeon as gs
    except ImportError:
        print("onnx-graphsurgeon is not installed: .venv/bin/pip install onnx-graphsurgeon", file=sys.stderr)
        return 2
    machine = machine_info()
    print(f"# bench_graphsurgeon, {machine['date']}, morphnet-onnx {machine['morphnet_onnx']} ({machine['git_commit']})")
    print(f"machine: {machine['nproc']} cores, {machine['cpu']}; Python {machine['python']}, onnx {machine['onnx']}, "
          f"onnx-graphsurgeon {gs.__version__}, numpy {machine['numpy']}, protobuf {machine['protobuf']}; "
          f"load average at start {' '.join(f'{x:.2f}' for x in machine['loadavg_start'])}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_graphsurgeon_") as tmp:
        for name in args.models.split(","):
            light = DATA / f"{name}.onnx"
            heavy = Path(tmp) / f"{name}_weights.onnx"
            onnx.save(with_weights(onnx.load(str(light))), str(heavy))
            for variant, path in (("light", light), ("weights", heavy)):
                row = bench_file(path, args.repeats, gs)
                row.update(model=name, variant=variant)
                rows.append(row)
                print(f"  {name} {variant}: " + ", ".join(f"{k} {v:.3f} s" for k, v in row["median_s"].items()),
                      file=sys.stderr, flush=True)
    print(f"\nmedians of {args.repeats} alternated runs, seconds")
    print("| model | file | MB | nodes (gs) | onnx.load | io.load | gs.import_onnx | gs.export_onnx | serialize | "
          "import + export / io.load |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        m = r["median_s"]
        both = m["gs.import_onnx"] + m["gs.export_onnx"]
        print(f"| {r['model']} | {r['variant']} | {r['bytes'] / 1e6:.1f} | {r['nodes']} | {m['onnx.load']:.3f} | "
              f"{m['io.load']:.3f} | {m['gs.import_onnx']:.3f} | {m['gs.export_onnx']:.3f} | "
              f"{m['serialize']:.3f} | {both / m['io.load']:.2f}x |")
    print("\nwhat gs.import_onnx gives")
    for r in rows:
        f = r["ir"]
        print(f"- {r['model']} {r['variant']}: {f['constants']} gs.Constant tensors; the outputs of "
              f"{f['constant_node_outputs']} Constant and {f['constant_of_shape_outputs']} ConstantOfShape nodes are "
              f"gs.Variable; {f['static_variables']} of {f['variables']} Variables have a static shape")
    machine["loadavg_end"] = list(os.getloadavg())
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in machine['loadavg_end'])}")
    if args.json:
        write_json(args.json, {"machine": machine, "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
