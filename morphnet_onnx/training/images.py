"""Image folders as data: torchvision's ImageFolder layout, streamed from disk.

`--data DIR` holds one folder per class (DIR/CLASS/.../IMAGE.png|.jpg|.jpeg); the classes are the
folder names, sorted, and label k is the k-th of them. Folders and files whose name starts with a dot
are skipped (`.ipynb_checkpoints`), and so are files of other types. Images are decoded with Pillow
when a batch is gathered, by `ImageOptions.workers` threads reading ahead of training
(dataset.py: at most 2 x workers batches read ahead), converted to the model input's channels (1:
grayscale, 3: RGB), brought to its height and width, scaled to [0, 1] and normalized with the mean
and standard deviation per channel:

- training data (unless `augment=False`): a random crop of 50% to 100% of the image's area, of aspect
  ratio 3/4 to 4/3, resized to the input (torchvision's RandomResizedCrop with a lighter scale), and
  a horizontal flip half of the time; drawn from the epoch's seed and the example's index, so that a
  resumed run and every torchrun rank see the same augmentation as one uninterrupted process;
- validation and `evaluate`: the largest centred region with the input's aspect ratio, resized (the
  whole image when the aspect ratios agree).

The class names are written next to every model trained on a folder (`OUT.onnx.classes.json`, a
JSON list in label order), and `evaluate` checks a folder's classes against them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import MorphNetError, first_line
from ..loading.writing import write_atomic_bytes
from .dataset import Dataset, InputSpec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # 3-channel inputs
GRAY_MEAN, GRAY_STD = (0.5,), (0.5,)  # 1-channel inputs: [0, 1] to [-1, 1]
CROP_SCALE = (0.5, 1.0)  # share of the image's area a training crop covers
CROP_RATIO = (3 / 4, 4 / 3)  # its aspect ratio
PREFETCH_PER_WORKER = 2
CLASSES_SUFFIX = ".classes.json"
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class ImageOptions:
    """How image folders are read (arrays ignore it).

    - `mean`, `std`: per channel (one value applies to every channel), of pixels scaled to [0, 1];
      None: ImageNet's for 3-channel inputs, 0.5 and 0.5 for 1-channel inputs.
    - `augment`: random crops and flips on the training data (never on validation data).
    - `workers`: threads decoding ahead of training.
    """
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = True
    workers: int = 2

    def __post_init__(self) -> None:
        for option, values in (("mean", self.mean), ("std", self.std)):
            if values is None:
                continue
            values = tuple(values)
            object.__setattr__(self, option, values)
            if not values or len(values) > 3 or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                                        for v in values):
                raise MorphNetError(f"--{option} {','.join(map(str, values))}: give 1 or 3 numbers, e.g. "
                                    f"--{option} {','.join(map(str, IMAGENET_MEAN if option == 'mean' else IMAGENET_STD))}")
        if self.std is not None and min(self.std) <= 0:
            raise MorphNetError(f"--std {','.join(map(str, self.std))}: must be above 0")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise MorphNetError(f"--data-workers {self.workers}: must be a whole number, 1 or more")


class ImageFolder(Dataset):
    """The images of a folder (scan_folder), decoded per batch into the model's one input."""

    def __init__(self, root: Path, classes: list[str], files: np.ndarray, labels: np.ndarray, spec: InputSpec,
                 options: ImageOptions, augment: bool) -> None:
        self.root, self.classes, self.files, self.labels = root, classes, files, labels
        self.name = str(root)
        self.input, self.dtype = spec.name, spec.dtype
        _, channels, height, width = spec.shape
        self.mode = "RGB" if channels == 3 else "L"
        self.size = (width, height)
        mean = np.broadcast_to(np.array(options.mean or (IMAGENET_MEAN if channels == 3 else GRAY_MEAN)), channels)
        std = np.broadcast_to(np.array(options.std or (IMAGENET_STD if channels == 3 else GRAY_STD)), channels)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        # x = (pixel / 255 - mean) / std, as one multiply and one add per value
        self.scale = (1 / (255 * std)).astype(np.float32)
        self.shift = (-mean / std).astype(np.float32)
        self.augment = augment
        self.workers = options.workers
        self.prefetch = PREFETCH_PER_WORKER * options.workers

    def gather(self, rows: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        width, height = self.size
        draws = _uniforms(seed, rows, 5) if self.augment else None
        pixels = np.empty((len(rows), height, width, len(self.scale)), np.uint8)
        for j, row in enumerate(rows):
            image = self._decode(int(row), None if draws is None else draws[j])
            pixels[j] = image.reshape(height, width, -1)
        x = pixels.astype(np.float32)
        x *= self.scale
        x += self.shift
        return {self.input: np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=self.dtype)}

    def _decode(self, row: int, draw: np.ndarray | None) -> np.ndarray:
        """One image as uint8 pixels of the input's size: a random crop (and flip) when `draw` holds
        the example's five uniform numbers, else the centred crop."""
        path = os.path.join(self.root, os.fsdecode(self.files[row]))
        width, height = self.size
        try:
            with Image.open(path) as opened:
                # JPEG: decode at 1/2, 1/4 or 1/8 scale where that still covers the crop (much faster).
                opened.draft(self.mode, (2 * width, 2 * height) if draw is not None else (width, height))
                opened.load()
                image = opened if opened.mode == self.mode else opened.convert(self.mode)
        except Exception as exc:  # Pillow raises many types for a broken file; each names the file here
            raise MorphNetError(f"{path}: cannot read the image ({first_line(exc)}); replace or remove it") from exc
        full_w, full_h = image.size
        if draw is None:
            aspect = width / height
            crop_w, crop_h = (full_h * aspect, full_h) if full_w / full_h > aspect else (full_w, full_w / aspect)
            left, top = (full_w - crop_w) / 2, (full_h - crop_h) / 2
        else:
            area = full_w * full_h * (CROP_SCALE[0] + draw[0] * (CROP_SCALE[1] - CROP_SCALE[0]))
            ratio = math.exp(math.log(CROP_RATIO[0]) + draw[1] * math.log(CROP_RATIO[1] / CROP_RATIO[0]))
            crop_w, crop_h = min(full_w, math.sqrt(area * ratio)), min(full_h, math.sqrt(area / ratio))
            left, top = draw[2] * (full_w - crop_w), draw[3] * (full_h - crop_h)
        if (full_w, full_h) == (width, height) and (crop_w, crop_h) == (full_w, full_h):
            pixels = np.asarray(image)
        else:
            box = (left, top, left + crop_w, top + crop_h)
            pixels = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, box=box))
        return pixels[:, ::-1] if draw is not None and draw[4] < 0.5 else pixels


