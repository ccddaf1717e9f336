"""The generation loop: ask CMA-ES, decode, drop infeasible candidates, score, tell, record.

The loop does no I/O of its own: it reports every scored candidate and every finished
generation to a :class:`LoopEvents` (the run's progress bar, ``history.jsonl`` and plot live in
:mod:`darwin.search.monitor`), and returns the best candidate.

A generation record is ``{"generation", "candidates", "sigma", "elapsed_s", "best_so_far"}``; a
candidate record is ``{"x", "genes", "parameters", "fitness", "components", "error", "seconds",
"worker"}`` plus ``"violation"`` for a candidate outside ``search.constraints`` (never scored) and
``"selection"`` for the generation's top-k candidates when the run has selection data.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from darwin.plan.plan import MergePlan
from darwin.search.cmaes import CmaSearch
from darwin.search.constraints import constraint_violation
from darwin.search.context import RunContext
from darwin.search.evaluator import Evaluator

log = logging.getLogger("darwin.evolve")


class LoopEvents(Protocol):
    """What the loop reports."""

    def candidate(self, generation: int, record: dict[str, Any] | None) -> None:
        """A candidate of ``generation`` finished (None: infeasible, not scored)."""
        ...

    def generation(self, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """``record`` finished and was appended to ``history``."""
        ...


def best_candidate(history: list[dict[str, Any]], key: str = "fitness") -> dict[str, Any] | None:
    """The scored candidate of ``history`` with the highest ``key`` (``fitness`` or ``selection``;
    first one on ties), with its generation."""
    best = None
    for rec in history:
        for c in rec["candidates"]:
            if c.get(key) is not None and (best is None or c[key] > best[key]):
                best = {**c, "generation": rec["generation"]}
    return best


def stalled(history: list[dict[str, Any]], patience: int | None) -> bool:
    """Whether the last ``patience`` generations brought no selection gain (early stopping)."""
    if patience is None or len(history) <= patience:
        return False
    best = best_candidate(history, "selection")
    return history[-1]["generation"] - (best["generation"] if best else -1) >= patience


def _select(ctx: RunContext, evaluator: Evaluator, cands: list[dict[str, Any]], plans: list[MergePlan]) -> None:
    """Score the generation's top-k candidates (by fitness) on the selection data, in place."""
    scored = sorted((i for i, c in enumerate(cands) if c.get("fitness") is not None),
                    key=lambda i: -cands[i]["fitness"])[: ctx.cfg.search.selection_top_k]
    for i, rec in zip(scored, evaluator.run([plans[i] for i in scored], role="selection")):
        cands[i]["selection"] = rec["fitness"]


def _unscored(error: str | None, violation: float) -> dict[str, Any]:
    return {"fitness": None, "components": {}, "error": error, "seconds": 0.0, "worker": None,
            "violation": round(violation, 6)}


def _score(ctx: RunContext, evaluator: Evaluator, decoded: list[tuple[dict[str, float], MergePlan]],
           events: LoopEvents, generation: int) -> list[dict[str, Any]]:
    """Fitness records of the decoded candidates, in order; infeasible ones are not evaluated."""
    checks = [constraint_violation(plan, ctx.cfg.search.constraints) for _, plan in decoded]
    feasible = [i for i, (v, _) in enumerate(checks) if v == 0]

    def done(k: int, rec: dict[str, Any]) -> None:
        if rec["error"]:
            log.warning("candidate failed (%s) with genome %s", rec["error"], decoded[feasible[k]][0])
        events.candidate(generation, rec)

    scored = dict(zip(feasible, evaluator.run([decoded[i][1] for i in feasible], done)))
    out = []
    for i, (violation, why) in enumerate(checks):
        if i not in scored:
            events.candidate(generation, None)
        out.append(scored.get(i) or _unscored(why, violation))
    return out


def tied_share(cands: list[dict[str, Any]]) -> float:
    """Share of the scored candidates whose fitness equals the generation's most common value (to
    12 significant digits); 0.0 with fewer than 3 scored. A share over 0.5 means the fitness cannot
    tell most candidates apart (a coarse metric on few items), so CMA-ES has no slope to follow."""
    vals = [f"{c['fitness']:.12g}" for c in cands if c.get("fitness") is not None]
    if len(vals) < 3:
        return 0.0
    return max(vals.count(v) for v in set(vals)) / len(vals)


def run_generation(ctx: RunContext, search: CmaSearch, evaluator: Evaluator, generation: int,
                   events: LoopEvents) -> dict[str, Any]:
    """Ask, decode, score and tell one generation; returns its record (without timing and best)."""
    xs = search.ask()
    decoded = [ctx.decode(x) for x in xs]
    records = _score(ctx, evaluator, decoded, events, generation)
    cands = [{"x": x, "genes": values, "parameters": plan.num_parameters, **rec}
             for x, (values, plan), rec in zip(xs, decoded, records)]
    search.tell(xs, cands)
    if (share := tied_share(cands)) > 0.5:
        log.warning("generation %d: %.0f%% of the candidates tie on the fitness: it cannot tell them apart, "
                    "so CMA-ES has nothing to follow (use more items, or score: margin for multiple-choice "
                    "lm-eval tasks)", generation, 100 * share)
    if ctx.cfg.selection:
        _select(ctx, evaluator, cands, [plan for _, plan in decoded])
    return {"generation": generation, "candidates": cands, "sigma": search.sigma}


def search_loop(ctx: RunContext, search: CmaSearch, evaluator: Evaluator, history: list[dict[str, Any]],
                events: LoopEvents) -> dict[str, Any] | None:
    """Run the generations ``history`` does not hold yet; returns the best candidate (None if none
    scored): the best on the selection data when the run has one, else the best on the fitness.

    ``history`` (already replayed into ``search``) is extended in place. With ``search.patience`` the
    loop stops once that many generations brought no selection gain (a resumed run stops at the
    same generation: the rule reads only the history).
    """
    n_gen = ctx.cfg.search.num_generations(len(ctx.free_genes))
    best = best_candidate(history)
    t_start = time.perf_counter()
    for g in range(len(history), n_gen):
        if stalled(history, ctx.cfg.search.patience):
            log.info("early stop after generation %d: %d generations without a selection gain",
                     history[-1]["generation"], ctx.cfg.search.patience)
            break
        record = run_generation(ctx, search, evaluator, g, events)
        record["elapsed_s"] = round(time.perf_counter() - t_start, 3)
        gbest = best_candidate([record])
        if gbest and (best is None or gbest["fitness"] > best["fitness"]):
            best = gbest
        record["best_so_far"] = best["fitness"] if best else None
        history.append(record)
        events.generation(record, history)
    return best_candidate(history, "selection") if ctx.cfg.selection else best
