"""``darwin evolve``: CMA-ES over genomes, candidates merged and scored in memory.

This module runs the steps in order; each lives in its own module and they meet at plain data
(:class:`darwin.search.context.RunContext`, JSON records):

1. :func:`prepare`: everything that can fail on bad input, before the run folder is touched;
2. :mod:`darwin.search.runfolder`: ``run.json`` (a resumed run must match it), ``history.jsonl``;
3. :mod:`darwin.search.priors`: the MRI prior the genome's decoder declares (``mri.json``,
   ``mri.png`` or ``layer_prior.json``);
4. the baselines, scored once (``baselines.json``): see the decoder's ``baselines``;
5. :mod:`darwin.search.cmaes` and :mod:`darwin.search.loop`: the generations, reported to
   :mod:`darwin.search.monitor` (progress bar, ``history.jsonl``, ``fitness.png``);
6. :mod:`darwin.search.outputs`: ``best_genome.yaml``, ``recipe.yaml`` (``darwin merge recipe.yaml -o X``
   rebuilds the child bit for bit), ``health.json``, ``child/``.

Resume: the CMA-ES state is rebuilt by replaying ``history.jsonl`` through ask/tell with the same
seed (no pickles); a resumed run continues exactly where the killed one stopped and ends with the
same result as an unbroken run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from darwin.errors import DarwinError
from darwin.fitness.precision import resolve_fitness_dtype
from darwin.genome.breeder import PairBreeder, make_breeder
from darwin.genome.decode import check_values
from darwin.genome.spec import load_genome
from darwin.io.checkpoint import Checkpoint
from darwin.plan.execute import resolve_device
from darwin.plan.plan import MergePlan
from darwin.plan.planner import parse_dtype
from darwin.search.baselines import baseline_plans, best_of_grids, grid_plans, pair_refs
from darwin.search.cmaes import CmaSearch
from darwin.search.config import ParentsConfig, load_parents_config
from darwin.search.constraints import check_context
from darwin.search.context import RunContext
from darwin.search.dataroles import overlap_warnings, with_holdout
from darwin.search.evaluator import Evaluator, LocalEvaluator
from darwin.search.loop import best_candidate, search_loop
from darwin.search.monitor import RunMonitor, counting
from darwin.search.outputs import write_outputs
from darwin.search.priors import apply_priors
from darwin.search.report import Pick, best_uniform, build_report, kind_of, run_labels
from darwin.search.resident import ResidentSpec, check_plan_shapes
from darwin.search.runfolder import cached_json, load_history, prepare_run_folder
from darwin.search.scoring import as_score_fn, build_fitness, preflight, route_logs
from darwin.search.start import Start, check_start_options, genome_start_values, search_start

log = logging.getLogger("darwin.evolve")

@dataclass(frozen=True, kw_only=True)
class EvolveOptions:
    """How to run a search (none of these changes its result).

    Attributes:
        resume: continue a killed run in the run folder (same configuration required).
        force: restart from scratch if the run folder holds a previous run.
        progress: rich progress bar.
        write_outputs: write the child, recipe, health check (off for quick experiments).
        baselines_only: score the baselines only (no search); the child is the best tuned uniform
            merge, its ``recipe.yaml`` a plain mergekit recipe.
        workers: Ray actors scoring candidates (None: ``search.workers``; 1 and no address: in
            this process).
        address: Ray cluster to join (None: ``search.address``).
    """

    resume: bool = False
    force: bool = False
    progress: bool = True
    write_outputs: bool = True
    baselines_only: bool = False
    workers: int | None = None
    address: str | None = None


@dataclass
class EvolveResult:
    """Outcome of a run.

    Attributes:
        out_dir: the run folder.
        best: the best candidate record (vector, genes, fitness, components).
        baselines: name → fitness record of each baseline.
        history: all generation records.
        child_dir: the written child folder (None when ``write_outputs=False``).
        constraints: the saved child measured against ``search.constraints`` (parameters counted
            from the loaded model, context window scored; also ``constraints.json``), or None.
        winner: the baseline written as the child because it beat every candidate on the selection
            data (greedy-soup rule), or None when the child is the best candidate.
        summary: the report (``summary.json``, :mod:`darwin.search.report`).
    """

    out_dir: Path
    best: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    history: list[dict[str, Any]]
    child_dir: Path | None
    constraints: dict[str, Any] | None = None
    winner: str | None = None
    summary: dict[str, Any] | None = None


def prepare(cfg: ParentsConfig, out: Path) -> RunContext:
    """Open the parents, build the breeder and decode the start point and the baselines.

    A pair this genome cannot breed, genes it lacks or a constraint no candidate can meet fail
    here, before the run folder exists.

    Raises:
        RecipeError, CheckpointError, CompatibilityError, DarwinError: bad input, named.
    """
    dtype = parse_dtype(cfg.dtype, "dtype")
    fitness_dtype = resolve_fitness_dtype(cfg.fitness_dtype, resolve_device(cfg.device))
    refs = cfg.parents + ([cfg.base] if cfg.base else [])
    ckpts = {r: Checkpoint(r) for r in refs}
    spec = load_genome(cfg.genome)
    breeder = make_breeder(spec, ckpts, cfg.parents, cfg.base, dtype, cfg.search.constraints.max_params)
    check_values(spec, {g.name: g.start for g in spec.expand(breeder.num_layers)}, breeder.num_layers)
    ctx = RunContext(cfg=cfg, out=out, spec=spec, breeder=breeder, checkpoints=ckpts, dtype=dtype,
                     fitness_dtype=fitness_dtype)
    check_start_options(ctx)
    return ctx


def check_start(ctx: RunContext) -> None:
    """Decode the start genome and the baselines once (shapes, context) before the run folder exists."""
    start = ctx.plan_of(genome_start_values(ctx))
    check_plan_shapes(start)
    ctx.breeder.baselines()
    check_context(start, ctx.cfg.search.constraints)


def make_evaluator(ctx: RunContext, fitness: Any, workers: int, address: str | None) -> Evaluator:
    """The in-process evaluator, or Ray actors when ``workers > 1`` or an address is given."""
    b = ctx.breeder
    rspec = ResidentSpec({r: str(c.path) for r, c in ctx.checkpoints.items()}, b.a, ctx.fitness_dtype, ctx.cfg.device,
                         b.needed(), ctx.cfg.placement)
    if workers == 1 and not address:
        return LocalEvaluator(rspec, fitness)
    from darwin.search.ray_pool import RayEvaluator

    return RayEvaluator(rspec, fitness, workers, address)


def _placement(cfg: ParentsConfig, opts: EvolveOptions) -> tuple[int, str | None]:
    workers = opts.workers if opts.workers is not None else cfg.search.workers
    address = opts.address if opts.address is not None else cfg.search.address
    if workers < 1:
        raise DarwinError(f"workers must be >= 1, got {workers}")
    if workers > 1 or address:
        from darwin.search.ray_pool import require_ray

        require_ray()
    return workers, address


def score_baselines(ctx: RunContext, evaluator: Evaluator, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Fitness records of the decoder's baselines and, for pair genomes, of the tuned uniform merges
    (:mod:`darwin.search.baselines`: the best of each grid), scored once and cached in ``baselines.json``."""
    def compute() -> dict[str, dict[str, Any]]:
        plans = ctx.breeder.baselines()
        bcfg = ctx.cfg.baselines
        grids = grid_plans(bcfg, pair_refs(ctx)) if bcfg.enabled and isinstance(ctx.breeder, PairBreeder) else {}
        flat = [(fam, setting, plan) for fam, pts in grids.items() for setting, plan in pts]
        with counting("baselines", len(plans) + len(flat), progress) as done:
            out = dict(zip(plans, evaluator.run(list(plans.values()), done)))
            recs = evaluator.run([p for _, _, p in flat], lambda i, r: done(i + len(plans), r))
        results: dict[str, list[tuple[dict[str, float], dict[str, Any]]]] = {}
        for (fam, setting, _), rec in zip(flat, recs):
            results.setdefault(fam, []).append((setting, rec))
        out.update(best_of_grids(results))
        if ctx.cfg.selection:  # the final pick compares the child with every baseline on the selection data
            sel_plans = baseline_plans(ctx, out)
            names = list(sel_plans)
            with counting("baselines on selection", len(names), progress) as done:
                for k, rec in zip(names, evaluator.run([sel_plans[k] for k in names], done, role="selection")):
                    out[k]["selection"] = rec["fitness"]
        return out

    return cached_json(ctx.out / "baselines.json", compute, indent=2)


