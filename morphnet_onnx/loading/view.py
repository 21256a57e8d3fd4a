"""The one view of a model's constants every stage asks: initializers and Constant nodes (every
`value*` form), ConstantOfShape fills of a constant shape, and who produces and reads each tensor.
Built once per model (`LoadedModel.view`); values are decoded on first use (external data too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .external import external_info, is_external, read_tensor

# Constant's attribute forms and the dtype of the scalar/list ones.
CONSTANT_FORMS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                  "value_ints": np.int64}


def tensor_value(tensor: onnx.TensorProto, base_dir: Path | None = None) -> np.ndarray:
    """An initializer's value, reading external data on demand: a loaded model's external tensors
    (absolute locations) are read-only views of their mapped files, never copies."""
    if is_external(tensor):
        if Path(external_info(tensor)[0]).is_absolute():
            return read_tensor(tensor)
        return numpy_helper.to_array(tensor, str(base_dir) if base_dir else "")
    return numpy_helper.to_array(tensor)


class ConstantView:
    """Constants and edges of one graph.

    `is_stored(name)`: an initializer or a Constant node's output (a value the model holds);
    `value(name)`: its array, also for a ConstantOfShape of a constant shape unless
    `computed=False`; `producer`/`consumers`: the node writing / the nodes reading each tensor.
    """

    def __init__(self, graph: onnx.GraphProto, base_dir: Path | None = None) -> None:
        self.base_dir = base_dir
        self._stored: dict[str, onnx.TensorProto | np.ndarray] = {t.name: t for t in graph.initializer}
        self._filled: dict[str, onnx.NodeProto] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
            if node.op_type == "Constant" and node.output:
                for a in node.attribute:
                    if a.name == "value":
                        self._stored[node.output[0]] = a.t
                    elif a.name in CONSTANT_FORMS:
                        self._stored[node.output[0]] = np.array(onnx.helper.get_attribute_value(a),
                                                                dtype=CONSTANT_FORMS[a.name])
            elif node.op_type == "ConstantOfShape" and node.output:
                self._filled[node.output[0]] = node
        self._values: dict[str, np.ndarray] = {}

    def is_stored(self, name: str) -> bool:
        return name in self._stored

    def stored_names(self) -> list[str]:
        return list(self._stored)

    def value(self, name: str, computed: bool = True) -> np.ndarray | None:
        if name in self._values:
            return self._values[name]
        item = self._stored.get(name)
        if item is None:
            if not computed or name not in self._filled:
                return None
            value = self._fill(self._filled[name])
            if value is None:
                return None
        else:
            value = tensor_value(item, self.base_dir) if isinstance(item, onnx.TensorProto) else item
        self._values[name] = value
        return value

    def filled_names(self) -> list[str]:
        """Outputs of ConstantOfShape nodes (placeholder weights when their shape is constant)."""
        return list(self._filled)

    def meta(self, name: str) -> tuple[tuple[int, ...], int] | None:
        """(shape, onnx dtype) of a stored or filled constant, without decoding a stored tensor."""
        item = self._stored.get(name)
        if isinstance(item, onnx.TensorProto):
            return tuple(int(d) for d in item.dims), item.data_type
        if item is not None:
            return item.shape, onnx.helper.np_dtype_to_tensor_dtype(item.dtype)
        node = self._filled.get(name)
        shape = self.value(node.input[0]) if node is not None and node.input else None
        if shape is None:
            return None
        fill = next((a.t for a in node.attribute if a.name == "value"), None)
        return tuple(int(d) for d in shape.reshape(-1)), fill.data_type if fill is not None else onnx.TensorProto.FLOAT

    def arrays(self) -> dict[str, np.ndarray]:
        """Every stored constant's value, by name."""
        return {name: self.value(name) for name in self._stored}

    def _fill(self, node: onnx.NodeProto) -> np.ndarray | None:
        shape = self.value(node.input[0]) if node.input else None
        if shape is None:
            return None
        fill = next((a.t for a in node.attribute if a.name == "value"), None)
        value = numpy_helper.to_array(fill).reshape(-1)[0] if fill is not None else np.float32(0)
        return np.full([int(d) for d in shape.reshape(-1)], value, dtype=np.asarray(value).dtype)
