"""Data goals of issue 24: image folders streamed from disk, arrays mapped from disk.

Goals measured (`train` on models/tiny_resnet.onnx, 32x32 RGB, 10 classes, one onnxruntime thread):

1. memory: an image folder of 50,000 PNGs trains with a peak memory at most 1.5x that of the same
   run on a folder of 5,000;
2. speed: the 50,000-image folder trains at 90% or more of the steps per second of the same images
   as an .npz (decoded once, normalized as the folder is read without augmentation);
3. larger than memory: an .npz and a folder of .npy files (4 copies of the 50,000 images: 2.46 GB)
   train in a process whose data segment is limited (RLIMIT_DATA, `prlimit --data`) to well below
   the data's size: the arrays are mapped, not read into memory.

The images are generated (random pixels with a class-dependent tint, PNG). Each run is the CLI
(`morphnet_onnx.cli.main`) in a fresh subprocess reporting its own peak RSS (VmHWM) and the largest
anonymous RSS seen (RssAnon, polled every 0.1 s: memory that is not a mapped file's pages), with
tools/bench_memory.py's `run_command`; steps per second are the training loop's (`steps` /
`seconds` of `--json`: data reading included, the probe and the final evaluation not). Runs of the
kinds alternate, `--repeats` times; the table shows medians.

    .venv/bin/python tools/bench_data.py [--dir /tmp/morphnet-bench-data] [--sizes 5000,50000] [--steps 300]
        [--batch-size 64] [--repeats 3] [--workers 2] [--limit-gb 1.0] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import run_command  # noqa: E402
from harness import ROOT, machine_info, machine_line, markdown_table, write_json  # noqa: E402

from morphnet_onnx.loading.model import load  # noqa: E402
from morphnet_onnx.recipes.shrink import load_data  # noqa: E402

MODEL = ROOT / "models" / "tiny_resnet.onnx"
CLASSES = 10
COPIES = 4  # goal 3: the largest folder's images this many times over


def make_images(folder: Path, count: int) -> Path:
    """`count` 32x32 PNGs in CLASSES class folders (made once; a marker file records the count)."""
    marker = folder / ".complete"
    if marker.exists() and marker.read_text() == str(count):
        return folder
    rng = np.random.default_rng(count)
    for index in range(count):
        label = index % CLASSES
        target = folder / f"class{label}"
        target.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)
        pixels[..., label % 3] += np.uint8(25 * (label // 3 + 1))  # a tint per class: something to learn
        Image.fromarray(pixels).save(target / f"{index:06d}.png")
    marker.write_text(str(count))
    return folder


def images_as_arrays(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The folder's images read as `evaluate` reads them (no augmentation): the same data as arrays."""
    data = load_data(folder, None, load(MODEL), "ce")
    parts = [batch["input"][:min(1000, len(data) - start)]
             for start, batch in zip(range(0, len(data), 1000), data.batches(1000, False, 0, fill_last=True))]
    return np.concatenate(parts), data.labels


def make_npz(folder: Path, path: Path) -> Path:
    if not path.exists():
        x, labels = images_as_arrays(folder)
        np.savez(path, input=x, labels=labels)
    return path


def make_large(folder: Path, out: Path) -> tuple[Path, Path]:
    """COPIES x the folder's images, as a folder of .npy files and as an .npz (written in pieces)."""
    arrays, npz = out / "large_npy", out / "large.npz"
    if not npz.exists():
        x, labels = images_as_arrays(folder)
        arrays.mkdir(exist_ok=True)
        big = np.lib.format.open_memmap(arrays / "x.npy", "w+", np.float32, (COPIES * len(x), *x.shape[1:]))
        for copy in range(COPIES):
            big[copy * len(x):(copy + 1) * len(x)] = x
        big.flush()
        np.save(arrays / "labels.npy", np.tile(labels, COPIES))
        del x, big
        mapped = np.load(arrays / "x.npy", mmap_mode="r")  # np.savez writes a mapped array in chunks
        np.savez(npz, input=mapped, labels=np.tile(labels, COPIES))
    return arrays, npz


def train_argv(data: Path, args, out: Path, *extra: str) -> list[str]:
    return ["train", str(MODEL), "--data", str(data), "--steps", str(args.steps), "--batch-size",
            str(args.batch_size), "--threads", "1", "--data-workers", str(args.workers), "-o", str(out),
            "--no-progress", "--json", *extra]


