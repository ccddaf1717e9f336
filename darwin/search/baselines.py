"""Tuned uniform baselines: the best one-number merge of each family, found on the fitness.

A bred child is only worth its search if it beats the best *tuned* uniform merge, not the default
0.5 (model soups, arXiv 2203.05482; evaluation protocol in docs/evolve.md). For two parents A, B
(and the base θ₀ when given) each family is a grid of plain mergekit recipes:

* ``linear``: ``(1 − w)·A + w·B`` for each w (11 points by default, the parents included);
* ``slerp``: SLERP(A, B; t) for each t (Shoemake 1985);
* ``task_arithmetic``: ``θ₀ + λ·(δ_A + δ_B)`` for each λ (arXiv 2212.04089);
* ``ties`` / ``dare_ties``: weights (1, 1), normalised, for each density × λ (arXiv 2306.01708,
  2311.03099; DARE masks from the run's seed).

Every grid point is scored with the run's fitness, like a candidate; the family's best is kept
(``tuned <family>``) with its setting and the whole grid, in ``baselines.json``. The recipes are
plain mergekit recipes: ``darwin merge`` and ``mergekit-yaml`` both run them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from darwin.genome.breeder import PairBreeder
from darwin.plan.plan import MergePlan
from darwin.plan.run import plan_recipe
from darwin.search.config import BaselinesConfig, DensityLambdaGrid
from darwin.search.context import RunContext


@dataclass(frozen=True)
class PairRefs:
    """The two parents, the optional base, the child dtype and the mask seed of the grid recipes."""

    a: str
    b: str
    base: str | None
    dtype: str
    seed: int = 0


def _two(method: str, pair: PairRefs, params: tuple[dict, dict], shared: dict | None = None,
         with_base: bool = False) -> dict[str, Any]:
    rec: dict[str, Any] = {"merge_method": method, "dtype": pair.dtype, "seed": pair.seed,
                           "models": [{"model": pair.a, "parameters": params[0]},
                                      {"model": pair.b, "parameters": params[1]}]}
    if with_base:
        rec["base_model"] = pair.base
    if shared:
        rec["parameters"] = shared
    return rec


def grid_recipes(cfg: BaselinesConfig, pair: PairRefs) -> dict[str, list[tuple[dict[str, float], dict[str, Any]]]]:
    """family → [(setting, mergekit recipe)] for the configured grids (families needing a base are
    left out without one)."""
    fams: dict[str, list[tuple[dict[str, float], dict[str, Any]]]] = {}
    if cfg.linear:
        fams["linear"] = [({"weight_b": w}, _two("linear", pair, ({"weight": 1 - w}, {"weight": w}),
                                                 {"normalize": False})) for w in cfg.linear]
    if cfg.slerp:
        # mergekit's slerp interpolates from its base_model (A here) toward the other model
        fams["slerp"] = [({"t": t}, {"merge_method": "slerp", "dtype": pair.dtype, "base_model": pair.a,
                                     "parameters": {"t": t}, "models": [{"model": pair.a}, {"model": pair.b}]})
                         for t in cfg.slerp]
    if pair.base is None:
        return fams
    ones = ({"weight": 1.0}, {"weight": 1.0})
    if cfg.task_arithmetic:
        fams["task_arithmetic"] = [({"lambda": lam}, _two("task_arithmetic", pair, ones, {"lambda": lam}, True))
                                   for lam in cfg.task_arithmetic]
    for fam in ("ties", "dare_ties"):
        g = getattr(cfg, fam)
        fams[fam] = [({"density": d, "lambda": lam},
                      _two(fam, pair, ({"weight": 1.0, "density": d}, {"weight": 1.0, "density": d}),
                           {"lambda": lam, "normalize": True}, True))
                     for d in g.density for lam in g.lam]
    return {k: v for k, v in fams.items() if v}


def grid_plans(cfg: BaselinesConfig, pair: PairRefs) -> dict[str, list[tuple[dict[str, float], MergePlan]]]:
    """:func:`grid_recipes` decoded into merge plans (no weights read)."""
    return {fam: [(setting, plan_recipe(rec)[0]) for setting, rec in pts]
            for fam, pts in grid_recipes(cfg, pair).items()}


def best_of_grids(results: dict[str, list[tuple[dict[str, float], dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """``tuned <family>`` → the best-fitness record of each family, with its ``setting`` and the
    ``grid`` of (setting, fitness); families whose every point failed are left out."""
    out = {}
    for fam, pts in results.items():
        ok = [(s, r) for s, r in pts if r.get("fitness") is not None]
        if not ok:
            continue
        setting, rec = max(ok, key=lambda sr: sr[1]["fitness"])
        out[f"tuned {fam}"] = {**rec, "setting": setting,
                               "grid": [{"setting": s, "fitness": r.get("fitness")} for s, r in pts]}
    return out


def recipe_of_setting(family: str, setting: dict[str, float], pair: PairRefs) -> dict[str, Any]:
    """The mergekit recipe of one grid point (``family`` and its ``setting`` as in ``baselines.json``)."""
    def empty() -> DensityLambdaGrid:
        return DensityLambdaGrid.model_validate({"density": [], "lambda": []})

    one = BaselinesConfig(linear=[], slerp=[], task_arithmetic=[], ties=empty(), dare_ties=empty())
    if family == "linear":
        one.linear = [setting["weight_b"]]
    elif family == "slerp":
        one.slerp = [setting["t"]]
    elif family == "task_arithmetic":
        one.task_arithmetic = [setting["lambda"]]
    else:
        getattr(one, family).density = [setting["density"]]
        getattr(one, family).lam = [setting["lambda"]]
    return grid_recipes(one, pair)[family][0][1]


def plan_of_setting(family: str, setting: dict[str, float], pair: PairRefs) -> MergePlan:
    """:func:`recipe_of_setting` decoded into a merge plan."""
    return plan_recipe(recipe_of_setting(family, setting, pair))[0]


def pair_refs(ctx: RunContext) -> PairRefs:
    """The run's :class:`PairRefs` (a pair genome's run only)."""
    assert isinstance(ctx.breeder, PairBreeder)  # tuned baselines are for pair genomes
    return PairRefs(ctx.breeder.a, ctx.breeder.b, ctx.cfg.base, ctx.cfg.dtype, ctx.seed)


def baseline_plans(ctx: RunContext, baselines: dict[str, dict[str, Any]]) -> dict[str, MergePlan]:
    """Name → merge plan of every baseline in ``baselines``: the decoder's (parents, uniform 0.5…)
    and the tuned merges (rebuilt from their settings)."""
    plans = ctx.breeder.baselines()
    if isinstance(ctx.breeder, PairBreeder):
        plans.update({k: plan_of_setting(k.removeprefix("tuned "), v["setting"], pair_refs(ctx))
                      for k, v in baselines.items() if k.startswith("tuned ")})
    return {k: p for k, p in plans.items() if k in baselines}