def run_search(ctx: RunContext, evaluator: Evaluator, opts: EvolveOptions) -> EvolveResult:
    """Baselines, replay, generations, the final pick, the report and the outputs of a prepared run."""
    baselines = score_baselines(ctx, evaluator, opts.progress)
    if opts.baselines_only:
        name = uniform_winner(baselines)
        log.warning("--baselines-only: the child is %s, the best tuned uniform merge on the %s data", name,
                    "selection" if ctx.cfg.selection else "fitness")
        return _finish(ctx, evaluator, opts, baselines,
                       Outcome(None, [], (name, baseline_plans(ctx, baselines)[name]), "baselines only"))
    start = search_start(ctx, baselines)
    best, history = _generations(ctx, evaluator, opts, baselines, start)
    return _finish(ctx, evaluator, opts, baselines,
                   Outcome(best, history, selection_winner(ctx, best, baselines), start.source))


def _generations(ctx: RunContext, evaluator: Evaluator, opts: EvolveOptions, baselines: dict[str, dict[str, Any]],
                 start: Start) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    n_genes = len(ctx.free_genes)
    popsize, n_gen = ctx.cfg.search.popsize(n_genes), ctx.cfg.search.num_generations(n_genes)
    log.info("CMA-ES: %d genes, population %d, %d generations, start %s, sigma0 %g", n_genes, popsize, n_gen,
             start.source, start.sigma0)
    search = CmaSearch(start.x0, start.sigma0, popsize, ctx.seed, pull=ctx.cfg.search.pull)
    hist_file = ctx.out / "history.jsonl"
    history = load_history(hist_file)
    search.replay(history, hist_file)
    so_far = best_candidate(history)
    with RunMonitor(ctx.out, {k: v["fitness"] for k, v in baselines.items()}, counts=(popsize, n_gen, len(history)),
                    best=so_far["fitness"] if so_far else None, progress=opts.progress,
                    plot={"selection": {k: v.get("selection") for k, v in baselines.items()},
                          "labels": run_labels(ctx)}) as monitor:
        best = search_loop(ctx, search, evaluator, history, monitor)
    if best is None:
        errors = [c["error"] for h in history for c in h["candidates"] if c.get("error")]
        first = f" (first: {errors[0]})" if errors else ""
        raise DarwinError(f"every candidate failed or violated a constraint{first}; see {hist_file} for all errors")
    return best, history


