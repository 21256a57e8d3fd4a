"""A family of structures from one regularized run: the budget controller's target steps down through
the budgets (largest first), and the trained weights at the end of each phase decide one member.
As in `shrink`'s recipe, the channels a budget removes are held at zero while the run goes on
(progressive.py): within each phase's window (`phase_windows`) the held structure's cost steps
down from the previous budget to this one, so the weights at the phase's end are already those of
the member's structure, and cutting it changes nothing.

Phase k of K ends at `phase_ends(total, K)[k]`: the last K - 1 phases take PHASE_SHARE of the run
each (at most 80% of it together), the first one the rest, so the first member has trained most of
the run before it is decided, and each later budget has a share of the run to push the gates
further down before its member is decided. Within a phase the controller works as `shrink`'s.
"""

from __future__ import annotations

from .controller import BudgetController

# Of the regularized steps, per phase after the first. (0.1 decided the first member later, gaining
# the larger members up to 0.4 points from scratch, but the 0.25x latency member lost 4.9, deciding
# it 60 steps after its phase began; bundled task, docs/benchmarks.md.)
PHASE_SHARE = 0.2


def phase_ends(total: int, count: int, every: int = 25) -> list[int]:
    """The step after which each of `count` phases ends (the last at `total`), on controller updates."""
    share = min(PHASE_SHARE, 0.8 / max(count - 1, 1))
    ends = []
    for k in range(1, count):
        step = round(total * (1 - (count - k) * share) / every) * every
        # each later phase keeps a controller update of its own where the run is long enough for it
        # (rounded, a run of 80 steps would give its second phase 5)
        step = min(step, (total - (count - k) * every) // every * every)
        ends.append(min(max(step, every * k), total))
    return ends + [total]


def phase_windows(ends: list[int], first: tuple[int, int]) -> list[tuple[int, int]]:
    """The steps within which each phase holds channels: `first` for the first phase (shrink's hold
    window), the first half of each later phase (its second half trains the held structure before
    its member is decided; measured on the bundled task, 3 seeds, against three quarters: the 0.25x
    latency member +1.9 points, the others within 0.1)."""
    windows = [first]
    for start, end in zip(ends, ends[1:]):
        windows.append((start, start + (end - start) // 2))
    return windows


class PhasedController(BudgetController):
    """`BudgetController` with a target per phase: `targets[k]` from the end of phase k - 1 on; with
    `hold`, phase k holds channels within `windows[k]`, from the cost of budget k - 1 down to budget k."""

    def __init__(self, *args, targets: list[float], ends: list[int], windows: list[tuple[int, int]] | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.targets, self.ends = list(targets), list(ends)
        self.windows = list(windows) if windows is not None else None
        self.target, self._phase = self.targets[0], 0
        if self.windows is not None:
            self.hold_window = self.windows[0]

    def _retarget(self, target: float) -> None:
        self.targets[self._phase] = self.target = target

    def phase(self, step: int) -> int:
        return next((k for k, end in enumerate(self.ends) if step < end), len(self.ends) - 1)

    def __call__(self, step: int, get_params, force: bool = False):
        k = self._phase = self.phase(step)
        if self.targets[k] != self.target:  # a new budget: the controller starts its approach again
            self.target, self.met_at, self.previous_cost = self.targets[k], None, None
            if self.windows is not None:
                self.hold_window, self.hold_start = self.windows[k], self.targets[k - 1]
        return super().__call__(step, get_params, force)

    def state(self) -> dict:
        return super().state() | {"targets": self.targets}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.targets = list(state.get("targets", self.targets))
