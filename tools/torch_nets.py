"""The bundled example's network in torch (DEV-ONLY: needs torch): the same layers and parameter
count as models/make_mnist1d.py's 1-D ResNet, for the benchmarks that compare with torch
(tools/bench_train_step.py, tools/bench_tradeoff.py)."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm1d(c_out, eps=1e-5)]


class Block(nn.Module):
    """models/make_mnist1d.py's residual block."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(*conv_bn(c_in, c_out, 3, stride), nn.ReLU())
        self.conv2 = nn.Sequential(*conv_bn(c_out, c_out, 3))
        self.down = (nn.Sequential(*conv_bn(c_in, c_out, 1, stride)) if stride != 1 or c_in != c_out
                     else nn.Identity())

    def forward(self, x):
        return torch.relu(self.conv2(self.conv1(x)) + self.down(x))


def resnet1d(classes: int = 10) -> nn.Sequential:
    layers = [*conv_bn(1, 32, 5), nn.ReLU()]
    c = 32
    for stage, w in enumerate((32, 64, 128)):
        for i in range(2):
            layers.append(Block(c, w, 2 if stage > 0 and i == 0 else 1))
            c = w
    layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)
