"""The vocabulary every op family speaks: `Op` (all morphnet-onnx knows about one op type), the
weight layout of weighted ops, and small helpers a channel rule or a cutter shares.

A *channel rule* (analysis) gets the analysis context, the node and its name; it reads the channel
ids of the inputs (`ctx.get`), writes those of the outputs (`ctx.set`), ties positions that go
together (`ctx.tie`), creates channels (`ctx.new_source`), records the op's cost (`ctx.add_cost`) and
raises `Unsupported` for what it does not understand (the caller then pins every channel the op
touches, which is always safe). A *cutter* (surgery) gets the rewrite state, a copy of the node to
edit in place and its name, and slices weights, parameters and shape constants to the kept channels.

This module imports nothing from the analysis or the surgery: they ask the op families, never the
other way round (the type names below are for readers and type checkers only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
import onnx

from ..graph_utils import attr, constant_along

if TYPE_CHECKING:
    from ..analysis.context import Context
    from ..surgery.rewrite import Rewrite

Rule = Callable[["Context", onnx.NodeProto, str], None]
Cutter = Callable[["Rewrite", onnx.NodeProto, str], None]
# (output axis, input axis, conv groups) of a weighted op's weight, read from its attributes.
Layout = Callable[[onnx.NodeProto], tuple[int, int, int]]
# Given the node and the static shape of a tensor (None when unknown), what is inconsistent, or None.
ShapeCheck = Callable[[onnx.NodeProto, Callable[[str], "tuple[int, ...] | None"]], "str | None"]

# Reshape/Flatten trace channel positions through a full index tensor; beyond this many elements
# (at batch 1) the op is treated as not understood rather than using gigabytes.
MAX_TRACE_ELEMENTS = 1 << 25


class Unsupported(Exception):
    """Raised by a channel rule for an op it cannot follow; the analysis pins what the op touches."""


def cut_nothing(rw: Rewrite, node: onnx.NodeProto, name: str) -> None:
    """Ops with nothing to cut (activations, pooling, Concat, Transpose, Flatten...)."""


@dataclass(frozen=True)
class Op:
    """Everything morphnet-onnx knows about one op type. Only `rule` is required."""

    rule: Rule                          # what the op does to channels, and its cost (analysis)
    cut: Cutter = cut_nothing           # how to slice it to the kept channels (surgery)
    layout: Layout | None = None        # weighted ops: where the channels are in the weight
    gates_by_scale: bool = False        # a per-channel scale (input 1) gates its output channels
    bias: int | None = None             # slot of the per-channel shift a channel keeps at scale 0
    trainable: tuple[int, ...] = ()     # slots holding learned parameters
    buffers: tuple[int, ...] = ()       # slots holding running statistics (frozen in training)
    fresh: Mapping[int, float] = field(default_factory=dict)  # norm parameters' values when new
    positive: tuple[int, ...] = ()      # slots that must stay positive when made up (scales, variances)
    layer_slots: tuple[int, ...] = ()   # per-channel tensors that belong to this one layer (never shared)
    memory_bound: bool = False          # no FLOPs, but moves its activations (latency cost)
    broadcasts: bool = False            # may take a constant in place of a removed operand
    reads_shape_only: bool = False      # reads its input's shape, never its values
    relu_like: bool = False             # a ReLU-family activation: He initialisation before it
    init_transparent: bool = False      # between a weighted op and its activation, changes no init
    channels_at: str | None = None      # "first"/"last": the axis of its output channels (diff)
    check_shapes: ShapeCheck | None = None  # at load: do its weights fit what it reads?


@dataclass(frozen=True)
class WeightLayout:
    """Where a weighted op's channels are in its weight: the output and input axes, the bias input."""

    weight: str
    bias: str | None
    out_axis: int
    in_axis: int
    groups: int = 1


