"""The state one analysis pass carries from op to op; handlers read and write it through these calls."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..folding import MAX_FOLD_ELEMENTS, NOT_FOLDED, evaluate_node
from ..graph_utils import attr, compress, constant_along, node_reads
from ..io import LoadedModel
from ..view import tensor_value
from .groups import CostedOp, Source, UnionFind

# Reshape/Flatten trace channel positions through a full index tensor; beyond this many elements
# (at batch 1) the op is treated as not understood rather than using gigabytes.
MAX_TRACE_ELEMENTS = 1 << 25

DTYPE_BYTES = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT32: 4, onnx.TensorProto.INT64: 8,
}


@dataclass
class ConstantInfo:
    """A tensor whose value is known before running the model (initializer, Constant, ConstantOfShape)."""

    name: str
    shape: tuple[int, ...]
    dtype: int
    tensor: onnx.TensorProto | None = None  # initializer or Constant value
    fill: onnx.TensorProto | None = None  # ConstantOfShape: one-element value, broadcast to `shape`
    folded_from: onnx.NodeProto | None = None  # computed from other constants by this node

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


class Unsupported(Exception):
    """Raised inside a handler: the op cannot be analyzed; its channels become unprunable."""


class Context:
    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.graph = loaded.model.graph
        self.shapes = loaded.shapes
        self.base_dir = loaded.path.parent if loaded.path else None
        self.uf = UnionFind()
        self.sources: list[Source] = []
        self.costed: list[CostedOp] = []
        self.ids: dict[str, np.ndarray] = {}
        self.fixed: list[tuple[np.ndarray, str]] = []  # (elements, why they cannot be pruned)
        self.touched: list[tuple[str, np.ndarray]] = []  # (op, elements it reads or writes)
        self.notes: list[str] = []
        self.constants = self._collect_constants()
        self._folded_values: dict[str, np.ndarray | None] = {}

    def per_example(self, rows: int) -> int:
        """Rows of a Gemm/MatMul per example: a model exported with a static batch carries it in its
        row count, while costs are per example (batch 1), as a Conv's spatial size is."""
        batch = self.loaded.batch
        return rows // batch if batch > 1 and rows % batch == 0 else rows

    # ---- constants -----------------------------------------------------------------------------
    def _collect_constants(self) -> dict[str, ConstantInfo]:
        constants = {t.name: ConstantInfo(t.name, tuple(t.dims), t.data_type, tensor=t) for t in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant" and node.output:
                for attribute in node.attribute:
                    if attribute.name == "value":
                        constants[node.output[0]] = ConstantInfo(node.output[0], tuple(attribute.t.dims), attribute.t.data_type, tensor=attribute.t)
                    elif attribute.name in ("value_float", "value_int", "value_floats", "value_ints"):
                        arr = np.array(onnx.helper.get_attribute_value(attribute),
                                       dtype=np.float32 if "float" in attribute.name else np.int64)
                        tensor = numpy_helper.from_array(arr, node.output[0])
                        constants[node.output[0]] = ConstantInfo(node.output[0], arr.shape, tensor.data_type, tensor=tensor)
            elif node.op_type == "ConstantOfShape" and node.input and node.input[0] in constants:
                shape_info = constants[node.input[0]]
                if shape_info.tensor is None:
                    continue
                shape = tuple(int(d) for d in tensor_value(shape_info.tensor, self.base_dir))
                fill = next((a.t for a in node.attribute if a.name == "value"), None)
                dtype = fill.data_type if fill is not None else onnx.TensorProto.FLOAT
                constants[node.output[0]] = ConstantInfo(node.output[0], shape, dtype, fill=fill)
        return constants

    def shape_sources(self, name: str) -> list[str]:
        """Tensors whose runtime shape a computed tensor is derived from (via Shape/Size ops)."""
        if not hasattr(self, "_producer"):
            self._producer = {o: n for n in self.graph.node for o in n.output}
        sources, seen, stack = [], set(), [name]
        while stack:
            tensor = stack.pop()
            node = self._producer.get(tensor)
            if node is None or tensor in seen:
                continue
            seen.add(tensor)
            if node.op_type in ("Shape", "Size"):
                sources.append(node.input[0])
            else:
                stack.extend(i for i in node.input if i)
        return sources

    def is_constant(self, name: str) -> bool:
        return name in self.constants

    def fold_if_constant(self, node: onnx.NodeProto) -> bool:
        """Register the outputs of an op computed from constants alone (or reading a static shape)
        as constants: an Unsqueezed BN scale is still a per-channel parameter, not an activation."""
        if node.op_type in NOT_FOLDED or not node.input:
            return False
        if node.op_type == "Shape":
            if self.shape(node.input[0]) is None:
                return False
        elif not all(name in self.constants for name in node_reads(node)):
            return False  # (a control-flow op's subgraphs may read activations of this graph)
        for out in node.output:
            shape = self.shape(out) if out not in self.constants else self.constants[out].shape
            if shape is None:
                return False
        for out in node.output:
            if out not in self.constants:
                self.constants[out] = ConstantInfo(out, self.shape(out), self.loaded.dtypes.get(out, 1), folded_from=node)
        return True

    def value(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor, or None when it is computed at run time."""
        info = self.constants.get(name)
        if info is None:
            return None
        if info.folded_from is not None:
            return self._evaluate(info)
        if info.tensor is not None:
            return tensor_value(info.tensor, self.base_dir)
        fill = numpy_helper.to_array(info.fill).reshape(-1)[0] if info.fill is not None else np.float32(0)
        return np.full(info.shape, fill)

    def _evaluate(self, info: ConstantInfo) -> np.ndarray | None:
        if info.name in self._folded_values:
            return self._folded_values[info.name]
        node = info.folded_from
        value = None
        if node.op_type == "Shape":
            shape = np.array(self.shape(node.input[0]), dtype=np.int64)
            start, end = attr(node, "start", 0), attr(node, "end", None)
            value = shape[start:end]
        elif sum(self.constants[n].size for n in node.input if n) <= MAX_FOLD_ELEMENTS:
            inputs = [self.value(n) if n else None for n in node.input]
            if all(v is not None for v, n in zip(inputs, node.input) if n):
                outputs = evaluate_node(node, inputs, self.loaded.opset) or []
                for out_name, out_value in zip(node.output, outputs):
                    self._folded_values[out_name] = out_value
                value = self._folded_values.get(info.name)
        self._folded_values[info.name] = value
        return value

    def dtype_bytes(self, name: str) -> int:
        info = self.constants.get(name)
        dtype = info.dtype if info else self.loaded.dtypes.get(name, onnx.TensorProto.FLOAT)
        return DTYPE_BYTES.get(dtype, 4)

    # ---- shapes and channel ids ----------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...] | None:
        """Static shape at batch 1, or None when any dim is unknown."""
        info = self.constants.get(name)
        if info is not None:
            return info.shape
        shape = self.shapes.get(name)
        if shape is None or any(d < 0 for d in shape):
            return None
        return shape

    def require_shape(self, name: str) -> tuple[int, ...]:
        shape = self.shape(name)
        if shape is None:
            raise Unsupported(f"shape of {name!r} unknown (give --input-shape?)")
        return shape

    def get(self, name: str) -> np.ndarray | None:
        return self.ids.get(name) if name else None

    def set(self, name: str, ids: np.ndarray | None) -> None:
        if ids is None or not name:
            return
        shape = self.shape(name)
        if shape is None:
            self.fix(ids, f"shape of {name!r} unknown")
            return
        if ids.ndim != len(shape) or any(i not in (1, d) for i, d in zip(ids.shape, shape)):
            raise Unsupported(f"channel layout {ids.shape} does not fit {name!r} of shape {shape}")
        compressed = compress(ids)
        if compressed.size == 1 and ids.size > 1:
            # Every position holds one element: surgery could not tell which axis to cut.
            self.fix(compressed, f"every channel of {name!r} is the same channel")
        self.ids[name] = compressed

    # ---- elements ------------------------------------------------------------------------------
    def new_source(self, op: str, op_type: str, tensor: str, count: int) -> np.ndarray:
        first = self.uf.add(count)
        self.sources.append(Source(op=op, op_type=op_type, tensor=tensor, first=first, count=count))
        return np.arange(first, first + count, dtype=np.int64)

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        """Keep-or-remove together, position by position (arrays broadcast against each other)."""
        a, b = np.broadcast_arrays(a, b)
        pairs = np.stack([a.ravel(), b.ravel()], axis=1)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        if len(pairs) > 64:
            pairs = np.unique(pairs, axis=0)
        union = self.uf.union
        for x, y in pairs.tolist():
            union(x, y)

    def classes(self, ids: np.ndarray) -> np.ndarray:
        """The union-find class of every element so far (same shape as ids)."""
        find = self.uf.find
        return np.array([find(int(e)) for e in ids.reshape(-1)], dtype=np.int64).reshape(ids.shape)

    def fix(self, ids: np.ndarray | None, reason: str) -> None:
        if ids is not None:
            self.fixed.append((np.unique(ids), reason))

    def touch(self, op: str, ids: np.ndarray) -> None:
        self.touched.append((op, ids))

    def add_cost(self, cost: CostedOp) -> None:
        self.costed.append(cost)


def align(ids: np.ndarray, rank: int) -> np.ndarray:
    """Numpy-style broadcasting alignment: prepend size-1 axes up to `rank`."""
    if ids.ndim > rank:
        raise Unsupported(f"rank {ids.ndim} operand in a rank {rank} result")
    return ids.reshape((1,) * (rank - ids.ndim) + ids.shape)


def channel_axes(ids: np.ndarray) -> list[int]:
    """Axes along which the channel elements vary."""
    return [axis for axis, size in enumerate(ids.shape) if size > 1 and not constant_along(ids, axis)]


def along(ids: np.ndarray | None, axis: int, size: int) -> np.ndarray | None:
    """The elements of the `size` positions along `axis`, when ids vary along no other axis.

    Ids that vary along no axis at all (every position tied to one element) are broadcast.
    """
    if ids is None:
        return None
    axes = channel_axes(ids)
    if axes == [axis] and ids.shape[axis] == size:
        return ids.reshape(-1)
    if not axes:
        return np.full(size, ids.reshape(-1)[0], dtype=np.int64)
    return None


