"""Loading models (external data, opset upgrade, static shapes) and writing files atomically."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference, version_converter

from .errors import MorphNetError
from .external import TWO_GB, has_external_data, resolve_locations, write_external
from .folding import fold_shape_values
from .graph_utils import node_reads
from .ops import op_info
from .aliases import resolve_constant_aliases
from .view import ConstantView

MIN_OPSET = 11
MAX_OPSET = 21
# onnxruntime 1.19 refuses IR version 11 and above.
MAX_IR_VERSION = 10

InputShapes = dict[str, tuple[int, ...]]


def parse_input_shapes(specs: list[str] | None) -> InputShapes:
    """Parse `--input-shape name:1x3x224x224` options (a lone `1x3x224x224` names the only input)."""
    shapes: InputShapes = {}
    for spec in specs or []:
        name, _, dims = spec.rpartition(":")
        if not re.fullmatch(r"\d+(x\d+)*", dims):
            raise MorphNetError(f"--input-shape {spec!r}: expected NAME:DxDxD, e.g. input:1x3x224x224")
        shapes[name] = tuple(int(d) for d in dims.split("x"))
    return shapes


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


def onnx_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


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
        raise MorphNetError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from exc
    if not model.graph.node:
        raise MorphNetError(f"{path}: not an ONNX model (no graph nodes; truncated or another file type?)")
    resolve_locations(model, path.parent, str(path))
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def check_graph(model: onnx.ModelProto, name: str) -> None:
    """Every tensor a node reads (its subgraphs too) is written before it by one node, or is an input
    or an initializer; every output is computed. Otherwise MorphNetError naming the first problem."""
    graph = model.graph
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    writers: dict[str, str] = {}
    labels = [node.name or f"{node.op_type}_{index}" for index, node in enumerate(graph.node)]
    for node, label in zip(graph.node, labels):
        for out in node.output:
            if out in writers or (out and out in defined):
                first = writers.get(out, "an input or initializer")
                raise MorphNetError(f"{name}: tensor {out!r} is written twice ({first} and node {label!r}); "
                                    f"the graph is malformed: re-export the model")
            writers[out] = f"node {label!r}"
    for node, label in zip(graph.node, labels):
        for read in sorted(node_reads(node)):
            if read in defined:
                continue
            if read in writers:
                raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) reads {read!r} before {writers[read]} "
                                    f"writes it (nodes out of topological order, or a cycle); re-export the model")
            raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) reads {read!r}, which no node, input or "
                                f"initializer provides (a missing initializer?); re-export the model")
        defined.update(node.output)
    for output in graph.output:
        if output.name not in defined:
            raise MorphNetError(f"{name}: the model output {output.name!r} is computed by no node; re-export the model")
    _check_schemas(graph, labels, onnx_opset(model), name)
    _check_tensor_sizes(graph, name)


# Element types whose stored size is not dims x itemsize (strings; 4-bit types packed two per byte).
_UNSIZED = {onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _check_tensor_sizes(graph: onnx.GraphProto, name: str) -> None:
    """Every stored initializer holds as many values as its dims say (a truncated or hand-edited
    file otherwise fails wherever the tensor is first decoded)."""
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type in _UNSIZED:
            continue
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        if tensor.HasField("raw_data"):
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
            stored, wanted = len(tensor.raw_data), count * itemsize
            unit = "bytes"
        else:
            per_value = 2 if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
            stored, wanted = sum(len(getattr(tensor, f)) for f in _TYPED_FIELDS), count * per_value
            unit = "values"
        if stored != wanted:
            raise MorphNetError(f"{name}: initializer {tensor.name!r} of dims {list(tensor.dims)} holds {stored} "
                                f"{unit}, not {wanted} (a truncated or damaged file?); re-export the model")


# Sizes that must be positive: onnx's shape inference divides by strides (a zero stride kills the
# process with SIGFPE), and the analysis by group. Pads (but Pad's own) must not be negative:
# onnxruntime's Conv crashes the process (SIGSEGV) on them.
POSITIVE_ATTRIBUTES = {"strides", "dilations", "kernel_shape", "group"}


def _check_schemas(graph: onnx.GraphProto, labels: list[str], opset: int, name: str) -> None:
    """Standard ops exist at the model's opset and get as many inputs and outputs as their schema
    allows (shape inference skips what follows an op it does not know, so it cannot be relied on)."""
    for node, label in zip(graph.node, labels):
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except onnx.defs.SchemaError:
            raise MorphNetError(f"{name}: node {label!r} has op type {node.op_type!r}, not an ONNX operator at "
                                f"opset {opset}; re-export the model") from None
        inputs = len(node.input)
        while inputs and not node.input[inputs - 1]:
            inputs -= 1  # trailing empty names are omitted optional inputs
        if not schema.min_input <= inputs <= schema.max_input or \
                not schema.min_output <= len(node.output) <= schema.max_output:
            raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) has {inputs} inputs and {len(node.output)} "
                                f"outputs, its schema allows {schema.min_input}..{schema.max_input} and "
                                f"{schema.min_output}..{schema.max_output}; re-export the model")
        for attribute in node.attribute:
            wanted = schema.attributes.get(attribute.name)
            if wanted is None:  # onnx's checker refuses it too, in every model the tool would write
                raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) has an attribute {attribute.name!r} its "
                                    f"schema at opset {opset} does not know; re-export the model")
            if int(wanted.type) != int(attribute.type):
                raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) has its attribute {attribute.name!r} of "
                                    f"type {onnx.AttributeProto.AttributeType.Name(attribute.type)}, its schema wants "
                                    f"{onnx.AttributeProto.AttributeType.Name(int(wanted.type))}; re-export the model")
            if attribute.type not in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS):
                continue
            value = onnx.helper.get_attribute_value(attribute)
            least = 1 if attribute.name in POSITIVE_ATTRIBUTES else 0 if (
                attribute.name == "pads" and node.op_type != "Pad") else None
            if least is not None and any(v < least for v in np.atleast_1d(value)):
                raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) has {attribute.name} {value}, which must "
                                    f"be {'above 0' if least else '0 or more'}; re-export the model")


def check_parameter_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], name: str) -> None:
    """Weights and per-channel parameters fit the channels they read and scale (each op family's
    `check_shapes`: a conv's input channels and bias, a Gemm's or MatMul's contracted features, a
    channel norm's scale, shift and statistics). onnx's shape inference checks none of these, and a
    model that breaks them would otherwise fail deep in surgery or in onnxruntime."""

    def known(tensor: str) -> tuple[int, ...] | None:
        shape = shapes.get(tensor) if tensor else None
        return shape if shape is not None and all(d >= 0 for d in shape) else None

    for index, node in enumerate(model.graph.node):
        info = op_info(node.op_type, node.domain)
        if info is None or info.check_shapes is None or not node.input:
            continue
        problem = info.check_shapes(node, known)
        if problem:
            label = node.name or f"{node.op_type}_{index}"
            raise MorphNetError(f"{name}: node {label!r} ({node.op_type}) {problem}; the model is inconsistent: "
                                f"re-export it")


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
            f"{name}: opset {opset} could not be upgraded to {MIN_OPSET} ({_first_line(exc)}); "
            "re-export the model at opset 11 or newer"
        ) from exc
    return upgraded, opset


def graph_input_names(model: onnx.ModelProto) -> list[str]:
    """Real model inputs: graph inputs that are not initializers (old IR versions list both)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _static_input_dims(model: onnx.ModelProto, overrides: InputShapes, name: str, batch: int = 1) -> InputShapes:
    """Every model input's shape with the batch dim at `batch` (1: costs are per example); other unknown
    dims must come from overrides."""
    dims_by_input: InputShapes = {}
    inputs = {i.name: i for i in model.graph.input}
    real = graph_input_names(model)
    if "" in overrides:
        if len(real) != 1:
            raise MorphNetError(f"{name}: --input-shape without a name needs a single-input model; inputs: {real}")
        overrides = {real[0]: overrides[""]}
    unknown = set(overrides) - set(real)
    if unknown:
        raise MorphNetError(f"{name}: --input-shape names no model input: {sorted(unknown)}; inputs: {real}")
    for input_name in real:
        tensor_type = inputs[input_name].type.tensor_type
        if input_name in overrides:
            dims = list(overrides[input_name])
            declared = tensor_type.shape.dim if tensor_type.HasField("shape") else []
            if declared and dims and not declared[0].HasField("dim_value"):
                dims[0] = batch  # the batch: costs are per example
            dims_by_input[input_name] = tuple(dims)
            continue
        if not tensor_type.HasField("shape"):
            raise MorphNetError(f"{name}: input {input_name!r} has no shape; give --input-shape {input_name}:1x...")
        dims = []
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                dims.append(dim.dim_value)
            elif axis == 0:
                dims.append(batch)  # batch: costs are per example
            else:
                shown = "x".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                                 for d in tensor_type.shape.dim)
                raise MorphNetError(
                    f"{name}: input {input_name!r} has symbolic dims ({shown}); give them with "
                    f"--input-shape {input_name}:1x3x224x224 (your sizes)"
                )
        dims_by_input[input_name] = tuple(dims)
    return dims_by_input


