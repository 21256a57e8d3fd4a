"""A 10-class 28x28 digit set with no download: scikit-learn's 8x8 digits (bundled as
models/digits8x8.npz), upsampled bilinearly to 28x28; the training split is enlarged with random
shifts of up to 2 pixels. No torch or scikit-learn needed to make it.

    python models/digits.py --out DIR      # writes DIR/digits28_train.npz, DIR/digits28_val.npz

Each .npz holds `x` (float32 [N, 1, 28, 28], standardised) and `labels` (int64), the layout
`--data` wants for a one-input model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "digits8x8.npz"
SIZE = 28
VAL_EXAMPLES = 397  # the remaining 1,400 originals train
SHIFT = 2


def _interpolation(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] bilinear (align-corners) interpolation weights along one axis."""
    pos = np.linspace(0, n_in - 1, n_out)
    low = np.floor(pos).astype(int).clip(0, n_in - 2)
    frac = pos - low
    matrix = np.zeros((n_out, n_in))
    matrix[np.arange(n_out), low] = 1 - frac
    matrix[np.arange(n_out), low + 1] = frac
    return matrix


def upsample(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    rows = _interpolation(images.shape[1], size)
    cols = _interpolation(images.shape[2], size)
    return np.einsum("oi,nij,pj->nop", rows, images, cols)


def _shifted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    padded = np.pad(images, ((0, 0), (SHIFT, SHIFT), (SHIFT, SHIFT)))
    out = np.empty_like(images)
    offsets = rng.integers(0, 2 * SHIFT + 1, size=(len(images), 2))
    for i, (dy, dx) in enumerate(offsets):
        out[i] = padded[i, dy:dy + images.shape[1], dx:dx + images.shape[2]]
    return out


def make_digits28(train_copies: int = 3, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train, val) as dicts of arrays; val holds unshifted originals the training split never sees."""
    with np.load(SOURCE) as source:
        images, labels = source["images"].astype(np.float64) / 16.0, source["labels"].astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    val_index, train_index = order[:VAL_EXAMPLES], order[VAL_EXAMPLES:]
    big = upsample(images)
    train_images = np.concatenate([big[train_index]] + [_shifted(big[train_index], rng)
                                                        for _ in range(train_copies - 1)])
    train_labels = np.tile(labels[train_index], train_copies)
    mean, std = train_images.mean(), train_images.std()

    def pack(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": ((x - mean) / std).astype(np.float32)[:, None], "labels": y}

    shuffle = rng.permutation(len(train_labels))
    return pack(train_images[shuffle], train_labels[shuffle]), pack(big[val_index], labels[val_index])


def write_digits28(out_dir: str | Path, train_copies: int = 3, seed: int = 0) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val = make_digits28(train_copies, seed)
    paths = out_dir / "digits28_train.npz", out_dir / "digits28_val.npz"
    for path, arrays in zip(paths, (train, val)):
        np.savez(path, **arrays)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for digits28_train.npz and digits28_val.npz")
    parser.add_argument("--train-copies", type=int, default=3, help="copies of each training digit (1 unshifted)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_digits28(args.out, args.train_copies, args.seed):
        print(path)


if __name__ == "__main__":
    main()
