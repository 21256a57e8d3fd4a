"""Decide: from trained gates to the Structure that is written, landing on the budget.

The gates rank the channels of every regularized group (largest first; `round_to` > 1 ranks blocks
of that many channels, so widths stay multiples of it). Without a budget, the channels whose gate
is above the threshold stay (the learned structure). With one, the structure is the longest prefix
of the ranking across all groups whose cost is within the budget: when training left the learned
structure over the budget this cuts the weakest live channels (and says so: the regularizer did
not finish the job), and when it left it under, the strongest dead channels come back while the
budget allows, so the result lands within one ranking step below the budget; cheaper blocks ranked
below a costly one then fill what is left. Every candidate is
repaired (groups that cannot vanish, or cannot vanish together, come back) before it is costed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis.groups import Analysis
from ..cost.latency import LatencyTable
from ..cost.resources import Hardware, compute_costs, resource_cost
from ..loading.model import LoadedModel
from ..surgery.feasibility import repair_structure, vanishable_groups
from ..surgery.structure import Structure
from .regularizers import GroupRegularizer, group_vectors

# Landing: the written structure should cost at least this share of the budget.
LANDING_BAND = 0.97
# After the longest prefix, at most this many more blocks are tried one by one to fill the budget.
FILL_TRIES = 64


@dataclass
class Decision:
    structure: Structure
    cost: float  # of the decided structure, in the resource
    learned_cost: float  # of the learned structure (gates above the threshold, repaired)
    full_cost: float
    target: float | None
    forced_cuts: int  # channels with a gate above the threshold cut to meet the budget
    largest_cut_gate: float
    readmitted: int  # channels with a gate at or below the threshold kept because the budget allows

    @property
    def forced(self) -> bool:
        """Training left the learned structure over the budget and live channels had to go."""
        return self.target is not None and self.forced_cuts > 0 and self.learned_cost > self.target

    def to_dict(self) -> dict:
        return {"cost": self.cost, "learned_cost": self.learned_cost, "full_cost": self.full_cost,
                "target": self.target, "forced_cuts": self.forced_cuts, "largest_cut_gate": self.largest_cut_gate,
                "readmitted": self.readmitted}


def decide(analysis: Analysis, loaded: LoadedModel, regs: list[GroupRegularizer], params: dict[str, np.ndarray],
           threshold: float, resource: str, target: float | None, hardware: Hardware | LatencyTable,
           round_to: int | dict[int, list[int]] = 1) -> Decision:
    """The structure to write (see the module docstring). `round_to` may also give, per group, the
    widths allowed (ascending, the full width last: `--round-to auto`, cost/widths.py)."""
    vectors = group_vectors(regs, params)

    def cost(structure: Structure) -> float:
        return resource_cost(compute_costs(analysis, loaded, hardware, alive=structure.element_alive(analysis)),
                             resource)

    def build(blocks: list[tuple[float, float, int, np.ndarray]]) -> Structure:
        structure = Structure.full(analysis)
        for group_id in vectors:
            structure.alive[group_id][:] = False
        for _, _, group_id, channels in blocks:
            structure.alive[group_id][channels] = True
        return repair_structure(loaded, analysis, structure, give_back)

    ranked = _ranked_blocks(vectors, round_to if isinstance(round_to, dict) else max(round_to, 1))
    # A group that cannot vanish always keeps its strongest block (what repair would give back), so
    # the search starts at the floor and the cost grows with the prefix (the search below needs it to).
    vanish = vanishable_groups(loaded, analysis)
    give_back: dict[int, list[np.ndarray]] = {}  # what repair gives back: each group's blocks, strongest first
    firsts = {}
    for block in ranked:
        give_back.setdefault(block[2], []).append(block[3])
        if block[2] not in vanish:
            firsts.setdefault(block[2], block)
    floor_blocks = list(firsts.values())
    floor_ids = {id(b) for b in floor_blocks}
    ranked = floor_blocks + [b for b in ranked if id(b) not in floor_ids]
    learned = build([b for b in ranked if b[0] > threshold] + floor_blocks)
    learned_cost = cost(learned)
    full_cost = cost(Structure.full(analysis))
    if target is None:
        chosen, chosen_cost = learned, learned_cost
    else:
        low, high = len(floor_blocks), len(ranked)  # the longest prefix within the budget
        while low < high:
            mid = (low + high + 1) // 2
            if cost(build(ranked[:mid])) <= target:
                low = mid
            else:
                high = mid - 1
        kept = ranked[:low]
        chosen = build(kept)
        chosen_cost = cost(chosen)
        for _ in range(FILL_TRIES):  # repair can still break the search's monotony: step back
            if chosen_cost <= target or len(kept) <= len(floor_blocks):
                break
            kept.pop()
            chosen = build(kept)
            chosen_cost = cost(chosen)
        if chosen_cost > target:
            kept = list(floor_blocks)
            chosen = build(kept)
            chosen_cost = cost(chosen)
        # The next block may be a costly one (a channel of a wide early layer) while cheaper ones rank
        # below it: fill the rest of the budget with those, in rank order, each group's own order kept.
        blocked: set[int] = set()
        for block in ranked[low:low + FILL_TRIES]:
            group_id = block[2]
            if chosen_cost >= LANDING_BAND * target:
                break
            if group_id in blocked:
                continue
            trial = build(kept + [block])
            trial_cost = cost(trial)
            if trial_cost <= target:
                kept.append(block)
                chosen, chosen_cost = trial, trial_cost
            else:
                blocked.add(group_id)
    cut = [float(v[c]) for g, v in vectors.items() for c in np.nonzero(~chosen.alive[g] & (v > threshold))[0]]
    readmitted = sum(int(np.count_nonzero(chosen.alive[g] & (v <= threshold))) for g, v in vectors.items())
    return Decision(chosen, chosen_cost, learned_cost, full_cost, target, len(cut), max(cut, default=0.0), readmitted)


def _ranked_blocks(vectors: dict[int, np.ndarray], size: int | dict[int, list[int]]
                   ) -> list[tuple[float, float, int, np.ndarray]]:
    """(largest gate, smallest gate, group, channels) for blocks of `size` channels of every group in
    gate order (or, with allowed widths per group, the channels between one allowed width and the
    next), strongest first across groups. A block ranks by its weakest gate, so a group's blocks
    come in their own order; the last block of a group may be smaller (up to full width)."""
    blocks = []
    for group_id, vector in vectors.items():
        order = np.argsort(-vector, kind="stable")
        if isinstance(size, dict):
            widths = [w for w in size.get(group_id, range(1, len(order) + 1)) if 0 < w < len(order)]
            bounds = [0] + widths + [len(order)]
        else:
            bounds = list(range(0, len(order), size)) + [len(order)]
        for start, end in zip(bounds[:-1], bounds[1:]):
            channels = order[start:end]
            blocks.append((float(vector[channels].max()), float(vector[channels].min()), group_id, channels))
    blocks.sort(key=lambda block: -block[1])  # stable: equal gates keep each group's own order
    return blocks
