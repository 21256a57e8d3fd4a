"""Weights that stay on disk: a model loaded with external data keeps its tensors in their files and
reads each one, mapped rather than copied, when a stage asks for it; tensors a command makes from
them (sliced, zeroed, freshly drawn) are written to a spill file as they are made; writing streams
every tensor into the output's data file. So a model over 2 GB is never held in memory whole, let
alone in several copies.

In memory, an external tensor's `location` is an absolute path (the model's own data file, or a spill
file): tensors of several files can then sit in one model. `writing.save_model` writes them back under
the output's name, relative to it.
"""

from __future__ import annotations

import atexit
import mmap
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from ..errors import MorphNetError

# The largest protobuf message: a bigger model must be written with external data.
TWO_GB = 2**31 - 1
# Tensors of at least this many bytes are written to external data (onnx's own default).
SIZE_THRESHOLD = 1024
# Offsets in the data files written are multiples of this, so every tensor can be mapped (a page).
ALIGNMENT = 4096
COPY_CHUNK = 64 << 20


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in model.graph.initializer)


def needs_a_file(model: onnx.ModelProto) -> bool:
    """Whether onnx's checker and onnxruntime must open the model as a file: its weights are on disk,
    or it is too big for one protobuf message."""
    return has_external_data(model) or model.ByteSize() >= TWO_GB


def external_info(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    """(location, offset, length or None) of an external tensor."""
    entries = {e.key: e.value for e in tensor.external_data}
    length = entries.get("length")
    return entries.get("location", ""), int(entries.get("offset") or 0), int(length) if length else None


def resolve_locations(model: onnx.ModelProto, base_dir: Path, name: str) -> None:
    """Point every external tensor of a just-read model at its file by absolute path (in place),
    after checking that the file lies in the model's folder and holds the bytes the tensor names."""
    base = Path(os.path.abspath(base_dir))
    sizes: dict[Path, int] = {}
    for tensor in model.graph.initializer:
        if not is_external(tensor):
            continue
        try:
            location, offset, length = external_info(tensor)
        except ValueError as exc:
            raise MorphNetError(f"{name}: cannot read its external data (tensor {tensor.name!r}: "
                                f"{exc})") from exc
        # Checked by name, not with links followed: a data file may be a link (a download cache's blob).
        relative = os.path.normpath(location) if location else ""
        where = base / relative
        if not relative or os.path.isabs(relative) or relative == ".." or relative.startswith(".." + os.sep):
            raise MorphNetError(f"{name}: cannot read its external data (tensor {tensor.name!r}: location "
                                f"{location!r} is not a file inside the model's folder)")
        if where not in sizes:
            try:
                sizes[where] = where.stat().st_size
            except OSError as exc:
                raise MorphNetError(f"{name}: cannot read its external data ({exc.strerror}: {location})") from exc
        item_size = _item_size(tensor.data_type)
        expected = _element_count(tensor) * item_size if item_size is not None else None
        if length is None:
            length = sizes[where] - offset
        if offset < 0 or offset + length > sizes[where] or (expected is not None and length != expected):
            raise MorphNetError(f"{name}: cannot read its external data (tensor {tensor.name!r}: "
                                f"{length} bytes at offset {offset} of {location}, a file of {sizes[where]} "
                                f"bytes; the tensor needs {expected})")
        _set_info(tensor, str(where), offset, length)


def read_tensor(tensor: onnx.TensorProto) -> np.ndarray:
    """The value of an external tensor (absolute location): a read-only view of the mapped file when
    its dtype allows, else decoded by onnx."""
    location, offset, length = external_info(tensor)
    dtype = _numpy_dtype(tensor.data_type)
    if dtype is None or not Path(location).is_absolute():
        return onnx.numpy_helper.to_array(tensor, os.path.dirname(location))
    shape = tuple(int(d) for d in tensor.dims)
    count = int(np.prod(shape)) if shape else 1
    if count == 0:
        return np.zeros(shape, dtype)
    data = np.frombuffer(_mapped(location), dtype=np.uint8)
    return data[offset:offset + count * dtype.itemsize].view(dtype).reshape(shape)


# One read-only map per data file, by path, inode and mtime (a file replaced is mapped again).
_MAPS: dict[tuple[str, int, int, int], mmap.mmap] = {}


def _mapped(location: str) -> mmap.mmap:
    key = (location, *_file_key(location))
    if key not in _MAPS:
        for old in [k for k in _MAPS if k[0] == location]:
            del _MAPS[old]  # a spill file that grew: arrays read from the old map keep it alive
        with open(location, "rb") as fh:
            _MAPS[key] = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    return _MAPS[key]


def release_pages() -> None:
    """Unmap the pages of the data files read so far from this process (they stay in the page cache
    and come back on the next read). A command reads most weights once, to slice or copy them: what
    it has read need not stay in its resident memory."""
    for mapped in _MAPS.values():
        if not mapped.closed and len(mapped):
            mapped.madvise(mmap.MADV_DONTNEED)


def _file_key(location: str) -> tuple[int, int, int]:
    stat = os.stat(location)
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _numpy_dtype(data_type: int) -> np.dtype | None:
    """The numpy dtype whose bytes are the tensor's raw bytes (little-endian fixed-size types)."""
    if data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED) or data_type >= onnx.TensorProto.BFLOAT16:
        return None
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).newbyteorder("<")
    except (KeyError, TypeError):
        return None
    return dtype if dtype.kind in "biufc" else None


def _item_size(data_type: int) -> int | None:
    dtype = _numpy_dtype(data_type)
    return dtype.itemsize if dtype is not None else None


