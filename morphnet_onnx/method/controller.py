"""The budget controller: adapts the regularizer's strength (lambda) during training until the alive
structure meets the budget, and turns MorphNet's per-channel marginal costs into the cost weights
the training graph is fed every `every` steps."""

from __future__ import annotations

import numpy as np

from ..analysis.groups import Analysis
from ..cost.resources import compute_costs, resource_cost
from ..loading.model import LoadedModel
from ..surgery.structure import Structure
from .regularizers import GroupRegularizer, channel_weights, group_vectors

# Budget mode: lambda may grow by this factor within this share of the run's lambda updates.
LAMBDA_SPAN = 1e3
LAMBDA_REACH = 0.5
# With `hold`, the decided structure trains this many steps with its removed channels at zero before the cut.
SETTLE_STEPS = 25


class BudgetController:
    """Every `every` steps: threshold the gates, cost the alive structure, adapt lambda, and return
    the per-channel cost weights lambda x (MorphNet's marginal cost) / (full cost).

    Budget mode: lambda grows while the alive structure costs more than the budget; once it fits,
    lambda holds while the cost stays within [band x budget, budget] and eases off below that."""

    def __init__(self, analysis: Analysis, loaded: LoadedModel, regs: list[GroupRegularizer], resource: str,
                 target: float | None, strength: float | None, threshold: float, hardware, every: int = 25,
                 initial: float = 0.05, growth: float = 1.15, band: float = 0.9, gain: float = 1.0,
                 lookahead: float = 2.0, total_steps: int | None = None, reach: float = LAMBDA_REACH,
                 hold: bool = False, cut_at_budget: bool = False, decide_at=None,
                 proximal_step: float | None = None, hold_window: tuple[int, int] | None = None,
                 calibrate=None) -> None:
        """`total_steps` and `reach`: lambda may grow LAMBDA_SPAN-fold within `reach` of the run's
        updates. `hold`: the channels whose gate is at or below the threshold at an update are held
        at zero from then on (progressive.py applies it). `cut_at_budget`: once the learned structure
        meets the budget, `decide_at(params, goal)` (a Decision; `decide_at(params, goal, "flops")`
        decides on FLOPs instead of the budget's resource) fixes the structure to write, its removed
        channels are held (with `hold`) for one more period, and the cut is due (`cut_due_at`).
        `proximal_step`: the regularizer acts as a proximal step on the gates after every optimizer
        step (progressive.py), of the step's learning rate times `proximal_step`, instead of through
        the loss's gradient: the graph is fed zeros and `proximal_weights` holds the cost weights,
        lambda x marginal cost / the mean marginal cost. `calibrate(params, target)` (with `hold`): the
        target on the hardware's scale that the runtime's measurement shows meets `target`, asked once
        at the start of each hold window (landing.py's `calibrator`); the controller works towards it
        from then on."""
        self.analysis, self.loaded, self.regs = analysis, loaded, regs
        self.resource, self.target, self.threshold, self.hardware = resource, target, threshold, hardware
        self.every, self.band, self.gain = every, band, gain
        # A short run must still be able to raise lambda by LAMBDA_SPAN within `reach` of its
        # updates (measured: 650 steps at 15% per update never pruned the 2-D digits ResNet).
        updates = max((total_steps or 0) / every * reach, 1.0)
        growth = growth ** (every / 25)  # `growth` is per 25 steps
        self.growth = max(growth, LAMBDA_SPAN ** (1 / updates)) if total_steps else growth
        self.hold, self.cut_at_budget, self.decide_at = hold, cut_at_budget, decide_at
        self.hold_window = hold_window
        self.calibrate = calibrate
        self.calibrated: list[list[int]] = []  # the hold windows whose target was calibrated
        self.hold_start: float | None = None  # the cost the window's holding starts from (None: the full cost)
        self.held: dict[int, np.ndarray] = {}  # group id -> channels held at zero
        self.held_version = 0
        self.frozen_at: int | None = None  # the update at which the structure was decided
        self.decision = None  # that Decision (cut_at_budget)
        self.decision_record: dict | None = None  # its record, when a resumed run restored it
        self.cut_structure: dict[int, list[int]] | None = None  # its alive channels, for a resumed run
        self.proximal_step = proximal_step
        self.proximal_weights: np.ndarray | None = None
        full_costs = compute_costs(analysis, loaded, hardware)
        self.full, self.full_flops = resource_cost(full_costs, resource), full_costs.flops
        self.strength = strength if strength is not None else initial
        self.manual = strength is not None
        self.met_at: int | None = None
        self.cost, self.flops = self.full, self.full_flops
        self.previous_cost: float | None = None
        self.lookahead = lookahead
        self.alive_share = 1.0
        self.log: list[dict] = []

    def alive_structure(self, params: dict[str, np.ndarray]) -> Structure:
        structure = Structure.full(self.analysis)
        for group_id, vector in group_vectors(self.regs, params).items():
            structure.alive[group_id] = vector > self.threshold
        return structure

    @property
    def settle(self) -> int:
        """Steps the decided structure is held before the cut (none without holding)."""
        return SETTLE_STEPS if self.hold else 0

    def cut_due_at(self, step: int) -> bool:
        return self.frozen_at is not None and step >= self.frozen_at + self.settle

    def __call__(self, step: int, get_params, force: bool = False):
        if step % self.every and not force:
            return None
        if self.frozen_at is not None:  # the structure is decided: no more pressure while it settles
            return np.zeros(sum(r.width for r in self.regs), dtype=np.float32)
        params = get_params()
        structure = self.alive_structure(params)
        alive = structure.element_alive(self.analysis)
        costs = compute_costs(self.analysis, self.loaded, self.hardware, alive=alive)
        self.cost, self.flops = resource_cost(costs, self.resource), costs.flops
        total = sum(r.width for r in self.regs)
        self.alive_share = sum(int(structure.alive[r.group_id].sum()) for r in self.regs) / max(total, 1)
        window = self.hold_window if self.hold else None
        calibrated_from = None
        if (self.calibrate is not None and window is not None and self.target is not None and step >= window[0]
                and list(window) not in self.calibrated):
            self.calibrated.append(list(window))
            calibrated_from = self.target
            self._retarget(self.calibrate(params, self.target))
        if not self.manual and self.target is not None and step > 0:
            # Proportional in log space, bounded: far over the budget lambda grows by `growth` per
            # update, near it by little (the thresholded cost lags the gates: a fixed step
            # overshoots), within [band x budget, budget] it holds, and below it eases off the same
            # way, or the held pressure keeps shrinking the model far below what the budget allows.
            # While over the budget but falling fast enough to reach it within `lookahead` updates,
            # lambda holds: the gates already on their way down get there without more push.
            ratio = self.cost / self.target
            falling = self.previous_cost - self.cost if self.previous_cost is not None else 0.0
            arriving = ratio > 1 and falling > 0 and self.cost - self.lookahead * falling <= self.target
            if arriving:
                pass
            elif ratio > 1 or ratio < self.band:
                if ratio <= 1 and self.met_at is None:
                    self.met_at = step
                step_factor = ratio if ratio > 1 else ratio / self.band
                self.strength *= float(np.clip(step_factor ** self.gain, self.growth ** -0.5, self.growth))
            elif self.met_at is None:
                self.met_at = step
        self.previous_cost = self.cost
        self.log.append({"step": step, "lambda": self.strength, "cost": self.cost, "alive_share": self.alive_share})
        if calibrated_from is not None:
            self.log[-1].update(calibrated_from=calibrated_from, calibrated_to=self.target)
        if self.target is not None and step > 0 and self.decide_at is not None:
            ended = window is not None and step >= window[1]
            if self.cut_at_budget and (self.cost <= self.target or ended):
                self.decision = self.decide_at(params, self.target)
                self.frozen_at = step
                self.cut_structure = {g: np.nonzero(a)[0].tolist() for g, a in self.decision.structure.alive.items()}
                if self.hold:
                    self._hold({r.group_id: ~self.decision.structure.alive[r.group_id] for r in self.regs})
                self.log[-1]["decided"] = True
                return np.zeros(sum(r.width for r in self.regs), dtype=np.float32)
            if window is not None and step >= window[0]:
                elapsed = min((step - window[0]) / max(window[1] - window[0], 1), 1.0)
                decision, unit = self._held_goal(params, elapsed)
                if decision is not None:
                    self._hold({r.group_id: ~decision.structure.alive[r.group_id] for r in self.regs})
                    self.log[-1].update(held_to=decision.cost, held_unit=unit)
        marginal = costs.channel_marginal[self.resource]
        weights = (self.strength * channel_weights(self.regs, marginal) / max(self.full, 1e-30)).astype(np.float32)
        if self.proximal_step is not None:
            # A proximal step competes with the optimizer's own step on the gate (Adam's is about lr):
            # lambda is the push on a channel of mean marginal cost, in units of the step.
            flat = channel_weights(self.regs, marginal).astype(np.float64)
            mean = float(flat[np.isfinite(flat) & (flat > 0)].mean()) if (flat > 0).any() else 1.0
            self.proximal_weights = (self.strength * flat / mean).astype(np.float32)
            return np.zeros_like(weights)
        return weights

    def _retarget(self, target: float) -> None:
        """The budget's target on the hardware's scale, as calibrated."""
        self.target = target

    def _held_goal(self, params: dict[str, np.ndarray], elapsed: float):
        """The Decision the held structure comes down to after `elapsed` (0 to 1) of the hold window
        (None while the alive structure is below it) and the resource it was decided in: geometric
        from the window's start to the budget.

        In the budget's resource, except latency: there the schedule is geometric in the FLOPs, from
        those of the structure at the window's start to those of the structure at the budget. Where
        per-node overhead dominates, latency falls slowly with channels, and a schedule geometric in
        latency leaves most of the channels' cut for the window's end (the bundled 1-D ResNet: latency
        0.3x -> 0.25x is FLOPs 0.06x -> 0.02x; measured in docs/benchmarks.md, "Accuracy at equal
        measured latency")."""
        if self.resource != "latency":
            start = self.hold_start if self.hold_start is not None else self.full
            goal = start * (self.target / start) ** elapsed
            return (self.decide_at(params, goal) if goal < self.cost else None), self.resource
        flops_end = self._flops_of(self.decide_at(params, self.target))
        flops_start = self.full_flops if self.hold_start is None else \
            self._flops_of(self.decide_at(params, self.hold_start))
        goal = flops_start * (flops_end / max(flops_start, 1e-30)) ** elapsed
        return (self.decide_at(params, goal, "flops") if goal < self.flops else None), "flops"

    def _flops_of(self, decision) -> float:
        alive = decision.structure.element_alive(self.analysis)
        return compute_costs(self.analysis, self.loaded, self.hardware, alive=alive).flops

    def _hold(self, dead: dict[int, np.ndarray]) -> None:
        changed = False
        for group_id, more in dead.items():
            before = self.held.get(group_id)
            now = more.copy() if before is None else (before | more)
            if before is None or (now != before).any():
                changed = changed or bool(now.any())
                self.held[group_id] = now
        if changed:
            self.held_version += 1

    def calibrations(self) -> list[dict]:
        """Each calibration of the hold's target: its step and the table targets before and after, as
        shares of the full model's cost."""
        return [{"step": e["step"], "table_from": e["calibrated_from"] / self.full,
                 "table_to": e["calibrated_to"] / self.full} for e in self.log if "calibrated_to" in e]

    def held_count(self) -> int:
        return int(sum(int(v.sum()) for v in self.held.values()))

    def state(self) -> dict:
        """Everything a resumed run needs to continue as if never stopped (JSON: floats round-trip)."""
        return {"strength": self.strength, "met_at": self.met_at, "previous_cost": self.previous_cost,
                "cost": self.cost, "alive_share": self.alive_share, "log": self.log,
                "held": {str(g): np.nonzero(v)[0].tolist() for g, v in self.held.items()},
                "frozen_at": self.frozen_at, "cut_structure": None if self.cut_structure is None else
                {str(g): c for g, c in self.cut_structure.items()},
                "proximal_weights": None if self.proximal_weights is None else self.proximal_weights.tolist(),
                "target": self.target, "calibrated": self.calibrated,
                "decision": None if self.decision is None else self.decision.to_dict()}

    def load_state(self, state: dict) -> None:
        self.strength = state.get("strength", self.strength)
        self.previous_cost = state.get("previous_cost")
        self.met_at = state.get("met_at")
        self.cost = state.get("cost", self.cost)
        self.alive_share = state.get("alive_share", self.alive_share)
        self.log = list(state.get("log", []))
        widths = {r.group_id: r.width for r in self.regs}
        self.held = {}
        for g, channels in state.get("held", {}).items():
            mask = np.zeros(widths[int(g)], dtype=bool)
            mask[channels] = True
            self.held[int(g)] = mask
        self.held_version += 1
        self.frozen_at = state.get("frozen_at")
        self.target = state.get("target", self.target)
        self.calibrated = [list(w) for w in state.get("calibrated", [])]
        cut = state.get("cut_structure")
        self.cut_structure = None if cut is None else {int(g): c for g, c in cut.items()}
        self.decision_record = state.get("decision")
        weights = state.get("proximal_weights")
        self.proximal_weights = None if weights is None else np.array(weights, dtype=np.float32)
