"""Budgets: a target cost in one resource (FLOPs, model size or latency), relative to a model's own
cost (`0.5x`) or absolute (`2.1G` FLOPs, `25M` weights, `3ms`). Read by `shrink`, `expand` and `cycle`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import MorphNetError

RESOURCES = ("flops", "size", "latency")
UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass
class Budget:
    resource: str  # flops | size | latency
    text: str

    def __post_init__(self) -> None:
        if self.resource not in RESOURCES:
            raise MorphNetError(f"budget resource {self.resource!r}: choose one of {', '.join(RESOURCES)}")

    @property
    def relative(self) -> bool:
        return self.text.strip().lower().endswith("x")

    def target(self, full_cost: float) -> float:
        """The budget in the resource's unit; `full_cost` is what `1.0x` means."""
        value = self._value(full_cost)
        if not value > 0:
            raise MorphNetError(f"--budget-{self.resource} {self.text}: must be above 0")
        return value

    def _value(self, full_cost: float) -> float:
        text = self.text.strip().lower()
        if text.endswith("x"):
            return _number(text[:-1], self.text) * full_cost
        if self.resource == "latency":
            match = re.fullmatch(r"([0-9.e+-]+)\s*(s|ms|us)", text)
            if not match:
                raise MorphNetError(f"--budget-latency {self.text}: expected e.g. 0.5x or 1.2ms")
            return _number(match.group(1), self.text) * TIME_UNITS[match.group(2)]
        match = re.fullmatch(r"([0-9.e+-]+)\s*([kmgt]?)", text)
        if not match:
            raise MorphNetError(f"--budget-{self.resource} {self.text}: expected e.g. 0.5x or 2.1G")
        return _number(match.group(1), self.text) * UNITS[match.group(2)]


def _number(text: str, whole: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise MorphNetError(f"budget {whole!r}: {text!r} is not a number") from exc