@dataclass(frozen=True)
class Outcome:
    """What the search found: the best candidate (None with ``--baselines-only``), the history, the
    baseline that won the final pick (name, plan) or None, and where the search started."""

    best: dict[str, Any] | None
    history: list[dict[str, Any]]
    winner: tuple[str, MergePlan] | None
    start: str


def _finish(ctx: RunContext, evaluator: Evaluator, opts: EvolveOptions, baselines: dict[str, dict[str, Any]],
            found: Outcome) -> EvolveResult:
    name = found.winner[0] if found.winner else None
    summary = build_report(ctx, evaluator, baselines, Pick(found.best, name, found.start), opts.progress)
    best = found.best or {**baselines[name or ""], "genes": None}
    child_dir, constraints = None, None
    if opts.write_outputs:
        child = write_outputs(ctx, evaluator, found.best, baselines, found.winner, summary)
        child_dir, constraints = child.child_dir, child.constraints
    return EvolveResult(ctx.out, best, baselines, found.history, child_dir, constraints, winner=name,
                        summary=summary)


def uniform_winner(baselines: dict[str, dict[str, Any]]) -> str:
    """The uniform baseline (``uniform 0.5``, ``tuned <family>``) with the best selection score, or the
    best fitness without selection data (``--baselines-only``; the rule of
    :func:`darwin.search.report.best_uniform`).

    Raises:
        DarwinError: every uniform baseline failed.
    """
    row = best_uniform([{"name": k, "kind": kind_of(k), "search_fitness": v.get("fitness"),
                         "selection_fitness": v.get("selection")} for k, v in baselines.items()])
    if row is None:
        raise DarwinError("every uniform baseline failed; see baselines.json")
    return row["name"]