def measure(argv: list[str], log: Path) -> dict:
    result = run_command(argv, cap_kb=12 << 20, log=log)
    doc = next((json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")), None)
    if doc is None or result.get("rc") != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {log.read_text()[-2000:]}")
    return {"peak_rss_mb": result["peak_rss_kb"] / 1024, "anon_mb": result["polled_anon_kb"] / 1024,
            "steps_per_s": doc["steps"] / doc["seconds"], "loop_s": doc["seconds"], "wall_s": result["wall_seconds"]}


def limited(argv: list[str], limit_bytes: int, log: Path) -> dict:
    """The CLI under RLIMIT_DATA (prlimit --data): exit code and the last line it printed."""
    command = ["prlimit", f"--data={limit_bytes}", sys.executable, "-m", "morphnet_onnx", *argv]
    run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    log.write_text(run.stdout + run.stderr)
    last = (run.stdout.strip().splitlines() or run.stderr.strip().splitlines() or [""])[-1]
    return {"rc": run.returncode, "steps": json.loads(last)["steps"] if run.returncode == 0 else None,
            "error": None if run.returncode == 0 else run.stderr.strip()[-300:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/tmp/morphnet-bench-data")
    parser.add_argument("--sizes", default="5000,50000")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit-gb", type=float, default=1.0, help="RLIMIT_DATA of goal 3 (0: skip goal 3)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    machine = machine_info()
    runs: dict[str, list[dict]] = {}
    kinds = {}
    for size in sizes:
        folder = make_images(out / f"images{size}", size)
        kinds[f"images {size}"] = (folder, ())
        kinds[f"images {size} --no-augment"] = (folder, ("--no-augment",))
        kinds[f"npz {size}"] = (make_npz(folder, out / f"images{size}.npz"), ())
    for repeat in range(args.repeats):
        for name, (data, extra) in kinds.items():
            log = out / f"{name.replace(' ', '_')}.log"
            runs.setdefault(name, []).append(measure(train_argv(data, args, out / "trained.onnx", *extra), log))
            print(f"[{repeat}] {name}: {runs[name][-1]}", flush=True)
    rows, medians = [], {}
    for name, results in runs.items():
        medians[name] = {key: statistics.median(r[key] for r in results) for key in results[0]}
        m = medians[name]
        rows.append([name, f"{m['steps_per_s']:.2f}", f"{m['peak_rss_mb']:.0f}", f"{m['anon_mb']:.0f}"])
    print(machine_line(machine))
    print(markdown_table(["data", "steps/s", "peak RSS (MB)", "peak RssAnon (MB)"], rows, ["---", "--:", "--:", "--:"]))
    small, large = min(sizes), max(sizes)
    goals = {
        "memory_ratio": medians[f"images {large}"]["peak_rss_mb"] / medians[f"images {small}"]["peak_rss_mb"],
        "speed_ratio": medians[f"images {large}"]["steps_per_s"] / medians[f"npz {large}"]["steps_per_s"],
        "speed_ratio_no_augment": (medians[f"images {large} --no-augment"]["steps_per_s"]
                                   / medians[f"npz {large}"]["steps_per_s"]),
    }
    if args.limit_gb:
        arrays, npz = make_large(kinds[f"images {large}"][0], out)
        limit = int(args.limit_gb * 1e9)
        size = {"npy folder": sum(p.stat().st_size for p in arrays.iterdir()), "npz": npz.stat().st_size}
        goals["larger_than_memory"] = {}
        for name, data in (("npy folder", arrays), ("npz", npz)):
            outcome = limited(train_argv(data, args, out / "trained.onnx"), limit, out / f"limited_{name[:3]}.log")
            goals["larger_than_memory"][name] = dict(outcome, data_gb=size[name] / 1e9, limit_gb=args.limit_gb)
            print(f"{name} of {size[name] / 1e9:.2f} GB under RLIMIT_DATA {args.limit_gb} GB: {outcome}")
    print(json.dumps(goals, indent=1))
    if args.json:
        write_json(args.json, {"machine": machine, "args": vars(args), "runs": runs, "medians": medians,
                               "goals": goals})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
