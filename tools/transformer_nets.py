"""Small transformers in torch for tools/bench_transformer.py (DEV-ONLY: needs torch), written as
timm writes its ViT (a packed qkv Linear, `reshape(B, N, 3, H, d)`, `num_heads` an attribute that
Torch-Pruning's users patch after pruning heads), and a generated text task that needs attention.

- `TinyViT`: 7x7 patches of the 28x28 digits (16 tokens and a class token), position embeddings,
  pre-LayerNorm blocks of multi-head attention and a GELU MLP, the class token classified.
- `TinyTextTransformer`: a token embedding and position embeddings, the same blocks, the first
  token's output classified.
- `make_match_task`: sequences of `length` tokens from `vocab`; the label says whether the first
  token appears again later (half the examples each way). A per-token MLP and a mean cannot
  answer it: the first position has to look at the others.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


class TinyViT(nn.Module):
    def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, hidden: int = 128, classes: int = 10,
                 image: int = 28, patch: int = 7) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.patch = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class TinyTextTransformer(nn.Module):
    def __init__(self, vocab: int = 16, length: int = 16, dim: int = 64, depth: int = 2, heads: int = 4,
                 hidden: int = 128, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, length, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        _init(self)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def make_match_task(n: int, vocab: int = 16, length: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [n, length], labels int64 [n]): label 1 when ids[0] appears again in ids[1:]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(n, length))
    labels = rng.integers(0, 2, size=n)
    for i in range(n):
        first = ids[i, 0]
        rest = ids[i, 1:]
        if labels[i]:
            if not (rest == first).any():
                rest[rng.integers(0, length - 1)] = first
        else:
            others = [t for t in range(vocab) if t != first]
            rest[rest == first] = rng.choice(others, size=int((rest == first).sum()))
    return ids.astype(np.int64), labels.astype(np.int64)
