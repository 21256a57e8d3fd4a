"""What surgery knows of a model's constants and shape arithmetic, as a mixin of the Surgeon
(surgery/apply.py): constants computed from constants (a class token expanded to the batch), shape
arithmetic at batch 1, at batch 2 where the batch is symbolic (which values follow the batch), and in
the pruned model (the shapes it reads cut to their kept channels): what ops/base.py's
rewrite_shape_input compares to write computed Reshape targets anew.
"""

from __future__ import annotations

import numpy as np

from ..graph_utils import shape_sources
from ..loading.folding import MAX_FOLD_ELEMENTS, NOT_FOLDED, evaluate_node, fold_shape_values
from ..loading.shapes import infer_static_shapes


class ShapeArithmetic:
    """Needs `graph`, `shapes`, `opset`, `view`, `model`, `loaded`, `const` and `keep` of the Surgeon."""

    def _init_shape_arithmetic(self) -> None:
        self._shape_values: dict[str, np.ndarray] | None = None
        self._constant_values: dict[str, np.ndarray | None] = {}
        self._shape_values_2: dict[str, np.ndarray] | None = None
        self._shapes_2: dict[str, tuple[int, ...]] | None = None
        self._pruned_values: dict[int, dict[str, np.ndarray]] = {}

    def shape_value(self, name: str) -> np.ndarray | None:
        """Value of a constant or of shape arithmetic (at batch 1) in the original model."""
        value = self.const(name)
        if value is not None:
            return value
        if self._shape_values is None:
            self._shape_values = fold_shape_values(self.graph, self.shapes, self._small_constants(), self.opset)
        return self._shape_values.get(name)

    def _small_constants(self) -> dict[str, np.ndarray]:
        """Stored constants small enough for shape arithmetic (indices, axes, head counts)."""
        small = {}
        for name in self.view.stored_names():
            meta = self.view.meta(name)
            if meta is not None and int(np.prod(meta[0])) <= MAX_FOLD_ELEMENTS:
                small[name] = self.view.value(name)
        return small

    @property
    def symbolic_batch(self) -> bool:
        """Whether a model input declares its first (batch) dimension symbolic."""
        inits = {t.name for t in self.graph.initializer}
        for value in self.graph.input:
            dims = value.type.tensor_type.shape.dim if value.type.tensor_type.HasField("shape") else []
            if value.name not in inits and dims and not dims[0].HasField("dim_value"):
                return True
        return False

    def _shapes_at_batch_2(self) -> dict[str, tuple[int, ...]]:
        if self._shapes_2 is None:
            self._shapes_2, _ = infer_static_shapes(self.model, {}, self.loaded.name, batch=2)
        return self._shapes_2

    def shape_value_at_batch_2(self, name: str) -> np.ndarray | None:
        """Value of shape arithmetic with the symbolic batch at 2 (which values follow the batch)."""
        if self._shape_values_2 is None:
            self._shape_values_2 = fold_shape_values(self.graph, self._shapes_at_batch_2(), self._small_constants(),
                                                     self.opset)
        value = self.const(name)
        return value if value is not None else self._shape_values_2.get(name)

    def pruned_shape_value(self, name: str, batch: int = 1) -> np.ndarray | None:
        """Value of shape arithmetic in the pruned model (the shapes it reads cut to their kept
        channels), at batch 1 or, for a symbolic batch, 2."""
        if batch not in self._pruned_values:
            base = self.shapes if batch == 1 else self._shapes_at_batch_2()
            shapes = dict(base)
            for node in self.graph.node:
                if node.op_type in ("Shape", "Size") and node.input[0] in base:
                    tensor = node.input[0]
                    shape = list(base[tensor])
                    for axis, kept in self.keep(tensor).items():
                        if axis < len(shape) and shape[axis] == self.shapes[tensor][axis]:
                            shape[axis] = len(kept)
                    shapes[tensor] = tuple(shape)
            self._pruned_values[batch] = fold_shape_values(self.graph, shapes, self._small_constants(), self.opset)
        value = self.const(name)
        return value if value is not None else self._pruned_values[batch].get(name)

    def shape_sources(self, name: str) -> list[str]:
        """The tensors whose shapes a computed constant reads (through Shape and Size ops)."""
        return shape_sources(self.view.producer, name)

    def depends_on_shapes(self, name: str) -> bool:
        """Whether a computed constant reads the shape of a tensor (and so, perhaps, the batch)."""
        return bool(self.shape_sources(name))

    def constant_value(self, name: str) -> np.ndarray | None:
        """Value of a tensor computed from constants alone, whatever its size (a class token expanded
        to the batch, a position table gathered by constant indices), or None for an activation."""
        value = self.shape_value(name)
        if value is not None or not name:
            return value
        if name in self._constant_values:
            return self._constant_values[name]
        self._constant_values[name] = None  # (a cycle cannot happen in a valid graph; this ends any)
        node = self.view.producer.get(name)
        if node is not None and node.op_type not in NOT_FOLDED and node.domain in ("", "ai.onnx"):
            inputs = [self.constant_value(i) if i else None for i in node.input]
            if all(v is not None for v, i in zip(inputs, node.input) if i):
                outputs = evaluate_node(node, inputs, self.opset) or []
                for out, out_value in zip(node.output, outputs):
                    self._constant_values[out] = out_value
        return self._constant_values[name]