def skeleton(model: onnx.ModelProto, max_kept_elements: int = 64) -> onnx.ModelProto:
    """A copy of the model without the weight bytes: big initializers become typed graph inputs.

    Shape inference only needs their shapes, and serializing a 100 MB model for it would cost as much
    as saving the file; small integer tensors (Reshape shapes, Split sizes) keep their values.
    """
    graph = model.graph
    light = onnx.GraphProto(name=graph.name)
    light.node.extend(graph.node)
    for output in graph.output:
        # Declared output shapes may be symbolic or stale: inference recomputes them from the inputs.
        light.output.append(onnx.helper.make_tensor_value_info(output.name, output.type.tensor_type.elem_type, None))
    inits = {t.name for t in graph.initializer}
    light.input.extend(i for i in graph.input if i.name not in inits)
    for tensor in graph.initializer:
        size = int(np.prod(tensor.dims)) if tensor.dims else 1
        if size <= max_kept_elements and tensor.data_location != onnx.TensorProto.EXTERNAL:
            light.initializer.append(tensor)
        else:
            light.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    out = onnx.ModelProto()
    out.ir_version = max(model.ir_version, 4)  # IR 3 would ignore initializers missing from the inputs
    out.opset_import.extend(model.opset_import)
    out.graph.CopyFrom(light)
    return out


