"""A family of structures from one regularized run: the budget controller's target steps down through
the budgets (largest first), and the trained weights at the end of each phase decide one member.

Phase k of K ends at `phase_ends(total, K)[k]`: the last K - 1 phases take PHASE_SHARE of the run
each (at most 80% of it together), the first one the rest, so the first member has trained most of
the run before it is decided, and each later budget has a share of the run to push the gates
further down before its member is decided. Within a phase the controller works as `shrink`'s.
"""

from __future__ import annotations

from .controller import BudgetController

PHASE_SHARE = 0.2  # of the regularized steps, per phase after the first


def phase_ends(total: int, count: int, every: int = 25) -> list[int]:
    """The step after which each of `count` phases ends (the last at `total`), on controller updates."""
    share = min(PHASE_SHARE, 0.8 / max(count - 1, 1))
    ends = []
    for k in range(1, count):
        step = round(total * (1 - (count - k) * share) / every) * every
        ends.append(min(max(step, every * k), total))
    return ends + [total]


class PhasedController(BudgetController):
    """`BudgetController` with a target per phase: `targets[k]` from the end of phase k - 1 on."""

    def __init__(self, *args, targets: list[float], ends: list[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.targets, self.ends = list(targets), list(ends)
        self.target = self.targets[0]

    def phase(self, step: int) -> int:
        return next((k for k, end in enumerate(self.ends) if step < end), len(self.ends) - 1)

    def __call__(self, step: int, get_params, force: bool = False):
        target = self.targets[self.phase(step)]
        if target != self.target:  # a new budget: the controller starts its approach again
            self.target, self.met_at, self.previous_cost = target, None, None
        return super().__call__(step, get_params, force)