def per_channel_problem(node: onnx.NodeProto, shape_of, slots, channels: int) -> str | None:
    """A per-channel parameter (bias, norm scale...) whose shape is not [channels]."""
    for slot in slots:
        shape = shape_of(node.input[slot]) if slot < len(node.input) and node.input[slot] else None
        if shape is not None and tuple(shape) != (channels,):
            return f"has {node.input[slot]!r} of shape {list(shape)} for its {channels} channels"
    return None


def weight_rows(layout: WeightLayout, weight: np.ndarray) -> np.ndarray:
    """The weight as [output channel, everything else]."""
    out_axis = layout.out_axis % weight.ndim
    if out_axis == 0:
        return weight.reshape(weight.shape[0], -1)
    if layout.groups > 1:  # ConvTranspose [C_in, C_out / groups, *kernel]: channel g * per + j
        c_in, per_group = weight.shape[0], weight.shape[1]
        w = weight.reshape(layout.groups, c_in // layout.groups, per_group, -1).transpose(0, 2, 1, 3)
        return w.reshape(layout.groups * per_group, -1)
    moved = np.moveaxis(weight, out_axis, 0)
    return moved.reshape(moved.shape[0], -1)


def weight_from_rows(layout: WeightLayout, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of `weight_rows`: rows back into a weight of `shape`."""
    out_axis = layout.out_axis % len(shape)
    if out_axis == 0:
        return rows.reshape(shape)
    if layout.groups > 1:
        c_in, per_group = shape[0], shape[1]
        w = rows.reshape(layout.groups, per_group, c_in // layout.groups, -1).transpose(0, 2, 1, 3)
        return w.reshape(shape)
    moved = (shape[out_axis],) + tuple(size for axis, size in enumerate(shape) if axis != out_axis)
    return np.moveaxis(rows.reshape(moved), 0, out_axis)


# ---- channel ids (analysis) -----------------------------------------------------------------------

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


def const_ints(ctx: Context, node: onnx.NodeProto, index: int, attr_name: str, default=None):
    """An integer list given as an input (new opsets) or an attribute (old ones)."""
    if len(node.input) > index and node.input[index]:
        value = ctx.value(node.input[index])
        if value is None:
            raise Unsupported(f"{attr_name} computed at run time")
        return [int(v) for v in value.reshape(-1)]
    value = attr(node, attr_name, default)
    return None if value is None else [int(v) for v in value]


# ---- cutting (surgery) ----------------------------------------------------------------------------

def take_axes(value: np.ndarray, kept: dict[int, np.ndarray | None]) -> np.ndarray:
    """`value` cut to the kept indices along each axis (None: all), in one copy: taking one axis
    after the other would first copy the value cut along one axis only (half a 1 GB weight)."""
    kept = {axis % value.ndim: index for axis, index in kept.items() if index is not None}
    if len(kept) < 2:
        for axis, index in kept.items():
            value = value.take(index, axis=axis)
        return value
    return value[np.ix_(*[kept.get(axis, np.arange(value.shape[axis])) for axis in range(value.ndim)])]


def keep_on(rw: Rewrite, tensor: str, axis: int) -> np.ndarray | None:
    """The kept positions of `tensor` along `axis`, or None when that axis keeps all."""
    if not tensor:
        return None
    keep = rw.s.keep(tensor)
    return keep.get(axis % max(len(rw.s.shapes.get(tensor, (0, 0))), 1))


def set_ints(node: onnx.NodeProto, name: str, values: list[int]) -> None:
    for a in node.attribute:
        if a.name == name:
            del a.ints[:]
            a.ints.extend(values)


def rewrite_shape_input(rw: Rewrite, node: onnx.NodeProto, index: int) -> None:
    """A constant target shape (Reshape's, Expand's, Resize's sizes) gets the new sizes of the
    output's channel axes."""
    out_keep = rw.s.keep(node.output[0])
    if not out_keep or len(node.input) <= index or not rw.s.view.is_stored(node.input[index]):
        return
    target = rw.value_of(node.input[index]).astype(np.int64).copy()
    for axis, kept in out_keep.items():
        if axis < len(target) and target[axis] > 0:
            target[axis] = len(kept)
    rw.set_input(node, index, target)
