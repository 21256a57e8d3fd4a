"""Which structures can be cut out: the groups that may vanish alone (not the only path to an
output), the repair that gives channels back until a structure can be cut, and the smallest valid
structure, what no budget can go below. Each asks the surgery pass (apply.py) without
writing a model."""

from __future__ import annotations

import numpy as np

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


def repair_structure(loaded: LoadedModel, analysis: Analysis, structure: Structure,
                     give_back: dict[int, list[np.ndarray]] | None = None) -> Structure:
    """Give back channels until the structure can be cut out, as few as the search finds:

    1. every vanished group gets its first block back, then each vanishes again (the last in
       `give_back`'s order first) where the model still cuts: the branches of a Concat (Inception's
       modules, SqueezeNet's fire modules) may each vanish alone but not all together, and giving
       one back only moves the problem to the Concat before when a fire module's vanishing took the
       next squeeze's input away;
    2. while problems remain, a pruned group (the last first) doubles its channels, block by block,
       up to its full width, where that leaves fewer problems: channels tied across many layers
       (ShuffleNet's shuffles) can empty one half of a split without emptying their group.

    `give_back`: per group, its channels in blocks, the first given back first (`decide`: by gate,
    in `--round-to` blocks); else one channel at a time, spread over the width (0, w/2, w/4, 3w/4...:
    a few reach every half of a split)."""
    structure = Structure({g: m.copy() for g, m in structure.alive.items()})
    surgeon = Surgeon(loaded, analysis, structure)
    problems = surgeon.structural_problems()
    if not problems:
        return structure
    blocks = {g.id: (give_back or {}).get(g.id) or [np.array([c]) for c in _spread(g.width)]
              for g in analysis.prunable_groups if not structure.alive[g.id].all()}  # only these grow
    rank = {group_id: index for index, group_id in enumerate(give_back or {})}
    vanished = sorted((g.id for g in analysis.prunable_groups if not structure.alive[g.id].any()),
                      key=lambda group_id: rank.get(group_id, len(rank)))
    for group_id in vanished:
        structure.alive[group_id][blocks[group_id][0]] = True
    surgeon.set_alive(structure)
    problems = surgeon.structural_problems()
    barren: set[int] = set()  # groups that grew to full width without leaving fewer problems
    while problems:
        problems = _grow_one(analysis, structure, surgeon, blocks, problems, barren)
    for group_id in reversed(vanished):
        saved = structure.alive[group_id].copy()
        structure.alive[group_id][:] = False
        surgeon.set_alive(structure)
        if surgeon.structural_problems():
            structure.alive[group_id] = saved
    return structure


def _grow_one(analysis: Analysis, structure: Structure, surgeon: Surgeon, blocks: dict[int, list[np.ndarray]],
              problems: list[str], barren: set[int]) -> list[str]:
    """Repair's step 2 once: the first pruned group, from the last, that leaves fewer problems with
    twice its channels (or four times, up to full) keeps them; groups in `barren` (none of their
    widths helped before; added to here) are tried only after every other. Where none helps, the
    last pruned group is given back whole, so each step gives channels back and the repair ends.
    The problems left."""
    pruned = [g.id for g in analysis.prunable_groups if not structure.alive[g.id].all()]
    for group_id in [g for g in reversed(pruned) if g not in barren] + [g for g in reversed(pruned) if g in barren]:
        saved = structure.alive[group_id].copy()
        order = [block for block in blocks[group_id] if not saved[block].all()]
        count = max(int(saved.sum()), 1)
        for block in order:
            structure.alive[group_id][block] = True
            if structure.alive[group_id].sum() < min(2 * count, saved.size) and block is not order[-1]:
                continue
            count = int(structure.alive[group_id].sum())
            surgeon.set_alive(structure)
            left = surgeon.structural_problems()
            if len(left) < len(problems):
                return left
        structure.alive[group_id] = saved
        barren.add(group_id)
    structure.alive[pruned[-1]][:] = True
    surgeon.set_alive(structure)
    return surgeon.structural_problems()


def _spread(width: int) -> list[int]:
    """0, w/2, w/4, 3w/4, w/8...: every channel once, the first few in every half, quarter..."""
    order, seen, level = [0], {0}, 1
    while len(order) < width:
        for odd in range(1, 2 ** level, 2):
            channel = odd * width // 2 ** level
            if channel not in seen:
                seen.add(channel)
                order.append(channel)
        level += 1
    return order


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