def infer_static_shapes(model: onnx.ModelProto, input_shapes: InputShapes, name: str,
                        batch: int = 1) -> tuple[dict, dict]:
    """Shapes and dtypes of every tensor at batch 1, or at `batch` where the model's batch is
    symbolic (dims shape inference cannot fix stay unknown: -1).

    onnx's shape inference stops at Reshapes whose target is computed at run time; with static input
    shapes those targets are constants, so they are folded and inference runs again until nothing
    new is learned.
    """
    dims_by_input = _static_input_dims(model, input_shapes, name, batch)
    light = skeleton(model)
    for value in light.graph.input:
        if value.name in dims_by_input:
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for d in dims_by_input[value.name]:
                shape.dim.add().dim_value = d
    del light.graph.value_info[:]
    light.graph.value_info.extend(_declared_custom_outputs(model))
    opset = onnx_opset(model)
    known = {t.name: numpy_helper.to_array(t) for t in light.graph.initializer}
    folded_count = -1
    for _ in range(200):  # each round may unlock one more block of a channel-shuffle net
        inferred = _infer(light, name)
        shapes, dtypes = _collect_shapes(inferred)
        if all(-1 not in s for s in shapes.values()):
            break
        values = fold_shape_values(light.graph, shapes, known, opset)
        if len(values) == folded_count:
            break
        folded_count = len(values)
        _pin_values(light, values, known)
    _fill_from_declared(model, shapes, dtypes)
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
        dtypes[tensor.name] = tensor.data_type
    return shapes, dtypes


