"""The learned structure: which channels of each group stay. The hand-off between learning and
surgery, and a file users keep (format documented in docs/structure.md).

    {"format": "morphnet-onnx-structure", "version": 1, "model": "resnet50.onnx",
     "groups": [{"id": 3, "width": 64, "sources": ["conv1"], "alive": [0, 2, 5]},
                {"id": 4, "width": 256, "sources": ["conv2"], "alive_count": 100}],
     "alive_counts": {"conv1": 3, "conv2": 100}}

Groups left out stay whole. `alive_count` (or MorphNet's plain `{op_name: alive_count}` map, alone
or under "alive_counts") keeps the channels with the largest gate magnitude: BatchNormalization
|gamma| where the group has one, else the L2 norm of the source filters.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..analysis.gates import gate_magnitudes
from ..analysis.groups import Analysis
from ..errors import MorphNetError
from ..loading.model import LoadedModel
from ..loading.writing import write_atomic_bytes

FORMAT = "morphnet-onnx-structure"
VERSION = 1


@dataclass
class Structure:
    """Alive channels per group: `alive[group_id]` is a bool mask of the group's width."""

    alive: dict[int, np.ndarray]

    @classmethod
    def full(cls, analysis: Analysis) -> "Structure":
        return cls({g.id: np.ones(g.width, dtype=bool) for g in analysis.groups})

    def alive_count(self, group_id: int) -> int:
        return int(self.alive[group_id].sum())

    def element_alive(self, analysis: Analysis) -> np.ndarray:
        """Alive flag of every analysis element (channel position source)."""
        out = np.ones(len(analysis.element_group), dtype=bool)
        for group_id, mask in self.alive.items():
            members = analysis.element_group == group_id
            out[members] = mask[analysis.element_channel[members]]
        return out

    def op_alive_counts(self, analysis: Analysis) -> dict[str, int]:
        """MorphNet's export: {source op: alive output channels}."""
        counts = {}
        for group in analysis.groups:
            for source in group.sources:
                counts[source] = self.alive_count(group.id)
        return counts

    def to_dict(self, analysis: Analysis, model_name: str = "", decision: dict | None = None) -> dict:
        groups = []
        for group in analysis.groups:
            mask = self.alive[group.id]
            groups.append({"id": group.id, "width": group.width, "sources": group.sources,
                           "alive": np.nonzero(mask)[0].tolist()})
        doc = {"format": FORMAT, "version": VERSION, "model": model_name, "groups": groups,
               "alive_counts": self.op_alive_counts(analysis)}
        if decision is not None:
            doc["decision"] = decision  # how shrink arrived at it (informative; prune ignores it)
        return doc

    def save(self, path: str | os.PathLike, analysis: Analysis, model_name: str = "", decision: dict | None = None) -> None:
        write_atomic_bytes(path, json.dumps(self.to_dict(analysis, model_name, decision), indent=1) + "\n")


def load_structure(path: str | os.PathLike, analysis: Analysis, loaded: LoadedModel) -> Structure:
    """Read and validate a structure file against the model's analysis."""
    path = Path(path)
    if not path.exists():
        raise MorphNetError(f"{path}: no such file")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MorphNetError(f"{path}: not valid JSON ({exc})") from exc
    return structure_from_dict(doc, analysis, loaded, name=str(path))