def selection_winner(ctx: RunContext, best: dict[str, Any], baselines: dict[str, dict[str, Any]]
                     ) -> tuple[str, MergePlan] | None:
    """The final pick's greedy-soup rule: the baseline (parent, uniform, tuned merge) whose selection
    score beats the best candidate's, if any; None when the candidate wins or there is no selection data."""
    if not ctx.cfg.selection:
        return None
    scored = {k: v["selection"] for k, v in baselines.items() if v.get("selection") is not None}
    if not scored:
        return None
    name = max(scored, key=lambda k: scored[k])
    if best.get("selection") is not None and best["selection"] >= scored[name]:
        return None
    log.warning("%s beats every candidate on the selection data (%.6g vs %.6g): it is the child",
                name, scored[name], best.get("selection") if best.get("selection") is not None else float("nan"))
    return name, baseline_plans(ctx, baselines)[name]


def data_roles(cfg: ParentsConfig) -> tuple[ParentsConfig, list[str]]:
    """The hold-out and overlap checks of :mod:`darwin.search.dataroles`, each said as a warning;
    returns the configuration to run and what was said."""
    cfg, note = with_holdout(cfg)
    notes = ([note] if note else []) + overlap_warnings(cfg)
    for n in notes:
        log.warning("%s", n)
    return cfg, notes


def evolve(config: ParentsConfig | dict[str, Any] | str | os.PathLike, out_dir: str | os.PathLike,
           options: EvolveOptions | None = None, fitness: Any = None) -> EvolveResult:
    """Search merges of the parents with CMA-ES (see the module doc; the user-facing signature is
    :func:`darwin.api.evolve`).

    Args:
        config: ``parents.yaml`` path, dict or :class:`ParentsConfig`.
        out_dir: run folder.
        options: how to run it (:class:`EvolveOptions`).
        fitness: a callable ``(model, tokenizer) -> float | Score`` replacing the configured
            fitness entries (they are still validated).

    Raises:
        RecipeError, CheckpointError, CompatibilityError, OutputExistsError, DarwinError.
    """
    opts = options or EvolveOptions()
    cfg, notes = data_roles(load_parents_config(config))
    ctx = replace(prepare(cfg, Path(out_dir).expanduser().resolve()), notes=tuple(notes))
    fit: dict[str, Any] = {"fitness": as_score_fn(fitness if fitness is not None else build_fitness(cfg.fitness))}
    for role in ("selection", "test"):
        if getattr(cfg, role):
            fit[role] = build_fitness(getattr(cfg, role), keep_documents=True)
    workers, address = _placement(cfg, opts)
    check_start(ctx)
    preflight(fit, str(ctx.checkpoints[ctx.breeder.a].path), ctx.fitness_dtype)  # one lm-eval item on parent A
    route_logs(fit, ctx.out / "lm_eval.log")  # written once the run folder exists
    evaluator = make_evaluator(ctx, fit, workers, address)  # Ray workers that cannot start fail before the folder
    try:
        prepare_run_folder(ctx.out, cfg, resume=opts.resume, force=opts.force)
        ctx = replace(ctx, r_mri=apply_priors(cfg, ctx.out, ctx.spec, ctx.breeder))
        return run_search(ctx, evaluator, opts)
    finally:
        evaluator.close()
