"""Peak memory and time of `inspect`, `check`, `prune` and `expand` on big models (issue 15, "Big models").

Target: a model over 2 GB (external data) is inspected, checked, pruned and expanded with a peak
resident memory of at most about twice the model's size.

The models are generated straight into external data, one tensor at a time, so generating a 2 GB
model needs no more memory than its largest tensor:

- `vgg11`: VGG-11's shapes (input 1x3x224x224, 8 convs, fc 25088 -> 4096 -> 4096 -> 1000; 132.9M
  parameters, 0.53 GB), written with external data;
- `vgg11-wide`: the same convs with fc 25088 -> 13312 -> 13312 -> 1000 (534M parameters, 2.14 GB).

Weights are constant per output channel (scaled by 1/fan_in so activations stay O(1)): writing
them is quick and every channel still differs from its neighbours. Each command runs as the CLI
(`morphnet_onnx.cli.main`) in a fresh subprocess that reports its own peak RSS (VmHWM) and wall
time; the parent polls the child's RSS every 0.1 s, keeps the largest anonymous part seen
(RssAnon: memory that is not a mapped file's pages, which the kernel cannot drop) and kills the
child above `--cap-gb`, so a run that would need more memory than the machine has is recorded as
"killed" instead of pushing others out.

    .venv/bin/python tools/bench_memory.py [--models vgg11,vgg11-wide] [--dir /work/tmp-big] [--cap-gb 14]
        [--commands inspect,check,prune,expand] [--json OUT.json] [--keep-files]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import machine_info, write_json  # noqa: E402

VGG11_CONVS = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
MODELS = {"vgg11": 4096, "vgg11-wide": 13312}

# The child's peak is VmHWM (the high-water mark of its own address space), not ru_maxrss: Linux
# carries ru_maxrss over exec, so a child would report the benchmark's own RSS when that is larger.
CHILD = r"""
import json, sys, time
start = time.perf_counter()
from morphnet_onnx.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
seconds = time.perf_counter() - start
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
with open(sys.argv[1], "w") as fh:
    json.dump({"rc": code, "seconds": seconds, "peak_rss_kb": int(status["VmHWM"].split()[0])}, fh)
