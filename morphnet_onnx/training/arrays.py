"""Arrays as data: an .npz file, a folder of .npy files, or a user's Python function.

`--data train.npz` holds one array per model input keyed by the input's name (or `x` for a
single-input model) and `labels` (class indices for cross-entropy, targets for mse); `--data DIR`
holds the same arrays as DIR/<key>.npy. Both are mapped from disk, not read: a batch reads its rows
when it is gathered, so a data set larger than memory trains. A member of an .npz written with
`np.savez_compressed` cannot be mapped (its bytes are deflated): it is read into memory, with a
warning when it is large (COMPRESSED_WARNING_BYTES). `--data-module pkg.mod:fn` names a function returning an iterable of batches, each a dict
of arrays with the same keys, for users with their own pipelines (gathered into memory).
"""

from __future__ import annotations

import importlib
import os
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..errors import MorphNetError, first_line
from .dataset import Dataset, InputSpec

# Reading ahead: a mapped array's rows come from disk (page faults), a thread reads the next batch
# while the step runs.
MAPPED_WORKERS = 1
MAPPED_PREFETCH = 2
# The NaN/Inf scan reads a mapped array this many bytes at a time (memory stays bounded).
SCAN_BYTES = 64 << 20
# Compressed members read into memory are worth a warning from this size (the bundled example's are not).
COMPRESSED_WARNING_BYTES = 256 << 20
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # a zip member's local file header (APPNOTE 4.3.7)


class ArrayDataset(Dataset):
    """Inputs by model input name and labels, as arrays in memory or mapped from disk."""

    def __init__(self, arrays: dict[str, np.ndarray], labels: np.ndarray, name: str) -> None:
        self.arrays = arrays
        self.labels = labels
        self.name = name
        mapped = any(isinstance(v, np.memmap) for v in arrays.values())
        self.workers, self.prefetch = (MAPPED_WORKERS, MAPPED_PREFETCH) if mapped else (0, 0)

    def gather(self, rows: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v[rows]) for k, v in self.arrays.items()}


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an .npz file or of a folder of .npy files, mapped where they can be."""
    path = Path(path)
    if not path.exists():
        raise MorphNetError(f"{path}: no such file")
    if path.suffix == ".npy" and path.is_file():
        raise MorphNetError(f"{path}: an .npy file holds one array; put it in a folder as x.npy (or <input>.npy) "
                            f"beside labels.npy and give the folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".npy" and not p.name.startswith("."))
        return {p.stem: _map_npy(p) for p in files}
    try:
        return _map_npz(path)
    except MorphNetError:
        raise
    except Exception as exc:
        raise MorphNetError(f"{path}: not a readable .npz file ({first_line(exc)})") from exc


def _map_npy(path: Path) -> np.ndarray:
    try:
        value = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "empty" not in str(exc):  # an array of no elements cannot be mapped: read it (it is tiny)
            raise MorphNetError(f"{path}: not a readable .npy file ({first_line(exc)})") from exc
        value = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise MorphNetError(f"{path}: not a readable .npy file ({first_line(exc)})") from exc
    return value


def _map_npz(path: Path) -> dict[str, np.ndarray]:
    """Each stored (uncompressed) member mapped where its .npy data start inside the archive; the
    other members read into memory, with a warning when they are large."""
    arrays: dict[str, np.ndarray] = {}
    compressed, compressed_bytes = [], 0
    with zipfile.ZipFile(path) as archive, open(path, "rb") as fh:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            mapped = _map_member(path, fh, info) if info.compress_type == zipfile.ZIP_STORED else None
            if mapped is None:
                with archive.open(info) as member:
                    mapped = np.lib.format.read_array(member, allow_pickle=False)
                if info.compress_type != zipfile.ZIP_STORED:
                    compressed.append(key)
                    compressed_bytes += info.file_size
            arrays[key] = mapped
    if compressed and compressed_bytes >= COMPRESSED_WARNING_BYTES:
        warnings.warn(f"{path}: {', '.join(compressed)} compressed (np.savez_compressed): read into memory "
                      f"rather than mapped; save with np.savez to train on data larger than memory", stacklevel=2)
    return arrays


def _map_member(path: Path, fh, info: zipfile.ZipInfo) -> np.ndarray | None:
    """The member's array mapped in place, or None where it cannot be (no elements, an .npy header
    version numpy reads only whole)."""
    fh.seek(info.header_offset)
    fields = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    if fields[0] != b"PK\x03\x04":
        raise MorphNetError(f"{path}: member {info.filename} has no zip header where the archive says")
    fh.seek(info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1])
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        return None
    if dtype.hasobject:
        raise MorphNetError(f"{path}: {info.filename} holds Python objects; save numbers")
    if not shape or int(np.prod(shape)) == 0:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape, order="F" if fortran else "C")


def make_dataset(arrays: dict[str, np.ndarray], specs: list[InputSpec], task: str, classes: int | None,
                 name: str) -> ArrayDataset:
    """Check the arrays against the model's inputs; every problem is one line saying what to change."""
    if "labels" not in arrays:
        raise MorphNetError(f"{name}: no 'labels' array (found: {sorted(arrays)})")
    labels = np.array(arrays["labels"])  # in memory: one number per example
    inputs = {}
    for spec in specs:
        key = spec.name if spec.name in arrays else ("x" if len(specs) == 1 and "x" in arrays else None)
        if key is None:
            raise MorphNetError(f"{name}: no array for model input {spec.name!r} (found: {sorted(arrays)}; "
                                f"name it {spec.name!r}{' or x' if len(specs) == 1 else ''})")
        value = arrays[key]
        if value.shape[1:] != spec.shape[1:]:
            raise MorphNetError(f"{name}: {key!r} has examples of shape {list(value.shape[1:])}, the model input "
                                f"{spec.name!r} wants {list(spec.shape[1:])}")
        if value.dtype != spec.dtype:
            raise MorphNetError(f"{name}: {key!r} is {value.dtype}, the model input {spec.name!r} wants "
                                f"{spec.dtype}; save it as {spec.dtype}")
        if len(value) != len(labels):
            raise MorphNetError(f"{name}: {key!r} has {len(value)} examples but 'labels' has {len(labels)}")
        require_finite(value, key, name)
        inputs[spec.name] = value
    if len(labels) == 0:
        raise MorphNetError(f"{name}: the dataset is empty")
    if task == "ce":
        if not np.issubdtype(labels.dtype, np.integer):
            raise MorphNetError(f"{name}: 'labels' must be integer class indices for cross-entropy "
                                f"(got {labels.dtype}; use --loss mse for regression)")
        if classes is not None and (labels.min() < 0 or labels.max() >= classes):
            raise MorphNetError(f"{name}: labels range {labels.min()}..{labels.max()} but the model has {classes} "
                                f"classes (0..{classes - 1})")
        labels = labels.astype(np.int64)
    else:
        require_finite(labels, "labels", name)
        labels = labels.astype(np.float32)
    return ArrayDataset(inputs, labels, name)


