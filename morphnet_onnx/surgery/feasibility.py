"""Which structures can be cut out: the groups that may vanish alone (not the only path to an
output), the repair that gives back whole groups until a structure can be cut, and the smallest
valid structure, what no budget can go below. Each asks the surgery pass (apply.py) without
writing a model."""

from __future__ import annotations

from ..analysis.groups import Analysis
from ..loading.model import LoadedModel
from .apply import Surgeon
from .structure import Structure


def vanishable_groups(loaded: LoadedModel, analysis: Analysis) -> set[int]:
    """Prunable groups whose removal leaves a valid model (not the only path to an output)."""
    surgeon = Surgeon(loaded, analysis, Structure.full(analysis))
    result = set()
    for group in analysis.prunable_groups:
        structure = Structure.full(analysis)
        structure.alive[group.id][:] = False
        surgeon.set_alive(structure)
        if not surgeon.structural_problems():
            result.add(group.id)
    return result


def repair_structure(loaded: LoadedModel, analysis: Analysis, structure: Structure) -> Structure:
    """Give back whole groups until the structure can be cut out: channels tied across many layers
    (ShuffleNet's shuffles) can empty a tensor without emptying its group, and groups that may vanish
    alone may not all vanish together."""
    structure = Structure({g: m.copy() for g, m in structure.alive.items()})
    surgeon = Surgeon(loaded, analysis, structure)
    while surgeon.structural_problems():
        pruned = [g.id for g in analysis.prunable_groups if not structure.alive[g.id].all()]
        for group_id in reversed(pruned):
            saved = structure.alive[group_id].copy()
            structure.alive[group_id][:] = True
            surgeon.set_alive(structure)
            if not surgeon.structural_problems():
                break
            structure.alive[group_id] = saved
        else:
            structure.alive[pruned[-1]][:] = True
        surgeon.set_alive(structure)
    return structure


def floor_structure(loaded: LoadedModel, analysis: Analysis) -> Structure:
    """The smallest valid structure: groups that can vanish do, the others keep one channel. What
    no budget can go below."""
    vanish = vanishable_groups(loaded, analysis)
    structure = Structure.full(analysis)
    for group in analysis.prunable_groups:
        structure.alive[group.id][:] = False
        if group.id not in vanish:
            structure.alive[group.id][0] = True
    return repair_structure(loaded, analysis, structure)
