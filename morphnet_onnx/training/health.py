"""Did the run learn? The learning guard's measurements and rules.

A training run that takes steps is not yet one that learns: a model whose parameters the exporter
froze or aliased, a dead network, a learning rate far off, or labels that do not match the inputs
all end in a model that predicts at chance, exit 0. Three signals catch these:
- the task loss (without the regularizer) over the run: its mean over the last window of steps
  against the first window, and against chance (ln of the class count for cross-entropy);
- the training accuracy measured on the batches the session trained on;
- the validation accuracy of the trained weights inside the training session against that of the
  model written to disk (they must agree: the written model is what the user gets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A run of fewer steps says nothing either way (its loss is noise around the start).
MIN_JUDGED_STEPS = 20
# The loss must fall by this share between the first and the last window to count as learning...
MIN_FALL = 0.1
# ...unless it is already far below chance (a trained model fine-tuned: nothing left to fall).
LEARNED_SHARE_OF_CHANCE_LOSS = 0.5
# How far the written model's validation accuracy may be from the session's before it is news.
MAX_WRITTEN_GAP = 0.05
# "At chance": within this of the most frequent class's share; "not at chance": this far above it.
CHANCE_MARGIN = 0.03
ABOVE_CHANCE = 0.2
# When the early check runs: after the first epoch, or this many steps if an epoch is longer.
EARLY_CHECK_STEPS = 300

LIKELY_CAUSES = ("likely causes: a learning rate far off (--lr), weights the exporter made constant or "
                 "shared, a dead network (every activation zero), inputs not normalised, or labels that "
                 "do not match the inputs")


@dataclass
class LearningSignal:
    steps: int
    first_loss: float
    last_loss: float
    chance_loss: float | None
    train_accuracy: float | None  # over the last window of training batches (cross-entropy only)

    @property
    def judged(self) -> bool:
        return self.steps >= MIN_JUDGED_STEPS

    @property
    def learned(self) -> bool:
        """The loss fell, or ended far below chance, or started far below chance (a trained model) and
        stayed below it; True when too short to judge."""
        if not self.judged:
            return True
        if self.last_loss <= (1 - MIN_FALL) * self.first_loss:
            return True
        if self.chance_loss is None:
            return False
        if self.last_loss <= LEARNED_SHARE_OF_CHANCE_LOSS * self.chance_loss:
            return True
        # A trained model that shrink prunes hard: its loss rises from far below chance and stays below
        # it (measured: 0.14 -> 1.61 against chance 2.77 at 0.125x, a model at 86% once cut and trained).
        return (self.first_loss <= LEARNED_SHARE_OF_CHANCE_LOSS * self.chance_loss
                and self.last_loss <= (1 - MIN_FALL) * self.chance_loss)

    def describe(self) -> str:
        return (f"the training loss went from {self.first_loss:.4g} to {self.last_loss:.4g} over {self.steps} steps"
                + (f" (chance: {self.chance_loss:.4g})" if self.chance_loss is not None else ""))

    def to_dict(self) -> dict:
        return {"steps": self.steps, "first_loss": self.first_loss, "last_loss": self.last_loss,
                "chance_loss": self.chance_loss, "train_accuracy": self.train_accuracy,
                "learned": self.learned, "judged": self.judged}


def window(steps: int) -> int:
    return min(50, max(5, steps // 10))


def learning_signal(task_losses: list[float], correct: list[float], classes: int | None) -> LearningSignal:
    """Summarise a run from its per-step task losses and per-step training accuracies."""
    n = len(task_losses)
    w = window(n)
    losses = np.asarray(task_losses, dtype=np.float64)
    first = float(losses[:w].mean()) if n else math.nan
    last = float(losses[-w:].mean()) if n else math.nan
    accuracy = float(np.mean(correct[-w:])) if correct else None
    chance = math.log(classes) if classes and classes > 1 else None
    return LearningSignal(n, first, last, chance, accuracy)


def chance_accuracy(labels: np.ndarray) -> float:
    """What predicting the most frequent class scores."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1))
    return float(counts.max() / counts.sum()) if counts.sum() else 0.0


def learning_warnings(signal: LearningSignal, written_accuracy: float | None, session_accuracy: float | None,
                      chance: float | None) -> list[str]:
    """The warnings a finished run deserves (empty when it learned and the written model agrees)."""
    warnings = []
    if not signal.learned:
        warnings.append(f"this run learned nothing: {signal.describe()}; {LIKELY_CAUSES}")
    if written_accuracy is not None and session_accuracy is not None \
            and abs(written_accuracy - session_accuracy) > MAX_WRITTEN_GAP:
        warnings.append(f"the written model scores {written_accuracy:.1%} on the validation data but the trained "
                        f"weights scored {session_accuracy:.1%} in the training session: the written model does "
                        f"not compute what was trained (batch-norm statistics, or weights read through aliases); "
                        f"please report it with the model")
    if (written_accuracy is not None and chance is not None and signal.train_accuracy is not None
            and written_accuracy <= chance + CHANCE_MARGIN and signal.train_accuracy >= chance + ABOVE_CHANCE):
        warnings.append(f"the written model is at chance on the validation data ({written_accuracy:.1%}; "
                        f"most frequent class {chance:.1%}) while training batches reached "
                        f"{signal.train_accuracy:.1%}: the validation data may not match the training data, "
                        f"or the model overfits")
    return warnings
