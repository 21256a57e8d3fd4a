"""`shrink`'s method options, one field per CLI option (ShrinkOptions), and the recipe's defaults.

The recipe (docs/training.md, "The recipe"): the regularized steps and the training after the cut
share the run's steps; the structure comes down to the budget progressively while the removed
channels are held at zero, the model is cut as soon as it meets the budget and the rest of the steps
train the smaller model; a trained input model teaches it (distillation). Each default is the measured
best of docs/benchmarks.md ("shrink's recipe, lever by lever").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..cost.budget import Budget
from ..cost.resources import measures_latency, parse_hardware
from ..cost.timing import LatencySettings
from ..errors import MorphNetError
from ..method.regularizers import GROUPINGS, REGULARIZERS
from ..surgery.pruning import check_round_to
from ..training.distillation import DISTILL_MODES

# The steps after the cut: at least this share of the run, at this share of the learning rate.
FINETUNE_SHARE = 1 / 11
FINETUNE_LR_SHARE = 0.1
# A shrink's steps after the cut run at this share of --lr unless --finetune-lr says otherwise (a
# family's members have their own: recipes/family.py).
SHRINK_FINETUNE_LR = 1.0
CUTS = ("end", "budget")
FINETUNE_SCHEDULES = ("cosine", "continue")


@dataclass(frozen=True)
class ShrinkOptions:
    """How `shrink` learns and cuts: each field is the CLI option of the same name (`--budget-*` for
    `budget`). `TrainOptions` says how it trains: its steps (or epochs) are the whole run, the
    regularized steps and the training after the cut together. Checked when made, with the CLI's
    one-line errors.

    - `budget`: a `Budget` (FLOPs, size or latency, relative or absolute) that the controller adapts
      lambda to; or `strength`: a fixed lambda (manual mode). Exactly one.
    - `regularizer`: "auto" (gamma where a group has a BatchNormalization, else group lasso),
      "gamma", "group-lasso" or "figs"; `threshold`: a channel is alive while its gate is above it
      (FiGS decides on the probability of its gate being on instead).
    - `grouping`: how the gates of a group written by several ops (a residual stream) combine:
      "max" (MorphNet's default: alive while any member is) or "l2" (sqrt of the sum of squares,
      morph-net's L2 grouping: every member pushed at once; docs/training.md).
    - `hardware`, `cost_batch_size`: the latency roofline (`--budget-latency`) and its batch; or
      "measure": the model timed in onnxruntime (`provider`, `latency_threads`, batch
      `cost_batch_size`; the table read from or written to `latency_table`), the regularizer and
      `decide` on the table, the written model measured against the original (method/landing.py).
    - `round_to`: widths multiples of it ("auto": the widths the measured table shows to be fast);
      `keep`: regexes of ops whose channels stay.
    - `cut`: when the model is cut: "budget" (as soon as the learned structure meets the budget,
      at the latest `finetune_share` of the steps before the end) or "end" (after `1 - finetune_share`
      of the steps). The steps left after the cut train the smaller model.
    - `hold`: between `hold_from` and `hold_until` (shares of the steps) the structure is brought
      down to the budget progressively, following the gate ranking, and the channels it removes are
      held at zero from then on (progressive.py): the cut removes channels the network already does
      without, and the budget is met by `hold_until` at the latest.
    - `proximal`: the regularizer acts as a proximal step on the gates after every optimizer step
      (soft thresholding, by the step's learning rate) instead of through the loss's gradient,
      which Adam normalizes: gates reach exactly zero, as fast as the strength says.
    - `reach`: the share of the steps within which lambda may grow 1000-fold (how fast the
      controller can reach the budget).
    - `finetune_steps`: the steps after the cut (at least that many with `cut="budget"`); None:
      `finetune_share` of the steps; 0: none, the model is written as cut. `finetune_lr`: their
      learning rate as a share of `--lr` (None: the recipe's own, SHRINK_FINETUNE_LR for shrink,
      FAMILY_FINETUNE_LR for a family's members); `finetune_schedule`: "cosine" (from that rate
      down to 0) or "continue" (the training schedule goes on where the cut interrupted it, scaled).
    - `distill`: "auto" (the input model teaches when it scores well on the training data:
      distillation.py), "on" or "off"; `distill_weight` (w) and `distill_temperature` (T): the loss
      is (1 - w) x cross-entropy + w x T^2 x the cross-entropy against the teacher's probabilities at T.
    - `force`: decide even when the training loss never fell (its gates then say what the
      initialisation was, not which channels are worth their cost).
    """
    budget: Budget | None = None
    strength: float | None = None
    regularizer: str = "auto"
    threshold: float = 1e-2
    grouping: str = "max"
    hardware: str | None = None
    cost_batch_size: int = 1
    round_to: int | str = 1
    keep: tuple[str, ...] | None = None
    cut: str = "budget"
    hold: bool = True
    hold_from: float = 0.1
    hold_until: float = 0.4
    proximal: bool = False
    reach: float = 0.5 / 1.1
    finetune_steps: int | None = None
    finetune_share: float = 0.3
    finetune_lr: float | None = None
    finetune_schedule: str = "continue"
    distill: str = "auto"
    distill_weight: float = 0.5
    distill_temperature: float = 4.0
    force: bool = False
    provider: str = "CPUExecutionProvider"
    latency_threads: int = 0
    latency_table: str | None = None

    @property
    def measured(self) -> bool:
        return measures_latency(self.hardware, self.latency_table)

    def controller_pace(self) -> dict:
        """The budget controller's `proximal_step` and `every` for this recipe: a proximal step (never
        on FiGS's gates, which are probabilities) acts at once, so the budget is watched every step."""
        proximal = self.proximal and self.regularizer != "figs"
        return {"proximal_step": 1.0 if proximal else None, "every": 1 if proximal else 25}

    def __post_init__(self) -> None:
        if (self.budget is None) == (self.strength is None):
            raise MorphNetError("give either a budget (--budget-flops/--budget-size/--budget-latency) or --strength")
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise MorphNetError(f"budget {self.budget!r}: expected a Budget, e.g. Budget(\"flops\", \"0.5x\")")
        if self.strength is not None and (isinstance(self.strength, bool) or not isinstance(self.strength, (int, float))
                                          or not self.strength > 0):
            raise MorphNetError(f"--strength {self.strength}: must be above 0")
        if self.regularizer not in REGULARIZERS:
            raise MorphNetError(f"--regularizer {self.regularizer}: choose one of {', '.join(REGULARIZERS)}")
        if self.grouping not in GROUPINGS:
            raise MorphNetError(f"--grouping {self.grouping}: choose one of {', '.join(GROUPINGS)}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not self.threshold > 0:
            raise MorphNetError(f"--threshold {self.threshold}: must be above 0")
        if self.measured:
            LatencySettings(self.provider, self.latency_threads, self.cost_batch_size)
        else:
            parse_hardware(self.hardware, self.cost_batch_size)
        if self.round_to != "auto":
            check_round_to(self.round_to)
        elif not self.measured:
            raise MorphNetError("--round-to auto snaps widths to the ones a measured latency table shows to be "
                                "fast: add --hardware measure")
        steps = self.finetune_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise MorphNetError(f"--finetune-steps {steps}: must be a whole number, 0 or more")
        for name, allowed in (("cut", CUTS), ("finetune_schedule", FINETUNE_SCHEDULES), ("distill", DISTILL_MODES)):
            if getattr(self, name) not in allowed:
                raise MorphNetError(f"--{name.replace('_', '-')} {getattr(self, name)}: choose one of {', '.join(allowed)}")
        for name in ("hold", "proximal"):
            if not isinstance(getattr(self, name), bool):
                raise MorphNetError(f"{name} {getattr(self, name)!r}: True or False (--{name} / --no-{name})")
        if not (isinstance(self.hold_from, (int, float)) and isinstance(self.hold_until, (int, float))
                and 0 <= self.hold_from < self.hold_until <= 1):
            raise MorphNetError(f"--hold-from {self.hold_from} / --hold-until {self.hold_until}: shares of the steps "
                                f"with 0 <= from < until <= 1")
        for name, low, high, text in (("reach", 0.0, 1.0, "above 0 and at most 1"),
                                      ("finetune_share", -1e-12, 1.0, "0 or more and below 1"),
                                      ("distill_weight", -1e-12, 1.0, "from 0 to 1"),
                                      ("finetune_lr", 0.0, math.inf, "above 0"),
                                      ("distill_temperature", 0.0, math.inf, "above 0")):
            value = getattr(self, name)
            if name == "finetune_lr" and value is None:
                continue
            inside = (low < value < high or (name in ("reach", "distill_weight") and value == high)) \
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else False
            if not inside:
                raise MorphNetError(f"--{name.replace('_', '-')} {value}: must be {text}")
        if isinstance(self.keep, str):  # one pattern given bare: not its characters
            object.__setattr__(self, "keep", (self.keep,))
        elif self.keep is not None:
            object.__setattr__(self, "keep", tuple(self.keep))


SHRINK_FIELDS = tuple(f.name for f in fields(ShrinkOptions))