def _uniforms(seed: int, rows: np.ndarray, count: int) -> np.ndarray:
    """`count` uniform numbers in [0, 1) per example, a function of (seed, example) only (SplitMix64 of
    a counter): the same for an example in any batch, thread or rank, and cheap for a whole batch."""
    key = np.array([seed % (1 << 64)], np.uint64)
    counter = _mix(key) + rows.astype(np.uint64)[:, None] * np.uint64(count) + np.arange(count, dtype=np.uint64)
    return (_mix(counter) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _mix(x: np.ndarray) -> np.ndarray:
    z = x + _GOLDEN  # uint64 arrays wrap around, as the generator wants
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def scan_folder(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(class names, image paths relative to `root`, labels), in torchvision's order: classes sorted,
    images sorted within each class folder (and its subfolders)."""
    if not root.is_dir():
        raise MorphNetError(f"{root}: no such folder")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise MorphNetError(f"{root}: no class folders; the layout is {root}/CLASS/IMAGE.png (torchvision's "
                            f"ImageFolder), or an .npz file, or a folder of .npy files with labels.npy")
    files: list[bytes] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = []
        for folder, subfolders, names in os.walk(root / name, followlinks=True):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            relative = os.path.relpath(folder, root)
            found += [os.fsencode(os.path.join(relative, n)) for n in sorted(names)
                      if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES)]
        if not found:
            raise MorphNetError(f"{root / name}: no PNG or JPEG images; every class folder needs at least one "
                                f"(or remove the folder)")
        files += found
        labels += [label] * len(found)
    return classes, np.array(files), np.array(labels, np.int64)


def open_images(root: str | os.PathLike, specs: list[InputSpec], task: str, model_classes: int | None,
                options: ImageOptions, augment: bool) -> ImageFolder:
    """An image folder for a model with one image input (N, 1 or 3, H, W) and `model_classes` outputs."""
    root = Path(root)
    if task != "ce":
        raise MorphNetError(f"{root}: an image folder gives class labels; train it with --loss ce")
    if len(specs) != 1:
        raise MorphNetError(f"{root}: an image folder feeds a model with one input; this one has {len(specs)} "
                            f"({', '.join(s.name for s in specs)}): give an .npz with one array per input")
    spec = specs[0]
    if len(spec.shape) != 4 or spec.shape[1] not in (1, 3):
        raise MorphNetError(f"{root}: an image folder feeds an input of shape (N, 1 or 3, H, W); the model input "
                            f"{spec.name!r} is {list(spec.shape)}")
    if not np.issubdtype(spec.dtype, np.floating):
        raise MorphNetError(f"{root}: the model input {spec.name!r} is {spec.dtype}; an image folder feeds "
                            f"normalized floats")
    for option, values in (("mean", options.mean), ("std", options.std)):
        if values is not None and len(values) not in (1, spec.shape[1]):
            raise MorphNetError(f"--{option}: {len(values)} values, the model input {spec.name!r} has "
                                f"{spec.shape[1]} channels; give 1 or {spec.shape[1]}")
    classes, files, labels = scan_folder(root)
    if model_classes is not None and len(classes) != model_classes:
        raise MorphNetError(f"{root}: {len(classes)} class folders, but the model has {model_classes} classes "
                            f"(outputs); give a folder with {model_classes} classes, or a model with "
                            f"{len(classes)} outputs")
    return ImageFolder(root, classes, files, labels, spec, options, augment)


def classes_path(model: str | os.PathLike) -> Path:
    """Where a model's class names are kept: beside it, as its external data (`OUT.onnx.data`) is."""
    return Path(f"{model}{CLASSES_SUFFIX}")


def write_classes(model: str | os.PathLike, classes: list[str]) -> Path:
    path = classes_path(model)
    write_atomic_bytes(path, json.dumps(classes, indent=1, ensure_ascii=False) + "\n")
    return path


def read_classes(model: str | os.PathLike) -> list[str] | None:
    """The class names written beside a model, or None when there are none."""
    path = classes_path(model)
    if not path.is_file():
        return None
    try:
        classes = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MorphNetError(f"{path}: not a list of class names ({first_line(exc)}); remove it or rewrite it") from exc
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise MorphNetError(f"{path}: not a list of class names; remove it or rewrite it")
    return classes


def check_classes(model: str | os.PathLike, data: Dataset) -> None:
    """An image folder evaluated with a model trained on one: the same class folders, or a one-line error."""
    trained = read_classes(model) if data.classes is not None else None
    if trained is not None and trained != data.classes:
        raise MorphNetError(f"{data.name}: class folders {_differ(data.classes, trained)} the classes the model was "
                            f"trained on ({classes_path(model)})")


def _differ(classes: list[str], reference: list[str]) -> str:
    """How two class lists differ, in a few words."""
    missing, extra = sorted(set(reference) - set(classes)), sorted(set(classes) - set(reference))
    if not missing and not extra:
        return "are in another order than"
    parts = ([f"lack {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"] if missing else []) + \
            ([f"add {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}"] if extra else [])
    return " and ".join(parts) + " compared with"


def check_same_classes(data: Dataset, val: Dataset) -> None:
    """--data and --val folders must name the same classes (labels are positions in the sorted list)."""
    if data.classes is not None and val.classes is not None and data.classes != val.classes:
        raise MorphNetError(f"{val.name}: class folders {_differ(val.classes, data.classes)} those of {data.name}; "
                            f"give both the same class folders")
