"""Loading a model: read the file (external data left on disk), check it, upgrade old opsets, give
shared constants their own tensors and infer static shapes; the `LoadedModel` every stage reads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import version_converter

from ..errors import MorphNetError, first_line
from ..graph_utils import graph_input_names, onnx_opset
from .aliases import resolve_constant_aliases
from .checks import check_graph, check_parameter_shapes
from .external import resolve_locations
from .shapes import InputShapes, declare_input_shapes, infer_static_shapes
from .view import ConstantView

MIN_OPSET = 11
MAX_OPSET = 21


@dataclass
class LoadedModel:
    """A model as loaded from disk, plus the static shapes (batch 1) the analysis works on."""

    model: onnx.ModelProto
    path: Path | None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)
    upgraded_from: int | None = None
    aliases_resolved: int = 0  # exporter-shared constants given their own tensors (see resolve_constant_aliases)
    _view: tuple[onnx.ModelProto, ConstantView] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def view(self) -> ConstantView:
        """The constants, producers and consumers of `model` (rebuilt when `model` is replaced)."""
        if self._view is None or self._view[0] is not self.model:
            self._view = (self.model, ConstantView(self.model.graph, self.path.parent if self.path else None))
        return self._view[1]

    @property
    def batch(self) -> int:
        """The batch the shapes are at: 1, or a static batch the model declares (costs divide by it)."""
        real = graph_input_names(self.model)
        first = self.shapes.get(real[0]) if real else None
        return int(first[0]) if first and len(first) > 1 and first[0] > 0 else 1

    @property
    def name(self) -> str:
        return str(self.path) if self.path else (self.model.graph.name or "<model>")

    @property
    def opset(self) -> int:
        return onnx_opset(self.model)


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an .onnx file; MorphNetError naming the file on failure. External data stays on disk
    (external.py): each tensor is read, mapped, when a stage asks for it."""
    path = Path(path)
    if not path.exists():
        raise MorphNetError(f"{path}: no such file")
    if path.is_dir():
        raise MorphNetError(f"{path}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ... on garbage
        raise MorphNetError(f"{path}: not a readable ONNX model ({first_line(exc)})") from exc
    if not model.graph.node:
        raise MorphNetError(f"{path}: not an ONNX model (no graph nodes; truncated or another file type?)")
    resolve_locations(model, path.parent, str(path))
    return model


def upgrade_opset(model: onnx.ModelProto, name: str) -> tuple[onnx.ModelProto, int | None]:
    """Upgrade models older than opset 11 with onnx's version converter; refuse ones newer than 21."""
    opset = onnx_opset(model)
    if opset > MAX_OPSET:
        raise MorphNetError(f"{name}: opset {opset} is newer than the supported {MIN_OPSET}..{MAX_OPSET}")
    if opset >= MIN_OPSET:
        return model, None
    try:
        upgraded = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise MorphNetError(
            f"{name}: opset {opset} could not be upgraded to {MIN_OPSET} ({first_line(exc)}); "
            "re-export the model at opset 11 or newer"
        ) from exc
    return upgraded, opset


def load(path_or_model: str | os.PathLike | onnx.ModelProto, input_shapes: InputShapes | None = None) -> LoadedModel:
    """Load a model from a path or a ModelProto, upgrade old opsets, give every aliased constant its
    own tensor, and infer static shapes at batch 1."""
    if isinstance(path_or_model, onnx.ModelProto):
        model, path = path_or_model, None
    else:
        path = Path(path_or_model)
        model = read_model(path)
    name = str(path) if path else (model.graph.name or "<model>")
    check_graph(model, name)
    model, upgraded_from = upgrade_opset(model, name)
    model, aliases_resolved = resolve_constant_aliases(model)
    shapes, dtypes = infer_static_shapes(model, input_shapes or {}, name)
    check_parameter_shapes(model, shapes, name)
    model = declare_input_shapes(model, shapes)
    return LoadedModel(model=model, path=path, shapes=shapes, dtypes=dtypes, upgraded_from=upgraded_from,
                       aliases_resolved=aliases_resolved)
