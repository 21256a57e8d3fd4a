"""A 20-class 16x16 texture task where width matters, made here (no download): the third task of
tools/bench_tradeoff.py, chosen because the digit set saturates near 99.4% at every width.

Each class has 3 prototypes; a prototype is the sum of 4 Gabor patches (orientation, frequency,
phase and position drawn at random, shared seed), so a class is multi-modal and classes share
orientations: telling 20 classes of 3 modes apart needs many filters, which is what a wide network
has. An example is one of its class's prototypes, shifted by up to 2 pixels (zero padded), each patch's
amplitude jittered by 30%, plus smooth (blurred) noise and pixel noise. 12,000 training and 3,000
validation examples from disjoint draws of the same distribution.

    python models/patterns.py --out DIR      # writes DIR/patterns_train.npz, DIR/patterns_val.npz

Each .npz holds `x` (float32 [N, 1, 16, 16], standardised with the training split's mean and std)
and `labels` (int64), the layout `--data` wants for a one-input model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SIZE = 16
CLASSES = 20
MODES = 3  # prototypes per class
PATCHES = 4  # Gabor patches per prototype
SHIFT = 2
TRAIN, VAL = 12_000, 3_000
AMPLITUDE_JITTER = 0.3
SMOOTH_NOISE, PIXEL_NOISE = 0.6, 0.3


def _gabor(cy: float, cx: float, theta: float, freq: float, phase: float, sigma: float) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
    envelope = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))
    return envelope * np.cos(2 * np.pi * freq * u + phase)


def prototypes(seed: int = 0) -> np.ndarray:
    """[CLASSES, MODES, PATCHES, SIZE, SIZE]: every patch of every prototype, unit amplitude."""
    rng = np.random.default_rng(seed)
    out = np.empty((CLASSES, MODES, PATCHES, SIZE, SIZE))
    for c in range(CLASSES):
        for m in range(MODES):
            for p in range(PATCHES):
                out[c, m, p] = _gabor(rng.uniform(3, SIZE - 4), rng.uniform(3, SIZE - 4),
                                      rng.uniform(0, np.pi), rng.uniform(0.12, 0.35), rng.uniform(0, 2 * np.pi),
                                      rng.uniform(1.5, 3.0))
    return out


def _blur(images: np.ndarray) -> np.ndarray:
    """A 5-tap binomial blur along both axes (the smooth part of the noise)."""
    kernel = np.array([1, 4, 6, 4, 1], dtype=np.float64) / 16
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)), mode="wrap")
    rows = sum(k * padded[:, i:i + SIZE, :] for i, k in enumerate(kernel))
    return sum(k * rows[:, :, i:i + SIZE] for i, k in enumerate(kernel))


def _draw(protos: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, CLASSES, n)
    modes = rng.integers(0, MODES, n)
    amplitudes = 1 + AMPLITUDE_JITTER * rng.uniform(-1, 1, (n, PATCHES))
    images = np.einsum("np,nphw->nhw", amplitudes, protos[labels, modes])
    padded = np.pad(images, ((0, 0), (SHIFT, SHIFT), (SHIFT, SHIFT)))
    offsets = rng.integers(0, 2 * SHIFT + 1, size=(n, 2))
    shifted = np.stack([padded[i, dy:dy + SIZE, dx:dx + SIZE] for i, (dy, dx) in enumerate(offsets)])
    smooth = _blur(rng.normal(0, 1, (n, SIZE, SIZE)))
    smooth *= SMOOTH_NOISE / smooth.std()
    return shifted + smooth + rng.normal(0, PIXEL_NOISE, (n, SIZE, SIZE)), labels.astype(np.int64)


def make_patterns(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train, val) as dicts of arrays."""
    protos = prototypes(seed)
    rng = np.random.default_rng(seed + 1)
    train_x, train_y = _draw(protos, TRAIN, rng)
    val_x, val_y = _draw(protos, VAL, rng)
    mean, std = train_x.mean(), train_x.std()

    def pack(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": ((x - mean) / std).astype(np.float32)[:, None], "labels": y}

    return pack(train_x, train_y), pack(val_x, val_y)


def write_patterns(out_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "patterns_train.npz", out_dir / "patterns_val.npz"
    if all(p.exists() for p in paths):
        return paths
    train, val = make_patterns(seed)
    for path, arrays in zip(paths, (train, val)):
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for patterns_train.npz and patterns_val.npz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_patterns(args.out, args.seed):
        print(path)


if __name__ == "__main__":
    main()
