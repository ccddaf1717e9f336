"""The run's report: every model on the search, selection and test data, and the child against the
best tuned uniform merge on test, with a paired bootstrap interval (``summary.json``).

Models: the base (when given), the parents, the uniform 0.5 and tuned uniform merges, the best
search candidate, and the child (the final pick: the best candidate or the baseline that beat it on
the selection data). Scores are fitness values, higher is better.

* The *best uniform* is the uniform merge (``uniform 0.5`` or a ``tuned <family>``) with the best
  selection score (its fitness when the run has no selection data); the test data never chooses.
* ``child_vs_best_uniform``: ``delta_test`` = child − best uniform on test, the mean over test
  documents of the paired per-document differences, and ``ci95`` its percentile bootstrap interval
  (10,000 resamples of the test documents, seed 0; :func:`darwin.fitness.stats.paired_bootstrap`);
  null without document-level test data. ``generalization_gap`` = search gain − test gain.
* ``candidate_vs_best_uniform``: the same for the best search candidate, so a run whose pick is a
  uniform merge still reports what the search found.

``summary.json`` has at least ``{"models": [{"name", "kind": "base|parent|uniform|candidate|child",
"search_fitness", "selection_fitness", "test_fitness"}],
"child_vs_best_uniform": {"uniform", "delta_test", "ci95": [lo, hi]}}``; ``test_scores.json`` holds
each model's per-document test contributions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from darwin.fitness.stats import paired_bootstrap
from darwin.genome.breeder import PairBreeder
from darwin.plan.plan import MergePlan
from darwin.search.baselines import baseline_plans
from darwin.search.context import RunContext
from darwin.search.evaluator import Evaluator
from darwin.search.monitor import counting
from darwin.search.runfolder import write_json_atomic
from darwin.search.scoring import role_labels

CANDIDATE, CHILD = "best candidate", "child"
log = logging.getLogger("darwin.evolve")


def kind_of(name: str) -> str:
    """``parent``, ``base``, ``uniform`` (``uniform 0.5``, ``tuned <family>``) or ``baseline`` (others)."""
    if name.startswith("parent "):
        return "parent"
    if name == "base":
        return "base"
    return "uniform" if name.startswith(("uniform", "tuned ")) else "baseline"


def _rows(ctx: RunContext, best: dict[str, Any] | None, baselines: dict[str, dict[str, Any]]
          ) -> tuple[list[dict[str, Any]], dict[str, MergePlan]]:
    rows = [{"name": k, "kind": kind_of(k), "search_fitness": v.get("fitness"),
             "selection_fitness": v.get("selection")} for k, v in baselines.items()]
    plans = baseline_plans(ctx, baselines)
    if best is not None:
        plans[CANDIDATE] = ctx.plan_of(best["genes"])
        rows.append({"name": CANDIDATE, "kind": "candidate", "search_fitness": best["fitness"],
                     "selection_fitness": best.get("selection")})
    return rows, plans


def _add_base(ctx: RunContext, evaluator: Evaluator, rows: list[dict[str, Any]], plans: dict[str, MergePlan]) -> None:
    plan = ctx.breeder.base_plan() if isinstance(ctx.breeder, PairBreeder) else None
    if plan is None:
        return
    plans["base"] = plan
    row = {"name": "base", "kind": "base", "search_fitness": evaluator.run([plan])[0]["fitness"],
           "selection_fitness": None}
    if ctx.cfg.selection:
        row["selection_fitness"] = evaluator.run([plan], role="selection")[0]["fitness"]
    rows.insert(0, row)


def best_uniform(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The uniform row with the best selection score (fitness without selection data); never test."""
    uni = [r for r in rows if r["kind"] == "uniform" and r["search_fitness"] is not None]
    key = "selection_fitness" if any(r["selection_fitness"] is not None for r in uni) else "search_fitness"
    uni = [r for r in uni if r[key] is not None]
    return max(uni, key=lambda r: r[key]) if uni else None


def compare(a: dict[str, Any], b: dict[str, Any], docs: dict[str, list[float]]) -> dict[str, Any]:
    """``a`` against ``b``: Δ on each role, the test interval, the generalization gap (see module doc)."""
    def delta(key: str) -> float | None:
        return a[key] - b[key] if a.get(key) is not None and b.get(key) is not None else None

    out: dict[str, Any] = {"uniform": b["name"], "delta_search": delta("search_fitness"),
                           "delta_selection": delta("selection_fitness"), "delta_test": delta("test_fitness"),
                           "ci95": None, "test_documents": None, "generalization_gap": None}
    if a["name"] in docs and b["name"] in docs:
        d, lo, hi = paired_bootstrap(docs[a["name"]], docs[b["name"]])
        out.update(delta_test=d, ci95=[lo, hi], test_documents=len(docs[a["name"]]))
    if out["delta_search"] is not None and out["delta_test"] is not None:
        out["generalization_gap"] = out["delta_search"] - out["delta_test"]
    return out


