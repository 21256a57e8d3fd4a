#!/usr/bin/env python3
"""Export a tiny normalizer-free ResNet the way users export timm's NF-ResNets (DEV-ONLY: needs torch).

The convolutions are timm's `ScaledStdConv2d`: scaled weight standardization computed as
`F.batch_norm(weight.reshape(1, out, -1), None, None, gain * fan_in ** -0.5, training=True)`
in every forward pass, so the exported graph holds a BatchNormalization in training mode over a
rank-3 reshape of each weight (torch's constant folding turns the reshaped weight into an
initializer). No BatchNormalization on activations, as in NF-ResNet: a stem, two pre-activation
residual blocks (alpha 0.2, beta from the expected variance), a 1x1 projection, global average
pool and a linear classifier. Exported with the TorchScript exporter (`dynamo=False`: the dynamo
exporter needs onnxscript, which users without it do not get), opset 17, a fixed batch of 1:

- `nf_resnet_tiny.onnx` (about 30 KB): the topology tests/test_zoo_train.py trains.

    .venv/bin/python tools/export_nf_resnet.py --out tests/data/torch
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class ScaledStdConv2d(nn.Conv2d):
    """timm.layers.ScaledStdConv2d: the weight standardized per filter, times a learned gain."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1) -> None:
        super().__init__(c_in, c_out, k, stride, k // 2)
        self.gain = nn.Parameter(torch.ones(c_out, 1, 1, 1))
        self.scale = self.weight[0].numel() ** -0.5
        self.eps = 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0,
                              eps=self.eps).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


class Block(nn.Module):
    """timm's NormFreeBlock, pre-activation: out = shortcut + alpha * conv(conv(act(x) * beta))."""

    def __init__(self, c_in: int, c_out: int, stride: int, beta: float, alpha: float = 0.2) -> None:
        super().__init__()
        self.beta, self.alpha = beta, alpha
        self.conv1 = ScaledStdConv2d(c_in, c_out, 3, stride)
        self.conv2 = ScaledStdConv2d(c_out, c_out, 3)
        self.downsample = ScaledStdConv2d(c_in, c_out, 1, stride) if stride > 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(x) * self.beta
        shortcut = self.downsample(out) if self.downsample is not None else x
        out = self.conv2(F.relu(self.conv1(out)))
        return shortcut + self.alpha * out


class TinyNFResNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = ScaledStdConv2d(3, 8, 3)
        expected_var = 1.0
        blocks = []
        for c_in, c_out, stride in ((8, 8, 1), (8, 16, 2)):
            blocks.append(Block(c_in, c_out, stride, beta=expected_var ** -0.5))
            expected_var += 0.2 ** 2
        self.blocks = nn.Sequential(*blocks)
        self.final = ScaledStdConv2d(16, 32, 1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = F.relu(self.final(x))
        return self.fc(x.mean((2, 3)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write nf_resnet_tiny.onnx into")
    parser.add_argument("--size", type=int, default=16, help="input height and width")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = TinyNFResNet().eval()
    path = args.out / "nf_resnet_tiny.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, args.size, args.size),), str(path), opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamo=False)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
