"""What a measured latency table says about each group's width: its latency curve (the group at every
width, everything else as it stands) and the widths worth having (`--round-to auto`).

A width is worth having when no wider width of the same group runs as fast: on a runtime whose
kernels work on blocks of 16 channels, 49 to 64 channels cost the same, so only 64 is worth having;
where widths off a multiple of 4 take a slower path, they are not worth having either when a wider
aligned width is faster. The widest width always is.
"""

from __future__ import annotations

import numpy as np

from ..analysis.groups import Analysis
from .latency import LatencyTable


def group_curve(table: LatencyTable, analysis: Analysis, group_id: int, alive: np.ndarray | None = None) -> np.ndarray:
    """Seconds of the ops that read or write the group, with its first `w` channels kept, for w = 0
    .. its width (other groups as in `alive`, a bool per analysis element; default: full)."""
    width = analysis.groups[group_id].width
    widths = np.arange(width + 1)
    curve = np.zeros(width + 1)
    for cost in analysis.costed:
        sides = []
        touches = False
        for ids, fixed in ((cost.in_ids, cost.in_fixed), (cost.out_ids, cost.out_fixed)):
            if ids is None:
                sides.append(np.full(width + 1, float(fixed)))
                continue
            flat = np.asarray(ids).reshape(-1)
            mine = analysis.element_group[flat] == group_id
            touches |= bool(mine.any())
            others = flat[~mine]
            base = float(len(others) if alive is None else alive[others].sum())
            per_channel = np.bincount(analysis.element_channel[flat[mine]], minlength=width)
            sides.append(base + np.concatenate([[0], np.cumsum(per_channel)])[widths])
        if touches:
            curve += np.asarray(table.op_seconds(cost.op, sides[0], sides[1]), dtype=float)
    return curve


def worth_having(curve: np.ndarray) -> list[int]:
    """Widths w >= 1 that no wider width beats or matches (the curve's lower envelope from the right)."""
    best_wider = np.inf
    widths = []
    for w in range(len(curve) - 1, 0, -1):
        if curve[w] < best_wider * (1 - 1e-9) or w == len(curve) - 1:
            widths.append(w)
            best_wider = min(best_wider, curve[w])
    return sorted(widths)


def fast_widths(table: LatencyTable, analysis: Analysis) -> dict[int, list[int]]:
    """Per prunable group, the widths worth having on the table's runtime (ascending; the full width
    last)."""
    return {g.id: worth_having(group_curve(table, analysis, g.id)) for g in analysis.prunable_groups}
