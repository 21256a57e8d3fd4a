"""Channels held at zero while `shrink` trains, and the moment it cuts.

`shrink`'s default recipe does not wait for the end of training to remove what the regularizer
turned off. Every time the budget controller reads the gates (controller.py), the channels whose
gate is at or below the threshold are *held*: their gates (a norm's scale, or a filter's rows) are
set to zero after every optimizer step, so the network trains without them from then on, as it
will run after the cut; a held channel never comes back during training. Once the learned structure
meets the budget, the structure to write is decided, every channel it removes is held for one more
controller period (the network settles without them), and the run stops: the model is cut then and
the rest of the steps train the smaller model. A held channel's shift (its norm's shift, or its
conv's bias) is held at zero with its gate, so the cut removes channels that have output exactly
zero for a while, and most steps train the final structure.

measured in docs/benchmarks.md ("shrink's recipe, lever by lever").
"""

from __future__ import annotations

import numpy as np

from ..ops import weight_from_rows, weight_rows
from .regularizers import GroupRegularizer, member_vector

# A held FiGS gate: its logit, far below 0 (a gate on with probability ~2e-9).
FIGS_OFF = -20.0


def held_values(regs: list[GroupRegularizer], params: dict[str, np.ndarray],
                held: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """The members' parameters with every held channel's gate zeroed (a FiGS logit set far below 0),
    and its shift (a norm's shift, a conv's bias) where `params` has it."""
    out: dict[str, np.ndarray] = {}
    for reg in regs:
        dead = held.get(reg.group_id)
        if dead is None or not dead.any():
            continue
        for member in reg.members:
            covered = dead & (member.mask > 0)
            if not covered.any():
                continue
            value = _editable(out, params, member.param)
            positions = np.unique(np.concatenate([pick[covered] for pick in member.picks]))
            if member.kind == "gamma":
                value.reshape(-1)[positions] = 0.0
            elif member.kind == "figs":
                value.reshape(-1)[positions] = FIGS_OFF
            else:
                rows = np.array(weight_rows(member.layout, value), copy=True)
                rows[positions] = 0.0
                value = weight_from_rows(member.layout, rows, value.shape).astype(value.dtype)
            out[member.param] = value
            if member.shift is not None and member.shift in params:  # the held channel's constant goes too
                out[member.shift] = _editable(out, params, member.shift)
                out[member.shift].reshape(-1)[positions] = 0.0
    return out


def _editable(out: dict[str, np.ndarray], params: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The parameter as edited so far in `out`, else a copy of its value in `params`."""
    value = out.get(name)
    return np.array(params[name], copy=True) if value is None else value


def held_params(regs: list[GroupRegularizer], held: dict[int, np.ndarray]) -> list[str]:
    """The parameters a held set touches."""
    names = []
    for reg in regs:
        dead = held.get(reg.group_id)
        if dead is None or not dead.any():
            continue
        for member in reg.members:
            if (dead & (member.mask > 0)).any():
                names += [n for n in (member.param, member.shift) if n is not None and n not in names]
    return names


def _water_level(values: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """Per column: the level tau >= 0 with sum_k max(values[k] - tau, 0) = budget (0 when the column's
    sum is within the budget): min(values, tau) is the proximal step of budget x max over the column."""
    k = values.shape[0]
    ordered = -np.sort(-values, axis=0)
    sums = np.cumsum(ordered, axis=0)
    candidates = (sums - budget[None, :]) / np.arange(1, k + 1)[:, None]
    valid = ordered > candidates
    count = k - np.argmax(valid[::-1], axis=0)  # the last valid row, counted from 1
    tau = candidates[count - 1, np.arange(values.shape[1])]
    return np.maximum(tau, 0.0)


def proximal_values(regs: list[GroupRegularizer], params: dict[str, np.ndarray], weights: np.ndarray,
                    step: float) -> dict[str, np.ndarray]:
    """One proximal step of the regularizer sum_c w_c v_c on the gates: each group's vector is
    lowered by step x w_c the way its grouping combines its members (a single member: soft
    thresholding; `max`: the members above a common level are lowered to it; `l2`: every member
    scaled by the same factor), so gates reach exactly zero. FiGS logits are left to the gradient."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for reg in regs:
        budget = weights[offset:offset + reg.width].astype(np.float64) * step
        offset += reg.width
        entries = []  # (member, pick, magnitudes over the group's channels)
        for member in reg.members:
            if member.kind == "figs":
                continue
            value = out.get(member.param, params[member.param])
            base = member_vector(member, value)
            for pick in member.picks:
                entries.append((member, pick, base[pick] * member.mask))
        if not entries or not (budget > 0).any():
            continue
        magnitudes = np.stack([e[2] for e in entries]).astype(np.float64)
        if len(entries) == 1:
            lowered = np.maximum(magnitudes - budget[None, :], 0.0)
        elif reg.grouping == "l2":
            norm = np.sqrt((magnitudes ** 2).sum(axis=0))
            lowered = magnitudes * np.maximum(0.0, 1.0 - budget / np.maximum(norm, 1e-30))[None, :]
        else:
            lowered = np.minimum(magnitudes, _water_level(magnitudes, budget)[None, :])
        for (member, pick, before), after in zip(entries, lowered):
            covered = member.mask > 0
            value = _editable(out, params, member.param)
            positions, old, new = pick[covered], before[covered], after[covered]
            if member.kind == "gamma":
                flat = value.reshape(-1)
                flat[positions] = np.sign(flat[positions]) * np.minimum(np.abs(flat[positions]), new)
            else:  # a filter's RMS scales with the filter
                rows = np.array(weight_rows(member.layout, value), copy=True)
                rows[positions] *= (new / np.maximum(old, 1e-30))[:, None]
                value = weight_from_rows(member.layout, rows, value.shape).astype(value.dtype)
            out[member.param] = value
    return out


class HoldHooks:
    """The Trainer's hooks for `shrink`: hold the controller's held channels at zero after every step,
    and stop the run when the controller says the cut is due."""

    def __init__(self, controller, regs: list[GroupRegularizer]) -> None:
        self.controller, self.regs = controller, regs
        self._version = None
        self._names: list[str] = []
        self.step = 0

    def start(self, session, step: int) -> None:
        self.step = step

    def stop(self) -> bool:
        return self.controller.cut_due_at(self.step)

    def after_step(self, session, step: int, lr: float = 0.0) -> None:
        self.step = step
        controller = self.controller
        weights = controller.proximal_weights
        if weights is not None and controller.frozen_at is None:
            names = sorted({m.param for r in self.regs for m in r.members if m.kind != "figs"})
            values = proximal_values(self.regs, session.params(names), weights, lr * controller.proximal_step)
            if values:
                session.set_params(values)
        held = controller.held
        if not held:
            return
        if self._version != controller.held_version:
            self._version = controller.held_version
            trained = set(session.trainable())
            self._names = [n for n in held_params(self.regs, held) if n in trained]
        if self._names:
            session.set_params(held_values(self.regs, session.params(self._names), held))
