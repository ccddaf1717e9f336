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
    """A candidate's fitness: weighted total and each component's raw value.

    ``documents``: with ``keep_documents``, every document's contribution to ``total`` (their mean
    is ``total``; see :class:`CombinedFitness`), for paired comparisons; else None.
    ``metrics``: everything the components reported beside their score (a component's
    ``last_metrics`` mapping after its call, e.g. every lm-eval metric as ``"task/acc,none"``).
    """

    total: float
    components: dict[str, float]
    documents: list[float] | None = None
    metrics: dict[str, float] | None = None


class CombinedFitness:
    """Weighted sum of components: ``total = Σ wᵢ·fᵢ(model, tokenizer)``.

    With ``keep_documents`` and every component document-level (a ``doc_scores(model, tokenizer)``
    method returning a list, as :class:`darwin.fitness.perplexity.DocumentFitness` has; one that
    returns None has no per-item scores and is scored whole), the score also keeps one
    number per document: document j of component c (``n_c`` documents, ``N`` in all) contributes
    ``w_c · (N / n_c) · s_j``, so the mean of the contributions is the total and a paired bootstrap
    over them resamples documents (:func:`darwin.fitness.stats.paired_bootstrap`).

    Raises:
        ValueError: from :meth:`__call__`, naming the component, when one returns a non-finite
            value (the search then scores the candidate worst and logs it).
    """

    def __init__(self, components: list[Component], keep_documents: bool = False):
        if not components:
            raise ValueError("at least one fitness component is needed")
        names = [c.name for c in components]
        self.components = [Component(f"{c.name}#{names[:i].count(c.name)}" if names.count(c.name) > 1 else c.name,
                                     c.fn, c.weight) for i, c in enumerate(components)]
        self.keep_documents = keep_documents and all(hasattr(c.fn, "doc_scores") for c in self.components)

    def __call__(self, model: Any, tokenizer: Any) -> Score:
        vals, per_doc, metrics = {}, {}, {}
        for c in self.components:
            per = c.fn.doc_scores(model, tokenizer) if self.keep_documents else None  # type: ignore[attr-defined]
            if per is not None:
                per_doc[c.name] = [float(x) for x in per]
                v = math.fsum(per_doc[c.name]) / max(len(per_doc[c.name]), 1)
            else:
                v = float(c.fn(model, tokenizer))
            if not math.isfinite(v):
                raise ValueError(f"fitness {c.name!r} returned {v}")
            vals[c.name] = v
            for k, m in (getattr(c.fn, "last_metrics", None) or {}).items():
                metrics[f"{c.name}/{k}" if k in metrics else k] = float(m)
        total = sum(c.weight * vals[c.name] for c in self.components)
        docs = None
        if self.keep_documents and len(per_doc) == len(self.components):
            n = sum(len(v) for v in per_doc.values())
            docs = [c.weight * n / len(per_doc[c.name]) * s for c in self.components for s in per_doc[c.name]]
        return Score(total, vals, docs, metrics or None)