def _declared_custom_outputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """onnx cannot infer through custom-domain ops: keep what the model declares for their outputs
    (static dims only, a symbolic batch as 1) so inference goes on after them."""
    produced = {o for n in model.graph.node if n.domain not in ("", "ai.onnx") for o in n.output}
    declared = []
    for value in list(model.graph.value_info) + list(model.graph.output):
        tt = value.type.tensor_type
        if value.name not in produced or not tt.HasField("shape") or not tt.shape.dim:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (1 if axis == 0 else -1)
                for axis, d in enumerate(tt.shape.dim)]
        if -1 not in dims:
            declared.append(onnx.helper.make_tensor_value_info(value.name, tt.elem_type, dims))
    return declared


def _fill_from_declared(model: onnx.ModelProto, shapes: dict, dtypes: dict) -> None:
    """Shapes inference could not find (after custom ops) come from the model's own value_info,
    when it declares them statically (a symbolic batch counts as 1)."""
    for value in list(model.graph.value_info) + list(model.graph.output):
        known = shapes.get(value.name)
        if known is not None and -1 not in known:
            continue
        tt = value.type.tensor_type
        if not tt.HasField("shape") or not tt.shape.dim:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (1 if axis == 0 else -1)
                for axis, d in enumerate(tt.shape.dim)]
        if -1 not in dims:
            shapes[value.name] = tuple(dims)
            dtypes.setdefault(value.name, tt.elem_type)


def _infer(light: onnx.ModelProto, name: str) -> onnx.ModelProto:
    # Strict: a node that does not fit its schema (input count, types, ranks) is the user's broken
    # model, said here in one line, not a crash of the analysis or of onnxruntime later.
    try:
        return shape_inference.infer_shapes(light, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise MorphNetError(f"{name}: the model is inconsistent, shape inference fails ({_first_line(exc)}); "
                            f"re-export it") from exc


def _collect_shapes(inferred: onnx.ModelProto) -> tuple[dict, dict]:
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, int] = {}
    g = inferred.graph
    for value in list(g.input) + list(g.value_info) + list(g.output):
        tt = value.type.tensor_type
        dtypes[value.name] = tt.elem_type
        if tt.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    for tensor in g.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
        dtypes[tensor.name] = tensor.data_type
    return shapes, dtypes


def _pin_values(light: onnx.ModelProto, values: dict[str, np.ndarray], known: dict[str, np.ndarray]) -> None:
    """Replace the nodes whose outputs were all folded by initializers holding those values."""
    graph = light.graph
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        folded = node.output and all(o in values and o not in known and o not in outputs for o in node.output)
        if not folded:
            keep.append(node)
            continue
        for out in node.output:
            graph.initializer.append(numpy_helper.from_array(np.asarray(values[out]), out))
            known[out] = values[out]
    del graph.node[:]
    graph.node.extend(keep)


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
    model = _declare_input_shapes(model, shapes)
    return LoadedModel(model=model, path=path, shapes=shapes, dtypes=dtypes, upgraded_from=upgraded_from,
                       aliases_resolved=aliases_resolved)


def _declare_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Static input dims that --input-shape changed are declared so in the model (a copy): what the
    tool writes must accept the inputs it was trained and measured on. A symbolic batch stays."""
    changes = {}
    real = set(graph_input_names(model))
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim if value.type.tensor_type.HasField("shape") else []
        wanted = shapes.get(value.name)
        if wanted is None or len(wanted) != len(dims) or value.name not in real:
            continue
        if any(d.HasField("dim_value") and d.dim_value != w for axis, (d, w) in enumerate(zip(dims, wanted)) if axis):
            changes[value.name] = wanted
    if not changes:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in out.graph.input:
        if value.name in changes:
            for axis, (dim, size) in enumerate(zip(value.type.tensor_type.shape.dim, changes[value.name])):
                if axis and dim.HasField("dim_value"):
                    dim.dim_value = size
    return out


# ---- writing -------------------------------------------------------------------------------------

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