@dataclass(frozen=True)
class Pick:
    """What the report describes: the best candidate (None with ``--baselines-only``), the baseline
    that won the final pick (None: the candidate did), and where the search started."""

    best: dict[str, Any] | None
    winner: str | None
    start: str


def build_report(ctx: RunContext, evaluator: Evaluator, baselines: dict[str, dict[str, Any]], pick: Pick,
                 progress: bool = False) -> dict[str, Any]:
    """Score every model on the test data (when the run has one) and write ``summary.json`` and
    ``test_scores.json``; returns the summary (see the module doc)."""
    best, winner, start = pick.best, pick.winner, pick.start
    rows, plans = _rows(ctx, best, baselines)
    _add_base(ctx, evaluator, rows, plans)
    child = dict(next(r for r in rows if r["name"] == (winner or CANDIDATE)), name=CHILD, kind="child",
                 source=winner or CANDIDATE)
    rows.append(child)
    uni = best_uniform(rows)  # chosen before any test score exists: the test data cannot sway it
    docs: dict[str, list[float]] = {}
    for r in rows:
        r["test_fitness"] = None
    if ctx.cfg.test:
        names = [r["name"] for r in rows if r["name"] in plans]
        with counting("test data", len(names), progress) as done:
            recs = dict(zip(names, evaluator.run([plans[n] for n in names], done, role="test")))
        for name, rec in recs.items():
            if rec.get("error"):
                log.warning("test data: %s could not be scored: %s", name, rec["error"])
        for r in rows:
            rec = recs.get(r.get("source", r["name"]))
            if rec is not None:
                r["test_fitness"] = rec["fitness"]
                if rec.get("error"):
                    r["test_error"] = rec["error"]
                if rec.get("documents") is not None:
                    docs[r["name"]] = rec["documents"]
    cand = next((r for r in rows if r["name"] == CANDIDATE), None)
    summary = {"genome": ctx.spec.name, "seed": ctx.seed, "start": start, "child": child["source"],
               "data_notes": list(ctx.notes), "fitness_labels": run_labels(ctx), "models": rows,
               "best_uniform": uni["name"] if uni else None,
               "child_vs_best_uniform": compare(child, uni, docs) if uni else None,
               "candidate_vs_best_uniform": compare(cand, uni, docs) if uni and cand else None}
    write_json_atomic(ctx.out / "summary.json", summary)
    write_json_atomic(ctx.out / "test_scores.json", docs)
    return summary


def run_labels(ctx: RunContext) -> dict[str, str]:
    """What each role's fitness measures (``search``, ``selection``, ``test``), for the table and plot."""
    labels = role_labels({"fitness": ctx.cfg.fitness, "selection": ctx.cfg.selection or [], "test": ctx.cfg.test or []})
    return {("search" if k == "fitness" else k): v for k, v in labels.items()}


def summary_table(summary: dict[str, Any]) -> str:
    """Markdown table of the summary (model card, CLI): every model on the three roles, then the
    child against the best uniform on test with its interval."""
    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.5g}"

    lines = ["| model | kind | search | selection | test |", "|---|---|---|---|---|"]
    for r in summary["models"]:
        name = f"**{r['name']}** ({r['source']})" if r["kind"] == "child" else r["name"]
        lines.append(f"| {name} | {r['kind']} | {f(r['search_fitness'])} | {f(r['selection_fitness'])} "
                     f"| {f(r['test_fitness'])} |")
    c = summary.get("child_vs_best_uniform")
    if c and c["delta_test"] is not None:
        ci = f", 95% CI [{c['ci95'][0]:+.4g}, {c['ci95'][1]:+.4g}] over {c['test_documents']} test documents" \
            if c["ci95"] else ""
        lines += ["", f"Child − best uniform ({c['uniform']}) on test: {c['delta_test']:+.4g}{ci}; "
                      f"generalization gap (search gain − test gain): {f(c['generalization_gap'])}."]
    labels = summary.get("fitness_labels") or {}
    if labels:
        lines += [""] + [f"- {role}: {text}" for role, text in labels.items()]
    return "\n".join(lines)