"""


class ExternalWriter:
    """Initializers written to one external data file as they are made."""

    def __init__(self, data_path: Path) -> None:
        self.data_path = data_path
        self.fh = open(data_path, "wb")
        self.inits: list[TensorProto] = []

    def add(self, name: str, shape: tuple[int, ...], row_values: np.ndarray) -> str:
        """A float tensor whose row i (along axis 0) holds row_values[i] everywhere."""
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        offset = self.fh.tell()
        row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        chunk_rows = max(1, (64 << 20) // (4 * row))
        for begin in range(0, shape[0], chunk_rows):
            end = min(shape[0], begin + chunk_rows)
            block = np.empty((end - begin, row), np.float32)
            block[:] = row_values[begin:end, None]
            self.fh.write(block.tobytes())
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_path.name), ("offset", str(offset)),
                           ("length", str(self.fh.tell() - offset))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        self.inits.append(tensor)
        return name

    def close(self) -> None:
        self.fh.close()


def generate(path: Path, fc_width: int) -> dict[str, int]:
    """Write a VGG-11-shaped model with external data; return {source op name: width} of its groups."""
    writer = ExternalWriter(path.with_name(path.name + ".data"))
    nodes, widths = [], {}
    x, c_in, size, n = "input", 3, 224, 0
    for item in VGG11_CONVS:
        if item == "M":
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{n}"], name=f"pool{n}", kernel_shape=[2, 2],
                                          strides=[2, 2]))
            x, size = f"pool{n}", size // 2
            continue
        n += 1
        name = f"conv{n}"
        scale = 1.0 / (9 * c_in)
        w = writer.add(f"{name}.weight", (item, c_in, 3, 3), scale * (0.5 + (np.arange(item) % 7) / 7))
        b = writer.add(f"{name}.bias", (item,), np.full(item, 0.01))
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}_out"], name=name, kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"{name}_out"], [f"relu{n}"], name=f"relu{n}"))
        x, c_in = f"relu{n}", item
        widths[name] = item
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    x, k = "flat", c_in * size * size
    for i, out in enumerate((fc_width, fc_width, 1000), start=1):
        name = f"fc{i}"
        w = writer.add(f"{name}.weight", (out, k), (1.0 / k) * (0.5 + (np.arange(out) % 7) / 7))
        b = writer.add(f"{name}.bias", (out,), np.full(out, 0.01))
        nodes.append(helper.make_node("Gemm", [x, w, b], [f"{name}_out"], name=name, transB=1))
        x, k = f"{name}_out", out
        if i < 3:
            nodes.append(helper.make_node("Relu", [x], [f"fc_relu{i}"], name=f"fc_relu{i}"))
            x = f"fc_relu{i}"
            widths[name] = out
    writer.close()
    graph = helper.make_graph(nodes, "vgg11", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             ["batch", 3, 224, 224])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", 1000])],
                              writer.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return widths


def run_command(argv: list[str], cap_kb: int, log: Path) -> dict:
    """One CLI command in a fresh subprocess: its own peak RSS and time, killed above the cap."""
    report = log.with_suffix(".json")
    report.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(report)] + argv, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        polled, anon, killed = 0, 0, False
        while child.poll() is None:
            try:
                for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        polled = max(polled, int(line.split()[1]))
                    elif line.startswith("RssAnon:"):
                        anon = max(anon, int(line.split()[1]))
            except OSError:
                pass
            if polled > cap_kb:
                os.killpg(child.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.1)
    wall = time.perf_counter() - start
    if killed or not report.exists():
        return {"argv": argv, "killed": killed, "rc": child.returncode, "seconds": wall, "peak_rss_kb": polled,
                "polled_anon_kb": anon, "log_tail": log.read_text()[-600:]}
    result = json.loads(report.read_text())
    result.update(argv=argv, killed=False, wall_seconds=wall, polled_anon_kb=anon, log_tail=log.read_text()[-600:])
    return result


def files_size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg11,vgg11-wide")
    parser.add_argument("--commands", default="inspect,check,prune,expand")
    parser.add_argument("--dir", default="/work/tmp-big")
    parser.add_argument("--cap-gb", type=float, default=14.0)
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--keep-files", action="store_true", help="leave the generated models in --dir")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    cap_kb = int(args.cap_gb * 2**20)
    results = {"machine": machine_info(), "cap_gb": args.cap_gb, "models": {}}
    try:
        for model_name in args.models.split(","):
            work = folder / model_name
            work.mkdir(exist_ok=True)
            path = work / f"{model_name}.onnx"
            start = time.perf_counter()
            widths = generate(path, MODELS[model_name])
            generated = time.perf_counter() - start
            structure = work / "half.json"
            structure.write_text(json.dumps({name: width // 2 for name, width in widths.items()}))
            size = files_size(path)
            print(f"{model_name}: {size / 1e9:.3f} GB generated in {generated:.1f} s", flush=True)
            entry = {"bytes": size, "generate_s": generated, "commands": {}}
            argvs = {
                "inspect": ["inspect", str(path), "--json"],
                "check": ["check", str(path), "--fraction", "0.5", "--json"],
                "prune": ["prune", str(path), "--structure", str(structure), "-o", str(work / "pruned.onnx")],
                "expand": ["expand", str(path), "--multiplier", "1.0", "-o", str(work / "expanded.onnx")],
            }
            for command in args.commands.split(","):
                result = run_command(argvs[command], cap_kb, work / f"{command}.log")
                out = work / ("pruned.onnx" if command == "prune" else "expanded.onnx")
                if command in ("prune", "expand") and out.exists():
                    result["output_bytes"] = files_size(out)
                    out.unlink()
                    out.with_name(out.name + ".data").unlink(missing_ok=True)
                entry["commands"][command] = result
                peak = result["peak_rss_kb"] * 1024
                state = "KILLED at the cap" if result["killed"] else f"rc {result['rc']}"
                print(f"  {command:8s} peak RSS {peak / 1e9:6.2f} GB ({peak / size:5.2f}x the model; anonymous "
                      f"{result['polled_anon_kb'] * 1024 / 1e9:5.2f} GB), {result.get('seconds', 0):7.1f} s, {state}",
                      flush=True)
                if result["rc"] not in (0, None) or result["killed"]:
                    print("    " + result["log_tail"].strip().replace("\n", "\n    ")[-400:], flush=True)
            results["models"][model_name] = entry
            if not args.keep_files:
                shutil.rmtree(work)
    finally:
        if args.json:
            write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
