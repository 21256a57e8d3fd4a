"""Opening data for a model: which reader a path needs, and the checks across training and validation.

- an .npz file, or a folder of .npy files (one per model input, or `x`, plus `labels.npy`):
  arrays.py, mapped from disk;
- a folder of class folders (torchvision's ImageFolder layout): images.py, decoded as batches ask;
- `--data-module pkg.mod:fn`: a user's function returning batches (arrays.py, in memory).

Every reader gives a `Dataset` (dataset.py): labels in memory, inputs gathered by index per batch.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import MorphNetError
from ..loading.model import LoadedModel
from .arrays import load_module_batches, make_dataset, read_arrays
from .dataset import Dataset, input_specs
from .images import ImageOptions, check_same_classes, open_images


def load_data(path, module: str | None, loaded: LoadedModel, task: str, images: ImageOptions | None = None,
              augment: bool = False) -> Dataset:
    """The data at `path` (or from `module`) for `loaded`'s inputs. `images`: how an image folder is
    read; `augment`: random crops and flips on it (training data only; `images.augment` must allow it)."""
    specs = input_specs(loaded.model, loaded.shapes)
    classes = _classes(loaded) if task == "ce" else None
    if module:
        return load_module_batches(module, specs, task, classes)
    if path is None:
        raise MorphNetError("give --data: an .npz file, a folder of class folders of images, or a folder of "
                            ".npy files (or --data-module package.module:function)")
    images = images or ImageOptions()
    if _is_image_folder(Path(path)):
        return open_images(path, specs, task, classes, images, augment and images.augment)
    return make_dataset(read_arrays(path), specs, task, classes, str(path))


def open_data(data, val, module: str | None, loaded: LoadedModel, task: str,
              images: ImageOptions | None = None) -> tuple[Dataset, Dataset | None]:
    """Training data (augmented where it is an image folder and `images.augment`) and validation data
    (never augmented); two image folders must name the same classes."""
    dataset = load_data(data, module, loaded, task, images, augment=True)
    val_set = load_data(val, None, loaded, task, images) if val else None
    if val_set is not None:
        check_same_classes(dataset, val_set)
    return dataset, val_set


def _is_image_folder(path: Path) -> bool:
    """A folder without .npy files at its top is read as class folders of images."""
    return path.is_dir() and not any(p.suffix == ".npy" for p in path.iterdir())


def _classes(loaded: LoadedModel) -> int | None:
    shape = loaded.shapes.get(loaded.model.graph.output[0].name)
    return int(shape[-1]) if shape else None

