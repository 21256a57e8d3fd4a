#!/usr/bin/env python3
"""Export timm vision transformers the way users export them (DEV-ONLY: needs torch, torchvision,
timm and, for the dynamo exporter, onnxscript), for docs/coverage.md's transformer sweep.

Random weights (`pretrained=False`: no hub download). Each model with both of torch's exporters:
`<name>_torchscript.onnx` (`dynamo=False`, opset 17, a dynamic batch as users ask for it) and
`<name>_dynamo.onnx` (`dynamo=True`, its default opset, static shapes), weights inside the file
(files of 10 to 120 MB: kept out of the repository).

    python tools/export_timm.py --out /tmp/timm_exports
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

MODELS = {  # name: input size
    "deit_tiny_patch16_224": 224,
    "swin_tiny_patch4_window7_224": 224,
    "levit_128s": 224,
    "mobilevit_xs": 256,
}


def export(name: str, size: int, out_dir: Path, dynamo: bool) -> Path:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, size, size)
    path = out_dir / f"{name}_{'dynamo' if dynamo else 'torchscript'}.onnx"
    with torch.no_grad():
        if dynamo:
            program = torch.onnx.export(model, (x,), input_names=["input"], output_names=["logits"], dynamo=True)
            program.save(str(path), external_data=False)
        else:
            torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--exporters", nargs="*", default=["torchscript", "dynamo"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for name in args.models:
        for exporter in args.exporters:
            try:
                path = export(name, MODELS[name], args.out, exporter == "dynamo")
                print(f"{path} {path.stat().st_size / 2**20:.1f} MB", flush=True)
            except Exception as exc:  # a model one exporter cannot take is a finding, not a stop
                print(f"{name} {exporter}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", flush=True)


if __name__ == "__main__":
    main()