def structure_from_dict(doc, analysis: Analysis, loaded: LoadedModel, name: str = "structure") -> Structure:
    structure = Structure.full(analysis)
    by_id = {g.id: g for g in analysis.groups}
    if not isinstance(doc, dict):
        raise MorphNetError(f"{name}: expected a JSON object")
    if doc.get("format") not in (None, FORMAT):
        raise MorphNetError(f"{name}: unknown format {doc.get('format')!r}")
    if doc.get("format") == FORMAT and doc.get("version") != VERSION:
        raise MorphNetError(f"{name}: structure version {doc.get('version')!r} not supported (expected {VERSION})")
    counts: dict[int, int] = {}
    magnitudes = None
    for entry in doc.get("groups", []):
        group_id = entry.get("id") if isinstance(entry, dict) else None
        if group_id not in by_id:
            raise MorphNetError(f"{name}: group {group_id!r} does not exist in the model "
                                f"({len(analysis.groups)} groups); was it made for another model?")
        group = by_id[group_id]
        if entry.get("width", group.width) != group.width:
            raise MorphNetError(f"{name}: group {group_id} has width {group.width} in the model, "
                                f"{entry['width']} in the structure")
        if "sources" in entry and sorted(entry["sources"]) != sorted(group.sources):
            raise MorphNetError(f"{name}: group {group_id} is made by {group.sources} in the model, "
                                f"{entry['sources']} in the structure")
        if "alive" in entry:
            indices = entry["alive"]
            if not isinstance(indices, list) or not all(isinstance(i, int) for i in indices):
                raise MorphNetError(f"{name}: group {group_id}: 'alive' must be a list of channel indices")
            if any(i < 0 or i >= group.width for i in indices):
                raise MorphNetError(f"{name}: group {group_id}: channel index out of range 0..{group.width - 1}")
            mask = np.zeros(group.width, dtype=bool)
            mask[indices] = True
            structure.alive[group_id] = mask
        elif "alive_count" in entry:
            counts[group_id] = _count(entry["alive_count"], group, name)
    op_counts = doc.get("alive_counts", {}) if "format" in doc or "groups" in doc else doc
    if not isinstance(op_counts, dict):
        raise MorphNetError(f"{name}: 'alive_counts' must map op names to counts")
    if "groups" not in doc:
        source_group = {s: g for g in analysis.groups for s in g.sources}
        for op, count in op_counts.items():
            if op not in source_group:
                raise MorphNetError(f"{name}: op {op!r} does not create channels in this model")
            group = source_group[op]
            counts[group.id] = max(counts.get(group.id, 0), _count(count, group, name))
    if counts:
        magnitudes = gate_magnitudes(analysis, loaded)
        for group_id, count in counts.items():
            structure.alive[group_id] = top_channels(magnitudes[group_id], count)
    for group in analysis.groups:
        if not group.prunable and not structure.alive[group.id].all():
            raise MorphNetError(f"{name}: group {group.id} ({', '.join(group.sources[:2])}) cannot be pruned: "
                                f"{group.reasons[0]}")
    return structure


def _count(value, group, name) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MorphNetError(f"{name}: group {group.id}: alive count must be a whole number >= 0, got {value!r}")
    if value > group.width:
        raise MorphNetError(f"{name}: group {group.id} ({', '.join(group.sources[:2])}): {value} alive channels "
                            f"is above its width {group.width}")
    return value


def top_channels(magnitude: np.ndarray, count: int) -> np.ndarray:
    """Mask of the `count` channels with the largest magnitude (ties: lower index first)."""
    mask = np.zeros(len(magnitude), dtype=bool)
    if count:
        order = np.argsort(-magnitude, kind="stable")
        mask[order[:count]] = True
    return mask


def round_structure(structure: Structure, analysis: Analysis, magnitudes: dict[int, np.ndarray],
                    multiple: int) -> Structure:
    """Round every pruned width up to a multiple of N (at most the full width), adding the channels
    with the largest gate magnitude; a group that lost every channel stays removed."""
    if multiple <= 1:
        return structure
    alive = {}
    for group in analysis.groups:
        mask = structure.alive[group.id].copy()
        count = int(mask.sum())
        if 0 < count < group.width and count % multiple:
            target = min(group.width, -(-count // multiple) * multiple)
            extra = np.where(mask, -np.inf, magnitudes[group.id])
            order = np.argsort(-extra, kind="stable")
            mask[order[: target - count]] = True
        alive[group.id] = mask
    return Structure(alive)
