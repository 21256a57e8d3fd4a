"""Writing files for users: atomically (a temp file in the target folder, fsynced, renamed), with
the user's umask, never over an input or another output (refuse_overwriting, which every writing
command calls before any work), models over 2 GB or kept on disk with their weights streamed to
`<name>.data`."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import onnx

from ..errors import MorphNetError
from .external import TWO_GB, has_external_data, write_external

# onnxruntime 1.19 refuses IR version 11 and above.
MAX_IR_VERSION = 10


def check_output_path(path: str | os.PathLike, option: str = "-o", inputs=()) -> Path:
    """Refuse, before any work, a place the tool could not write to: a missing folder, a directory, a
    read-only folder, one of the `inputs` (users lose their model otherwise)."""
    path = Path(path)
    for source in inputs:
        if source is not None and path.exists() and Path(source).exists() and path.samefile(source):
            raise MorphNetError(f"{path}: refusing to overwrite the input model; choose another {option}")
    if path.is_dir():
        raise MorphNetError(f"{option} {path}: is a directory; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise MorphNetError(f"{option} {path}: folder {folder} does not exist; create it or choose another {option}")
    try:  # what every write does first (write_atomic_bytes): a temp file beside the target
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise MorphNetError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc}); "
                            f"choose another {option}") from exc
    return path


def _write_error(path: Path, exc: OSError) -> MorphNetError:
    """A failed write as the one-line error: what happened to which file, and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return MorphNetError(f"{path}: not written, the disk is full ({exc.strerror}); free space or write "
                             f"elsewhere")
    return MorphNetError(f"{path}: cannot write it ({exc.strerror or exc}); choose another place")


def external_data_files(path: str | os.PathLike) -> set[Path]:
    """The external data files an .onnx file refers to (none for a model that holds its weights, or
    for a file that is not a readable model)."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a model: it has no data files to protect
        return set()
    return {(path.parent / entry.value).resolve() for tensor in model.graph.initializer
            for entry in tensor.external_data if entry.key == "location"}


def refuse_overwriting(outputs: dict[str, str | os.PathLike | None], inputs: list[str | os.PathLike | None]) -> None:
    """Before any work is done: an output (named by its option in `outputs`) that is one of the
    `inputs` (a model, its external data, a data file, a structure) or another output is refused, and
    so is a place it could not be written to (`check_output_path`)."""
    for option, target in outputs.items():
        if isinstance(target, (str, os.PathLike)):
            check_output_path(target, option)
    taken: dict[Path, str] = {}
    for source in inputs:  # a ModelProto, a structure dict or a Dataset has no path to protect
        if not isinstance(source, (str, os.PathLike)) or not Path(source).exists():
            continue
        taken[Path(source).resolve()] = f"the input {source}"
        if Path(source).suffix == ".onnx":
            taken.update({data: f"the external data of the input {source}"
                          for data in external_data_files(source)})
    for option, target in outputs.items():
        if not isinstance(target, (str, os.PathLike)):
            continue
        resolved = Path(target).resolve()
        if resolved in taken:
            raise MorphNetError(f"{option} {target}: refusing to overwrite {taken[resolved]}; choose another path")
        taken[resolved] = f"the output of {option}"


def write_atomic_bytes(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a file through a temp file in the same folder and a rename: never half-written, even
    after a power cut (the data reach the disk before the rename), with the user's umask. A failed
    write (a full disk, a read-only folder) is a MorphNetError and leaves nothing behind."""
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, mode) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _chmod_like_open(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise


def _chmod_like_open(path: str | os.PathLike) -> None:
    """mkstemp makes 0600 files; a written model must be readable as any file the user writes is
    (0666 less the umask), e.g. by the rest of a team on a shared machine."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, inputs: list[Path] = ()) -> None:
    """Save atomically. Models over 2 GB, and models that keep their weights on disk (loaded with
    external data), get their weights in `<name>.data` beside them, streamed one tensor at a time.

    Refuses to overwrite any of `inputs`: users lose their trained model otherwise.
    """
    path = check_output_path(path, inputs=inputs)
    data_file = (path.parent / (path.name + ".data")).resolve()
    for source in inputs:
        if source is not None and Path(source).exists() and data_file in external_data_files(source):
            raise MorphNetError(f"{path}: its weights would go to {data_file.name}, the external data of the "
                                f"input model {source}; choose another -o")
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    if not has_external_data(model) and model.ByteSize() < TWO_GB:
        write_atomic_bytes(path, model.SerializeToString())
        return
    data_name = path.name + ".data"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_data = Path(tmp).with_name(Path(tmp).name + ".data")
    try:
        written = write_external(model, Path(tmp), tmp_data, tmp_data.name)
        for tensor in written.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data_name
        with open(tmp, "wb") as fh:
            fh.write(written.SerializeToString())
        for done in (tmp_data, tmp):
            _chmod_like_open(done)
            _fsync(done)
        # The model refers to its data file by name, so the data land under their final name first;
        # a kill between the two renames leaves the new data beside the previous model of that name
        # (if there was one), never a half-written file.
        os.replace(tmp_data, path.parent / data_name)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        tmp_data.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise


def _fsync(path: str | os.PathLike) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