def _element_count(tensor: onnx.TensorProto) -> int:
    return int(np.prod([int(d) for d in tensor.dims])) if tensor.dims else 1


def _set_info(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


# ---- tensors a command makes -------------------------------------------------------------------

class _SpillFolder:
    """One temporary folder per process for the spill files, removed at exit."""

    path: Path | None = None

    @classmethod
    def get(cls) -> Path:
        if cls.path is None or not cls.path.exists():
            cls.path = Path(tempfile.mkdtemp(prefix="morphnet-onnx-weights-"))
            atexit.register(shutil.rmtree, cls.path, True)
        return cls.path


class Spill:
    """Writes new tensors to one spill file as they are made; each comes back as an external tensor
    (absolute location) a model can hold instead of the bytes."""

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(suffix=".data", dir=_SpillFolder.get())
        self.path = path
        self.fh = os.fdopen(fd, "wb")

    def tensor(self, value: np.ndarray, name: str) -> onnx.TensorProto:
        value = np.ascontiguousarray(value)
        dtype = _numpy_dtype(onnx.helper.np_dtype_to_tensor_dtype(value.dtype)) if value.dtype.kind in "biufc" else None
        if dtype is None or value.nbytes < SIZE_THRESHOLD:
            return onnx.numpy_helper.from_array(value, name)
        offset = _pad(self.fh)
        self.fh.write(value.astype(dtype, copy=False).data)
        self.fh.flush()
        release_pages()
        tensor = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(value.dtype),
                                  dims=list(value.shape))
        _set_info(tensor, self.path, offset, value.nbytes)
        return tensor


def make_tensor(value: np.ndarray, name: str, spill: Spill | None) -> onnx.TensorProto:
    """A new initializer: in the spill file when there is one (a model held on disk), else in memory."""
    if spill is None:
        return onnx.numpy_helper.from_array(np.ascontiguousarray(value), name)
    return spill.tensor(value, name)


def spill_for(model: onnx.ModelProto) -> Spill | None:
    """A spill file for the tensors made from `model`, when `model` keeps its weights on disk."""
    return Spill() if has_external_data(model) else None


def _pad(fh) -> int:
    offset = fh.tell()
    if offset % ALIGNMENT:
        fh.write(b"\0" * (ALIGNMENT - offset % ALIGNMENT))
    return fh.tell()


def inline_weights(model: onnx.ModelProto) -> None:
    """Read every external tensor into the model (in place): for onnxruntime-training, which builds
    its artifacts from the model in memory."""
    for tensor in model.graph.initializer:
        if is_external(tensor):
            value = read_tensor(tensor)
            tensor.ClearField("external_data")
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = np.ascontiguousarray(value).tobytes()


def on_disk(model: onnx.ModelProto) -> Path:
    """The model as a file that onnx's checker and onnxruntime open without a copy of its weights:
    the graph written to a temporary folder, next to links to the data files its tensors are in
    (a model too big to serialize has its inline weights written there)."""
    folder = Path(tempfile.mkdtemp(prefix="model-", dir=_SpillFolder.get()))
    path = folder / "model.onnx"
    if not has_external_data(model):
        write_external(model, path, folder / "weights.data", "weights.data")
        return path
    light = onnx.ModelProto()
    light.CopyFrom(model)  # cheap: the weights are external
    links: dict[str, str] = {}
    for tensor in light.graph.initializer:
        if is_external(tensor):
            location, offset, length = external_info(tensor)
            location = os.path.abspath(location)
            if location not in links:
                links[location] = f"w{len(links)}.data"
                os.symlink(location, folder / links[location])
            _set_info(tensor, links[location], offset, length if length is not None else
                      os.path.getsize(location) - offset)
    path.write_bytes(light.SerializeToString())
    return path


# ---- writing -----------------------------------------------------------------------------------

def write_external(model: onnx.ModelProto, model_path: Path, data_path: Path, location: str) -> onnx.ModelProto:
    """Write `model` to `model_path` with every tensor of SIZE_THRESHOLD bytes or more in `data_path`
    (named `location` in the model), streamed one tensor at a time; `model` is not changed. Returns
    the model as written (its weights external)."""
    graph = model.graph
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    new_graph = light.graph
    _copy_fields(graph, new_graph, skip="initializer")
    with open(data_path, "wb") as out:
        for tensor in graph.initializer:
            copy = new_graph.initializer.add()
            if is_external(tensor):
                copy.CopyFrom(tensor)
                source, offset, length = external_info(tensor)
                if length is None:
                    length = os.path.getsize(source) - offset
                start = _pad(out)
                with open(source, "rb") as fh:
                    fh.seek(offset)
                    _copy_bytes(fh, out, length)
                _set_info(copy, location, start, length)
            elif tensor.ByteSize() >= SIZE_THRESHOLD and tensor.data_type != onnx.TensorProto.STRING:
                raw = tensor.raw_data if tensor.HasField("raw_data") else onnx.numpy_helper.to_array(tensor).tobytes()
                copy.name, copy.data_type = tensor.name, tensor.data_type
                copy.dims.extend(tensor.dims)
                copy.doc_string = tensor.doc_string
                start = _pad(out)
                out.write(raw)
                _set_info(copy, location, start, len(raw))
            else:
                copy.CopyFrom(tensor)
    with open(model_path, "wb") as fh:
        fh.write(light.SerializeToString())
    return light


def _copy_fields(source, target, skip: str) -> None:
    """Copy every set field of a message but one (the part that is rewritten)."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _copy_bytes(source, target, length: int) -> None:
    while length > 0:
        block = source.read(min(COPY_CHUNK, length))
        if not block:
            raise MorphNetError(f"external data ended early in {source.name}")
        target.write(block)
        length -= len(block)
