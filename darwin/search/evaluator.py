"""Candidate evaluators: score a batch of merge plans and return one fitness record per plan.

Two implementations share one interface (``run(plans, on_done) -> records``, ``resident()``,
``close()``):

* :class:`LocalEvaluator` (default): one resident model in this process, plans scored in order;
* :class:`darwin.search.ray_pool.RayEvaluator` (``search.workers > 1`` or ``--address``): one Ray
  actor per worker, each holding the parents and a resident model.

A fitness record is ``{"fitness": float | None, "components": {name: float}, "error": str | None,
"seconds": float, "worker": str}``, plus ``metrics`` (every metric the fitness reported, e.g. all
of lm-eval's) and ``documents`` (per-document scores) when the fitness has them; ``fitness`` is
None when the candidate failed (exception, NaN, out of memory) and ``error`` says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from darwin.plan.plan import MergePlan
from darwin.search.resident import ResidentModel, ResidentSpec

OnDone = Callable[[int, dict[str, Any]], None]


def role_fitness(fitness: Any, role: str) -> Any:
    """The score function of ``role`` from a ``{role: fn}`` mapping (a plain function serves ``fitness``).

    Raises:
        KeyError: the run has no fitness for ``role``.
    """
    if isinstance(fitness, dict):
        return fitness[role]
    if role != "fitness":
        raise KeyError(f"no {role!r} fitness configured")
    return fitness


def evaluate_plan(resident: ResidentModel, plan: MergePlan, fitness, worker: str = "local") -> dict[str, Any]:
    """Merge ``plan`` into the resident model and score it; any failure becomes an error record."""
    t0 = time.perf_counter()
    try:
        score = resident.score(plan, fitness)
        rec: dict[str, Any] = {"fitness": score.total, "components": score.components, "error": None}
        if getattr(score, "documents", None) is not None:
            rec["documents"] = score.documents
        if getattr(score, "metrics", None):
            rec["metrics"] = score.metrics
    except Exception as e:  # any failure scores worst and is logged with its genome
        rec = {"fitness": None, "components": {}, "error": f"{type(e).__name__}: {e}"}
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    rec["worker"] = worker
    return rec


class Evaluator(Protocol):
    """Scores plans; see the module doc for the record format."""

    def run(self, plans: list[MergePlan], on_done: OnDone | None = None, role: str = "fitness"
            ) -> list[dict[str, Any]]:
        """Score every plan with the ``role``'s fitness (``fitness``, ``selection``…);
        ``on_done(index, record)`` is called as each finishes."""
        ...

    def resident(self) -> ResidentModel:
        """A resident model in this process (for writing the child and its health check)."""
        ...

    def close(self) -> None:
        """Release workers and memory."""
        ...


class LocalEvaluator:
    """Serial in-process evaluation on one resident model (built on first use).

    Args:
        spec: what the resident model is built from.
        fitness: ``(model, tokenizer) -> Score``, or ``{role: fn}`` (``fitness``, ``selection``, ``test``).
    """

    def __init__(self, spec: ResidentSpec, fitness):
        self.spec = spec
        self.fitness = fitness
        self._resident: ResidentModel | None = None

    def resident(self) -> ResidentModel:
        """The resident model (parents loaded once, on first call)."""
        if self._resident is None:
            self._resident = self.spec.build()
        return self._resident

    def run(self, plans: list[MergePlan], on_done: OnDone | None = None, role: str = "fitness"
            ) -> list[dict[str, Any]]:
        """Score plans one after another in this process."""
        out = []
        for i, plan in enumerate(plans):
            rec = evaluate_plan(self.resident(), plan, role_fitness(self.fitness, role))
            if on_done is not None:
                on_done(i, rec)
            out.append(rec)
        return out

    def close(self) -> None:
        """Nothing to release (the resident model is reused for the outputs)."""
