#!/usr/bin/env python3
"""Models as a new user exports them (DEV-ONLY: needs torch and onnxscript), and the first-contact goal.

torch >= 2.9 exports with the dynamo exporter by default: static shapes (the batch fixed at the
example's), opset 18+, weights as external data. Users also pass `dynamic_shapes`, or keep the
TorchScript exporter (`dynamo=False`). Three networks in torchvision's layouts (tools/first_contact_nets.py:
ResNet-18, MobileNet v2, a small ViT with a class token), each exported the three ways:

    python tools/first_contact.py export [--out tests/data/torch/first_contact]
        small widths at 32x32 for the tests: {resnet18,mobilenet_v2,vit}_{dynamo,dynamo_dyn,ts}.onnx
    python tools/first_contact.py memorize [--steps 40] [--json FILE]
        the goal of issue "Bring the model and the data as users have them": torchvision-size
        ResNet-18 at 224x224, exported with the default exporter and with dynamo=False, trains at batch 8
        on 8 random images with random labels (`morphnet-onnx train`, its default recipe, 40 steps); the
        training accuracy of both, measured with `evaluate` on the same 8 images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from first_contact_nets import ViT, MobileNetV2, ResNet18  # tools/first_contact_nets.py
from harness import machine_info, write_json  # tools/harness.py

ROOT = Path(__file__).resolve().parent.parent
# The default recipe (AdamW, one-cycle at 3e-3) and a constant learning rate.
RECIPES = {"default": [], "constant-1e-3": ["--schedule", "constant", "--lr", "1e-3"]}
SMALL = {"resnet18": lambda: ResNet18(8, 10), "mobilenet_v2": lambda: MobileNetV2(0.25, 10), "vit": lambda: ViT()}


def export(net: torch.nn.Module, shape: tuple[int, ...], stem: Path, variants=("dynamo", "dynamo_dyn", "ts")) -> None:
    net.eval()
    x = torch.randn(*shape)
    for variant in variants:
        path = f"{stem}_{variant}.onnx"
        if variant == "dynamo":  # what `torch.onnx.export(model, (x,), path)` writes
            torch.onnx.export(net, (x,), path, input_names=["input"], output_names=["logits"])
        elif variant == "dynamo_dyn":
            torch.onnx.export(net, (x,), path, input_names=["input"], output_names=["logits"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}})
        else:
            torch.onnx.export(net, (x,), path, input_names=["input"], output_names=["logits"], dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def cli(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "morphnet_onnx", *args], capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"morphnet-onnx {' '.join(args)} failed:\n{run.stderr}")
    return run.stdout


def memorize(steps: int) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    results = {"machine": machine_info(), "steps": steps, "batch": 8, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "eight.npz"
        np.savez(data, input=rng.standard_normal((8, 3, 224, 224)).astype(np.float32),
                 labels=rng.integers(0, 1000, 8))
        export(ResNet18(64, 1000), (1, 3, 224, 224), work / "resnet18", variants=("dynamo", "ts"))
        for variant in ("dynamo", "ts"):
            model = work / f"resnet18_{variant}.onnx"
            for recipe, extra in RECIPES.items():
                out = work / f"trained_{variant}_{recipe}.onnx"
                trained = json.loads(cli("train", str(model), "--data", str(data), "--batch-size", "8", "--steps",
                                         str(steps), "--no-progress", "-o", str(out), "--json", *extra))
                after = json.loads(cli("evaluate", str(out), "--data", str(data), "--json"))
                row = {"steps": trained["steps"], "learning": trained["learning"], "evaluate": after}
                results["runs"][f"{variant} {recipe}"] = row
                print(variant, recipe, json.dumps(row), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export")
    p.add_argument("--out", default=str(ROOT / "tests" / "data" / "torch" / "first_contact"))
    p = sub.add_parser("memorize")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json")
    args = parser.parse_args()
    if args.command == "export":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        for name, make in SMALL.items():
            export(make(), (1, 3, 32, 32), out / name)
        return 0
    results = memorize(args.steps)
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