def require_finite(value: np.ndarray, key: str, name: str) -> None:
    """NaN or Inf in the data would surface as a NaN loss blamed on the learning rate: name it here.
    A mapped array is scanned SCAN_BYTES at a time (one read of the file, memory bounded)."""
    if not np.issubdtype(value.dtype, np.floating) or len(value) == 0:
        return
    step = max(1, SCAN_BYTES // max(value[:1].nbytes, 1))
    count, first = 0, None
    for start in range(0, len(value), step):
        chunk = np.asarray(value[start:start + step])
        bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        if bad.any():
            count += int(bad.sum())
            first = start + int(np.argmax(bad)) if first is None else first
    if count:
        raise MorphNetError(f"{name}: {key!r} holds NaN or Inf in {count} examples, the first at index "
                            f"{first}; clean or drop them")


def load_module_batches(spec: str, specs: list[InputSpec], task: str, classes: int | None) -> ArrayDataset:
    """`pkg.mod:fn` returning an iterable of batches (dicts); gathered into memory and checked."""
    module_name, _, fn_name = spec.partition(":")
    if not module_name or not fn_name:
        raise MorphNetError(f"--data-module {spec!r}: expected package.module:function")
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise MorphNetError(f"--data-module {spec!r}: cannot import ({exc})") from exc
    collected: dict[str, list[np.ndarray]] = {}
    for batch in fn():
        for key, value in batch.items():
            collected.setdefault(key, []).append(np.asarray(value))
    if not collected:
        raise MorphNetError(f"--data-module {spec!r}: returned no batches")
    arrays = {k: np.concatenate(v) for k, v in collected.items()}
    return make_dataset(arrays, specs, task, classes, spec)
