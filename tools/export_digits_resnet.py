#!/usr/bin/env python3
"""Export a small 2-D ResNet for the 28x28 digit set the way users do (DEV-ONLY: needs torch).

The network: a 3x3 stem, three stages of two basic blocks (widths 16-32-64, stride 2 between
stages, 1x1 projection shortcuts), global average pool, a linear classifier; BatchNormalization
everywhere. Exported with torch's TorchScript exporter and its defaults (initializer
deduplication on, which is what turns every untrained BatchNormalization of one width into
Identity aliases of one tensor), opset 17, symbolic batch:

- `resnet_digits_bn_untrained.onnx`: `training=TrainingMode.PRESERVE, do_constant_folding=False`
  (BatchNormalization kept), untrained: what MorphNet's retrain-from-scratch workflow feeds in;
- `resnet_digits_folded_untrained.onnx`: the default eval export (BN folded into Conv);
- `resnet_digits_bn_trained.onnx`, `resnet_digits_folded_trained.onnx`: the same after
  `--epochs` of SGD on the digit set (models/digits.py).

    .venv/bin/pip install torch==2.13.0   # the CPU build
    .venv/bin/python tools/export_digits_resnet.py --out tests/data/torch
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
from digits import make_digits28  # noqa: E402


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class DigitsResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, c_in = [], widths[0]
        for stage, width in enumerate(widths):
            for index in range(2):
                blocks.append(BasicBlock(c_in, width, 2 if stage and not index else 1))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def export(model: nn.Module, path: Path, keep_bn: bool) -> None:
    model.eval()
    mode = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                      training=mode, do_constant_folding=not keep_bn, dynamo=False)
    print(path)


def train(model: nn.Module, epochs: int, seed: int) -> float:
    train_set, val_set = make_digits28()
    x, y = torch.from_numpy(train_set["x"]), torch.from_numpy(train_set["labels"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(y), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(val_set["x"]))
    return float((logits.argmax(1).numpy() == val_set["labels"]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/data/torch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = DigitsResNet()
    for keep_bn, variant in ((True, "bn"), (False, "folded")):
        export(model, out / f"resnet_digits_{variant}_untrained.onnx", keep_bn)
    accuracy = train(model, args.epochs, args.seed)
    print(f"trained in torch: {accuracy:.1%} validation top-1")
    if accuracy < 0.5:
        raise SystemExit("torch training failed to learn the digits: not exporting a 'trained' model")
    for keep_bn, variant in ((True, "bn"), (False, "folded")):
        export(model, out / f"resnet_digits_{variant}_trained.onnx", keep_bn)


if __name__ == "__main__":
    main()
