"""The new graph under construction, which the op families' cutters edit (ops/): each cutter gets
this state, a copy of the node to edit in place and the node's name. Sliced tensors are new
initializers, so an initializer shared by several ops is copied apart; when the model keeps its
weights on disk, they are written to a spill file as they are made (external.py).
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import MorphNetError
from ..graph_utils import drop_dead_nodes
from ..loading.external import make_tensor, spill_for
from ..loading.view import tensor_value
from ..ops import CONV, DENSE, bias_input, output_channel_axis


class Rewrite:
    """The new graph under construction."""

    def __init__(self, surgeon) -> None:
        self.s = surgeon
        self.nodes: list[onnx.NodeProto] = []
        self.new_inits: dict[str, onnx.TensorProto] = {}
        self.spill = spill_for(surgeon.model)
        self.used_names = {t.name for t in surgeon.graph.initializer} | {
            o for n in surgeon.graph.node for o in n.output} | {i.name for i in surgeon.graph.input}

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.used_names:
            k += 1
            name = f"{base}_{k}"
        self.used_names.add(name)
        return name

    def add_constant(self, base: str, value: np.ndarray) -> str:
        name = self.unique(base)
        self.new_inits[name] = make_tensor(value, name, self.spill)
        return name

    def set_input(self, node: onnx.NodeProto, index: int, value: np.ndarray, suffix: str = "pruned") -> None:
        node.input[index] = self.add_constant(f"{node.input[index]}__{suffix}", value)

    def keep_node(self, node: onnx.NodeProto) -> None:
        self.nodes.append(node)

    def slice_value(self, tensor: str, value: np.ndarray) -> np.ndarray:
        """A value of a tensor (batch-1 broadcastable), cut to the tensor's kept channels."""
        for axis, kept in self.s.keep(tensor).items():
            if value.shape[axis] > 1:
                value = value.take(kept, axis=axis)
        return value

    def add_to_output(self, node: onnx.NodeProto, name: str, contribution: np.ndarray) -> None:
        """Add a constant to the op's output: into its bias when uniform, else through an Add."""
        out = node.output[0]
        contribution = self.slice_value(out, contribution).astype(np.float32)
        rank = contribution.ndim
        axis = output_channel_axis(node.op_type, rank)
        uniform = all(contribution.shape[a] == 1 for a in range(rank) if a != axis)
        if uniform and node.op_type in CONV + DENSE and bias_input(node.op_type) is not None:
            vector = contribution.reshape(-1)
            slot = bias_input(node.op_type)
            if len(node.input) > slot and node.input[slot]:
                bias = self.value_of(node.input[slot])
                vector = np.broadcast_to(bias, np.broadcast_shapes(bias.shape, vector.shape)) + vector
                self.set_input(node, slot, vector.astype(np.float32), "folded")
            else:
                while len(node.input) < slot:
                    node.input.append("")
                node.input.append(self.add_constant(f"{name}.bias__folded", vector))
            return
        hidden = self.unique(f"{out}__before_fold")
        node.output[0] = hidden
        constant = self.add_constant(f"{name}__folded", contribution)
        self.nodes.append(onnx.helper.make_node("Add", [hidden, constant], [out], name=self.unique(f"{name}/fold")))

    def value_of(self, tensor: str) -> np.ndarray:
        if tensor in self.new_inits:
            return tensor_value(self.new_inits[tensor])
        value = self.s.const(tensor)
        if value is None:
            raise MorphNetError(f"internal: {tensor!r} is not a constant")
        return value

    def finish(self) -> onnx.ModelProto:
        graph = self.s.graph
        new_graph = onnx.helper.make_graph(self.nodes, graph.name, list(graph.input), list(graph.output),
                                           list(graph.initializer) + list(self.new_inits.values()))
        # Drop ops nothing reads any more (shape arithmetic of removed branches, unused constants).
        drop_dead_nodes(new_graph)
        inits = {t.name for t in new_graph.initializer}
        original_inits = {t.name for t in graph.initializer}
        kept_inputs = [i for i in graph.input if i.name not in original_inits or i.name in inits]
        del new_graph.input[:]
        new_graph.input.extend(kept_inputs)
        new_graph.doc_string = graph.doc_string
        model = onnx.ModelProto()
        model.CopyFrom(self.s.model)
        model.graph.CopyFrom(new_graph)
        if model.ir_version < 4:
            # Old IR versions require every initializer to be a graph input as well.
            model.ir_version = 4
        return model
