"""The state one analysis pass carries from op to op; the channel rules (ops/) read and write it through these calls."""

from __future__ import annotations

import numpy as np
import onnx

from ..graph_utils import attr, compress, node_reads, shape_sources
from ..loading.folding import MAX_FOLD_ELEMENTS, NOT_FOLDED, evaluate_node
from ..loading.model import LoadedModel
from ..ops import Unsupported
from .groups import CostedOp, Source, UnionFind

DTYPE_BYTES = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
    onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT32: 4, onnx.TensorProto.INT64: 8,
}


class Context:
    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.graph = loaded.model.graph
        self.shapes = loaded.shapes
        self.view = loaded.view
        self.batch = loaded.batch  # read once: it scans the graph's inputs
        self.uf = UnionFind()
        self.sources: list[Source] = []
        self.costed: list[CostedOp] = []
        self.ids: dict[str, np.ndarray] = {}
        self.fixed: list[tuple[np.ndarray, str]] = []  # (elements, why they cannot be pruned)
        self.touched: list[tuple[str, np.ndarray]] = []  # (op, elements it reads or writes)
        self.notes: list[str] = []
        self.memo: dict = {}
        self.cautions: list[str] = []  # what is exact only under a condition (ops/statistics.py)  # what an op family computes once per pass (ops/attention.py: head splits)
        # Tensors computed from constants alone (or from a static shape), found during the walk:
        # name -> (shape, dtype, the node computing it); stored constants are the view's.
        self.folded: dict[str, tuple[tuple[int, ...], int, onnx.NodeProto]] = {}
        self._folded_values: dict[str, np.ndarray | None] = {}

    def per_example(self, rows: int) -> int:
        """Rows of a Gemm/MatMul per example: a model exported with a static batch carries it in its
        row count, while costs are per example (batch 1), as a Conv's spatial size is."""
        batch = self.batch
        return rows // batch if batch > 1 and rows % batch == 0 else rows

    # ---- constants -----------------------------------------------------------------------------
    def _meta(self, name: str) -> tuple[tuple[int, ...], int] | None:
        """(shape, dtype) of a constant: stored, a ConstantOfShape of a constant shape, or folded."""
        if name in self.folded:
            return self.folded[name][:2]
        return self.view.meta(name)

    def shape_sources(self, name: str) -> list[str]:
        """Tensors whose runtime shape a computed tensor is derived from (via Shape/Size ops)."""
        return shape_sources(self.view.producer, name)

    def is_constant(self, name: str) -> bool:
        return self._meta(name) is not None

    def fold_if_constant(self, node: onnx.NodeProto) -> bool:
        """Register the outputs of an op computed from constants alone (or reading a static shape)
        as constants: an Unsqueezed BN scale is still a per-channel parameter, not an activation."""
        if node.op_type in NOT_FOLDED or not node.input:
            return False
        if node.op_type == "Shape":
            if self.shape(node.input[0]) is None:
                return False
        elif not all(self.is_constant(name) for name in node_reads(node)):
            return False  # (a control-flow op's subgraphs may read activations of this graph)
        for out in node.output:
            meta = self._meta(out)
            if (meta[0] if meta else self.shape(out)) is None:
                return False
        for out in node.output:
            if not self.is_constant(out):
                self.folded[out] = (self.shape(out), self.loaded.dtypes.get(out, 1), node)
        return True

    def value(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor, or None when it is computed at run time."""
        if name in self.folded:
            return self._evaluate(name)
        return self.view.value(name)

    def _evaluate(self, name: str) -> np.ndarray | None:
        if name in self._folded_values:
            return self._folded_values[name]
        node = self.folded[name][2]
        value = None
        if node.op_type == "Shape":
            shape = np.array(self.shape(node.input[0]), dtype=np.int64)
            start, end = attr(node, "start", 0), attr(node, "end", None)
            value = shape[start:end]
        elif sum(int(np.prod(self._meta(n)[0])) for n in node.input if n) <= MAX_FOLD_ELEMENTS:
            inputs = [self.value(n) if n else None for n in node.input]
            if all(v is not None for v, n in zip(inputs, node.input) if n):
                outputs = evaluate_node(node, inputs, self.loaded.opset) or []
                for out_name, out_value in zip(node.output, outputs):
                    self._folded_values[out_name] = out_value
                value = self._folded_values.get(name)
        self._folded_values[name] = value
        return value

    def dtype_bytes(self, name: str) -> int:
        meta = self._meta(name)
        dtype = meta[1] if meta else self.loaded.dtypes.get(name, onnx.TensorProto.FLOAT)
        return DTYPE_BYTES.get(dtype, 4)

    # ---- shapes and channel ids ----------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...] | None:
        """Static shape at batch 1, or None when any dim is unknown."""
        meta = self._meta(name)
        if meta is not None:
            return meta[0]
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

    def add_cost(self, *args, **fields) -> None:
        """Record what an op costs (the fields of `CostedOp`)."""
        self.costed.append(CostedOp(*args, **fields))
