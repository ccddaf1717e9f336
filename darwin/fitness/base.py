"""The fitness protocol and weighted combination.

A fitness is any callable ``(model, tokenizer) -> float`` where higher is better. It must be
deterministic for a given model: same weights, same score (no sampling, fixed data, fixed order).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Fitness(Protocol):
    """``(model, tokenizer) -> float``, higher is better, deterministic."""

    def __call__(self, model: Any, tokenizer: Any) -> float: ...


@dataclass
class Component:
    """A named fitness with its weight in the total."""

    name: str
    fn: Callable[[Any, Any], float]
    weight: float = 1.0


@dataclass
class Score:
    """A candidate's fitness: weighted total and each component's raw value."""

    total: float
    components: dict[str, float]


class CombinedFitness:
    """Weighted sum of components: ``total = Σ wᵢ·fᵢ(model, tokenizer)``.

    Raises:
        ValueError: from :meth:`__call__`, naming the component, when one returns a non-finite
            value (the search then scores the candidate worst and logs it).
    """

    def __init__(self, components: list[Component]):
        if not components:
            raise ValueError("at least one fitness component is needed")
        names = [c.name for c in components]
        self.components = [Component(f"{c.name}#{names[:i].count(c.name)}" if names.count(c.name) > 1 else c.name,
                                     c.fn, c.weight) for i, c in enumerate(components)]

    def __call__(self, model: Any, tokenizer: Any) -> Score:
        vals = {}
        for c in self.components:
            v = float(c.fn(model, tokenizer))
            if not math.isfinite(v):
                raise ValueError(f"fitness {c.name!r} returned {v}")
            vals[c.name] = v
        return Score(sum(c.weight * vals[c.name] for c in self.components), vals)
