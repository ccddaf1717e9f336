"""``darwin evolve``: CMA-ES over genomes, candidates merged and scored in memory.

Run folder ``OUT/``:

* ``run.json``: the validated configuration (a resumed run must match it);
* ``mri.json``, ``mri.png``: the parents' MRI (when enabled);
* ``baselines.json``: fitness of parent A, parent B and the uniform 0.5 linear merge;
* ``history.jsonl``: one line per generation: every candidate's vector, genes, fitness per
  component, error if it failed, seconds; the step size; the best so far;
* ``fitness.png``: fitness per generation;
* ``best_genome.yaml``, ``recipe.yaml`` (``darwin merge recipe.yaml -o X`` rebuilds the child bit
  for bit), ``health.json``, ``child/`` (HF folder with model card and ``lineage.json``).

Resume: the CMA-ES state is rebuilt by replaying ``history.jsonl`` through ask/tell with the
same seed (no pickles). The numpy random stream that CMA-ES draws from is saved and restored
around every ``ask`` so that fitness code using numpy cannot perturb it; a resumed run therefore
continues exactly where the killed one stopped and ends with the same result as an unbroken run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from darwin.errors import DarwinError, OutputExistsError, RecipeError
from darwin.genome.breeder import Breeder, make_breeder
from darwin.genome.decode import PairLayout, check_values, start_vector, vector_to_values
from darwin.genome.spec import GenomeSpec, genome_ref, load_genome
from darwin.io.checkpoint import Checkpoint
from darwin.io.writer import atomic_output_dir, check_output_dir
from darwin.plan.execute import execute, resolve_device
from darwin.plan.plan import MergePlan
from darwin.plan.planner import parse_dtype
from darwin.plan.run import write_card, write_child
from darwin.search.config import ParentsConfig, load_parents_config
from darwin.search.constraints import check_context, constraint_card, constraint_violation, verify_child
from darwin.search.plot import plot_history
from darwin.search.evaluator import Evaluator, LocalEvaluator
from darwin.search.resident import ResidentSpec, check_plan_shapes
from darwin.search.scoring import build_fitness

log = logging.getLogger("darwin.evolve")
FAILED_LOSS = 1e30  # CMA-ES minimises; a failed candidate ranks last (CMA-ES is rank-based)
INFEASIBLE_LOSS = 1e20  # + violation: below every feasible candidate, above every failed one


@dataclass
class EvolveResult:
    """Outcome of a run.

    Attributes:
        out_dir: the run folder.
        best: the best candidate record (vector, genes, fitness, components).
        baselines: name → fitness of parent A, parent B and the uniform merge.
        history: all generation records.
        child_dir: the written child folder (None when ``write_outputs=False``).
    """

    out_dir: Path
    best: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    history: list[dict[str, Any]]
    child_dir: Path | None


# ----------------------------------------------------------------------------- run-folder files
def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_history(path: Path) -> list[dict[str, Any]]:
    """Records of ``history.jsonl``; a torn last line (killed mid-write) is dropped."""
    if not path.exists():
        return []
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise DarwinError(f"{path}: line {i + 1} is corrupt") from None
    return out


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _snapshot(cfg: ParentsConfig) -> dict[str, Any]:
    """The configuration a resumed run must match (where candidates are scored does not count)."""
    snap = json.loads(cfg.model_dump_json())
    for key in ("workers", "address"):
        snap["search"].pop(key, None)
    return snap


def _prepare_out(out: Path, cfg: ParentsConfig, resume: bool, force: bool) -> None:
    run_file = out / "run.json"
    snapshot = _snapshot(cfg)
    if resume and force:
        raise DarwinError("choose one of --resume (continue the run) and --force (start it again)")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: is a file, not a run folder")
    if resume:
        if not run_file.exists():
            raise DarwinError(f"{out}: nothing to resume (no run.json)")
        old = json.loads(run_file.read_text())
        for key in ("workers", "address"):
            old.get("search", {}).pop(key, None)
        if old != snapshot:
            keys = sorted(k for k in set(old) | set(snapshot) if old.get(k) != snapshot.get(k))
            raise RecipeError(f"{out}/run.json: the configuration differs from the one this run started with "
                              f"(keys {keys}); resume needs the same parents.yaml")
        return
    check_output_dir(out, force=True)  # refuses a path under a file
    if out.exists() and any(out.iterdir()):
        if not force:
            raise OutputExistsError(f"{out}: run folder exists; pass --resume to continue it or --force to restart")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(run_file, json.dumps(snapshot, indent=2))


# ----------------------------------------------------------------------------- MRI
def _mri_ratios(cfg: ParentsConfig, out: Path, layout: PairLayout, device: str) -> dict[str, float] | None:
    if not cfg.mri.enabled:
        return None
    mri_file = out / "mri.json"
    if mri_file.exists():
        return json.loads(mri_file.read_text())["r_mri"]
    from darwin.mri.report import heatmap, mri_document
    from darwin.mri.run import pair_r_mri
    from darwin.mri.scan import scan_model

    fams = tuple(cfg.mri.probes)
    dev = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    scans = {"A": scan_model(layout.a, families=fams, device=dev), "B": scan_model(layout.b, families=fams, device=dev)}
    r = pair_r_mri(scans["A"], scans["B"], cfg.mri.weights.static, cfg.mri.weights.probe)
    doc = mri_document(scans, r, cfg.mri.weights.static, cfg.mri.weights.probe)
    _write_text_atomic(mri_file, json.dumps(doc, indent=1))
    heatmap(scans, out / "mri.png")
    return r


def _layer_prior(cfg: ParentsConfig, out: Path, ref: str, device: str) -> list[float]:
    """Per-layer Block Influence of ``ref`` on the probe prompts (cached in ``OUT/layer_prior.json``)."""
    path = out / "layer_prior.json"
    if path.exists():
        return json.loads(path.read_text())["block_influence"]
    from darwin.mri.scan import scan_model

    dev = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    scan = scan_model(ref, families=tuple(cfg.mri.probes), device=dev)
    bi = list(scan.probe["bi"]["overall"])
    _write_text_atomic(path, json.dumps({"model": ref, "block_influence": bi,
                                         "source": "MRI probe, Block Influence 1 − cos(h_in, h_out)"}, indent=1))
    return bi


# ----------------------------------------------------------------------------- the search
class _Search:
    """CMA-ES with a protected numpy random stream (see module doc)."""

    def __init__(self, x0: list[float], sigma0: float, popsize: int, seed: int):
        import cma

        saved = np.random.get_state()
        self.es = cma.CMAEvolutionStrategy(x0, sigma0, {"popsize": popsize, "seed": seed + 1, "verbose": -9,
                                                        "tolfun": 0, "tolx": 0, "tolfunhist": 0,
                                                        "tolstagnation": 10**9, "tolflatfitness": 10**9})
        self.rng = np.random.get_state()
        np.random.set_state(saved)

    def ask(self) -> list[list[float]]:
        saved = np.random.get_state()
        np.random.set_state(self.rng)
        xs = self.es.ask()
        self.rng = np.random.get_state()
        np.random.set_state(saved)
        return [list(map(float, x)) for x in xs]

    def tell(self, xs: list[list[float]], cands: list[dict[str, Any]]) -> None:
        losses = [-c["fitness"] if c["fitness"] is not None else
                  INFEASIBLE_LOSS * (1 + c["violation"]) if c.get("violation") else FAILED_LOSS for c in cands]
        saved = np.random.get_state()
        np.random.set_state(self.rng)
        self.es.tell([np.asarray(x) for x in xs], losses)
        self.rng = np.random.get_state()
        np.random.set_state(saved)


def evolve(config: ParentsConfig | dict[str, Any] | str | os.PathLike, out_dir: str | os.PathLike, *,
           resume: bool = False, force: bool = False, fitness=None, progress: bool = True,
           write_outputs: bool = True, workers: int | None = None, address: str | None = None) -> EvolveResult:
    """Search merges of two parents with CMA-ES (Python API of ``darwin evolve``).

    Args:
        config: ``parents.yaml`` path, dict or :class:`ParentsConfig`.
        out_dir: run folder (see module doc).
        resume: continue a killed run in ``out_dir`` (same configuration required).
        force: restart from scratch if ``out_dir`` holds a previous run.
        fitness: a callable ``(model, tokenizer) -> float | Score`` replacing the configured
            fitness entries (they are still validated).
        progress: rich progress bar.
        write_outputs: write the child, recipe, health check (off for quick experiments).
        workers: Ray actors scoring candidates in parallel (overrides ``search.workers``; 1 and no
            address: in this process).
        address: Ray cluster to join (overrides ``search.address``; see
            :class:`darwin.search.ray_pool.RayEvaluator`).

    Returns:
        an :class:`EvolveResult`.

    Raises:
        RecipeError, CheckpointError, CompatibilityError, OutputExistsError, DarwinError.
    """
    cfg = load_parents_config(config)
    out = Path(out_dir).expanduser().resolve()
    # everything that can fail on bad input is checked before the run folder is touched
    dtype = parse_dtype(cfg.dtype, "dtype")
    resolve_device(cfg.device)
    refs = cfg.parents + ([cfg.base] if cfg.base else [])
    ckpts = {r: Checkpoint(r) for r in refs}
    spec = load_genome(cfg.genome)
    breeder = make_breeder(spec, ckpts, cfg.parents, cfg.base, dtype, cfg.search.constraints.max_params)
    genes = spec.expand(breeder.num_layers)
    check_values(spec, {g.name: g.start for g in genes}, breeder.num_layers)
    fit = _as_score_fn(fitness if fitness is not None else build_fitness(cfg.fitness))
    workers = workers if workers is not None else cfg.search.workers
    address = address if address is not None else cfg.search.address
    if workers < 1:
        raise DarwinError(f"workers must be >= 1, got {workers}")
    if workers > 1 or address:
        from darwin.search.ray_pool import require_ray

        require_ray()
    # decode the start point and the baselines once now: a pair this genome cannot breed, or a
    # constraint no candidate can meet, fails here, before the run folder exists
    seed = cfg.search.seed
    start = breeder.decode(spec, vector_to_values(spec, start_vector(spec, breeder.num_layers), breeder.num_layers),
                           r_mri=None, seed=seed)
    check_plan_shapes(start)
    breeder.baselines()
    check_context(start, cfg.search.constraints)
    _prepare_out(out, cfg, resume, force)
    if cfg.mri.enabled and breeder.mri_prior is None:
        log.info("genome %s breeds parents of different families: the MRI prior is not used", spec.name)
    r_mri = _mri_ratios(cfg, out, breeder.layout, cfg.device) if breeder.mri_prior == "tensor" else None
    if breeder.mri_prior == "layer":  # golf: Block Influence of parent A is the depth prior
        breeder.set_prior(_layer_prior(cfg, out, breeder.a, cfg.device))
    rspec = ResidentSpec({r: str(ckpts[r].path) for r in refs}, breeder.a, dtype, cfg.device, breeder.needed())

    def plan_of(x: list[float]) -> tuple[dict[str, float], MergePlan]:
        values = vector_to_values(spec, x, breeder.num_layers)
        return values, breeder.decode(spec, values, r_mri=r_mri, seed=seed)

    evaluator = _make_evaluator(cfg, rspec, fit, workers, address)
    try:
        return _run(cfg, out, spec, breeder, ckpts, evaluator, plan_of, r_mri, seed, progress, write_outputs)
    finally:
        evaluator.close()


def _make_evaluator(cfg: ParentsConfig, rspec: ResidentSpec, fit, workers: int, address: str | None) -> Evaluator:
    if workers == 1 and not address:
        return LocalEvaluator(rspec, fit)
    from darwin.search.ray_pool import RayEvaluator

    return RayEvaluator(rspec, fit, workers, address)


def _run(cfg: ParentsConfig, out: Path, spec: GenomeSpec, breeder: Breeder, ckpts, evaluator: Evaluator,
         plan_of, r_mri, seed: int, progress: bool, write_outputs: bool) -> EvolveResult:
    genes = spec.expand(breeder.num_layers)
    base_file = out / "baselines.json"
    if base_file.exists():
        baselines = json.loads(base_file.read_text())
    else:
        plans = breeder.baselines()
        baselines = dict(zip(plans, evaluator.run(list(plans.values()))))
        _write_text_atomic(base_file, json.dumps(baselines, indent=2))

    popsize = cfg.search.popsize(len(genes))
    n_gen = cfg.search.num_generations(len(genes))
    search = _Search(start_vector(spec, breeder.num_layers), cfg.search.sigma0, popsize, seed)
    hist_file = out / "history.jsonl"
    history = read_history(hist_file)
    if history and hist_file.read_text().count("\n") != len(history):  # drop a torn last line
        _write_text_atomic(hist_file, "".join(json.dumps(h) + "\n" for h in history))
    for rec in history:  # replay: rebuild the exact CMA-ES state
        xs = search.ask()
        stored = [c["x"] for c in rec["candidates"]]
        if len(xs) != len(stored) or not np.allclose(xs, stored, rtol=0, atol=1e-12):
            raise DarwinError(f"{hist_file}: generation {rec['generation']} does not replay with this seed "
                              "and configuration")
        search.tell(stored, rec["candidates"])

    best = _best(history)
    t_start = time.perf_counter()
    with Progress(TextColumn("[bold]gen {task.fields[gen]}/{task.fields[n_gen]}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("best {task.fields[best]}"), TimeRemainingColumn(),
                  TextColumn("[dim]{task.fields[last]}"),
                  disable=not progress, transient=False) as bar:
        job = bar.add_task("evolve", total=n_gen * popsize, completed=len(history) * popsize, gen=len(history),
                           n_gen=n_gen, best=_fmt(best), last="")
        for g in range(len(history), n_gen):
            xs = search.ask()
            decoded = [plan_of(x) for x in xs]

            def done(i: int, rec: dict[str, Any], g: int = g) -> None:
                if rec["error"]:
                    log.warning("candidate failed (%s) with genome %s", rec["error"], decoded[i][0])
                bar.update(job, advance=1, gen=g + 1, last=f"{rec['worker']} {rec['seconds']:.1f}s")

            checks = [constraint_violation(plan, cfg.search.constraints) for _, plan in decoded]
            feasible = [i for i, (v, _) in enumerate(checks) if v == 0]
            scored = dict(zip(feasible, evaluator.run([decoded[i][1] for i in feasible],
                                                      lambda k, rec: done(feasible[k], rec))))
            cands = []
            for i, (x, (values, plan)) in enumerate(zip(xs, decoded)):
                rec = scored.get(i) or {"fitness": None, "components": {}, "error": checks[i][1], "seconds": 0.0,
                                        "worker": None, "violation": round(checks[i][0], 6)}
                if i not in scored:  # never evaluated
                    bar.update(job, advance=1, gen=g + 1, last="infeasible")
                cands.append({"x": x, "genes": values, "parameters": plan.num_parameters, **rec})
            search.tell(xs, cands)
            record = {"generation": g, "candidates": cands, "sigma": float(search.es.sigma),
                      "elapsed_s": round(time.perf_counter() - t_start, 3)}
            gbest = _best([record])
            if gbest and (best is None or gbest["fitness"] > best["fitness"]):
                best = gbest
            record["best_so_far"] = best["fitness"] if best else None
            _append_jsonl(hist_file, record)
            history.append(record)
            plot_history(history, {k: v["fitness"] for k, v in baselines.items()}, out / "fitness.png")
            bar.update(job, best=_fmt(best))
    if best is None:
        errors = [c["error"] for h in history for c in h["candidates"] if c.get("error")]
        first = f" (first: {errors[0]})" if errors else ""
        raise DarwinError(f"every candidate failed or violated a constraint{first}; see {hist_file} for all errors")
    child_dir = None
    if write_outputs:
        child_dir = _write_outputs(out, cfg, spec, breeder, ckpts, evaluator, best, baselines, r_mri, seed)
    return EvolveResult(out, best, baselines, history, child_dir)


def _as_score_fn(fn):
    from darwin.fitness.base import CombinedFitness, Component, Score

    if isinstance(fn, CombinedFitness):
        return fn

    def wrapped(model, tok):
        v = fn(model, tok)
        return v if isinstance(v, Score) else CombinedFitness([Component("custom", lambda m, t: v)])(model, tok)
    return wrapped


def _best(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    best = None
    for rec in history:
        for c in rec["candidates"]:
            if c.get("fitness") is not None and (best is None or c["fitness"] > best["fitness"]):
                best = {**c, "generation": rec["generation"]}
    return best


def _fmt(best: dict[str, Any] | None) -> str:
    return "-" if best is None else f"{best['fitness']:.5g}"


def read_lineage(folder: Path) -> dict[str, Any]:
    """A parent's lineage (its ``lineage.json`` if darwin made it, else just its reference)."""
    p = Path(folder) / "lineage.json"
    if p.exists():
        return json.loads(p.read_text())
    return {"model": str(folder)}


def _write_outputs(out: Path, cfg: ParentsConfig, spec: GenomeSpec, breeder: Breeder, ckpts, evaluator: Evaluator,
                   best: dict[str, Any], baselines: dict[str, Any], r_mri, seed: int) -> Path:
    from darwin.mri.health import health_check
    from darwin.mri.probe import load_probes

    values = best["genes"]
    _write_text_atomic(out / "best_genome.yaml", yaml.safe_dump(
        {"genome": spec.name, "fitness": best["fitness"], "components": best["components"],
         "generation": best["generation"], "values": values}, sort_keys=False))
    plan = breeder.decode(spec, values, r_mri=r_mri, seed=seed)
    recipe = {"genome": genome_ref(spec), "parents": breeder.models[:2] if breeder.base is None else
              [breeder.a, breeder.b], "base": breeder.base, "values": values, "mri": r_mri, "dtype": cfg.dtype,
              "seed": seed, **{k: plan.recipe[k] for k in ("prior", "max_params") if k in plan.recipe}}
    _write_text_atomic(out / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))

    # health check: the resident model holds the child; parents load from disk
    from transformers import AutoModelForCausalLM

    evaluator.close()  # Ray workers release their parents before the driver loads its own
    resident = evaluator.resident()
    resident.load_plan(plan)
    dev = resident.device
    if resident.tokenizer is None:  # tokenizer-free parents: no probe prompts to compare on
        health = {"layers": [], "finite": all(bool(torch.isfinite(p).all()) for p in resident.model.parameters()),
                  "flags": ["no tokenizer: layer-by-layer comparison skipped"], "threshold": None}
    else:
        pa = AutoModelForCausalLM.from_pretrained(ckpts[breeder.a].path, dtype=resident.dtype).to(dev).eval()
        pb = AutoModelForCausalLM.from_pretrained(ckpts[breeder.b].path, dtype=resident.dtype).to(dev).eval()
        prompts = [p for ps in load_probes(tuple(cfg.mri.probes)).values() for p in ps[:3]]
        from darwin.arch.mapper import num_layers

        health = health_check(resident.model, pa, pb, resident.tokenizer, prompts, num_layers(plan.config),
                              **breeder.health_map(plan))
        del pa, pb
    _write_text_atomic(out / "health.json", json.dumps(health, indent=2))

    lineage = {"model": "child", "method": f"darwin evolve ({spec.name})", "fitness": best["fitness"],
               "genes": values, "parents": [read_lineage(ckpts[r].path) for r in breeder.models]}
    rows = [f"| {k} | {v['fitness']:.5g} |" if v["fitness"] is not None else f"| {k} | failed |"
            for k, v in baselines.items()]
    table = "\n".join(["## Fitness", "", "| model | fitness |", "|---|---|", *rows,
                       f"| **evolved child** | **{best['fitness']:.5g}** |"])
    flags = health["flags"] or ["none"]
    sections = [table,
                "## Health check\n\n" + f"finite: {health['finite']}; flags: " + "; ".join(flags),
                "## Lineage\n\n```json\n" + json.dumps(lineage, indent=1) + "\n```"]
    c = cfg.search.constraints
    with atomic_output_dir(out / "child", force=True) as tmp:
        write_child(plan, execute(plan, ckpts, device=cfg.device), tmp, ckpts, max_shard_bytes=5 * 10**9,
                    card_sections=sections)
        if c.max_params is not None or c.min_context is not None:  # checked from the saved files
            report = verify_child(Path(tmp), c, cfg)
            _write_text_atomic(out / "constraints.json", json.dumps(report, indent=2))
            write_card(plan, Path(tmp), [constraint_card(report, ckpts[breeder.a].path), *sections])
        (Path(tmp) / "lineage.json").write_text(json.dumps(lineage, indent=1))
    return out / "child"
    with atomic_output_dir(out / "child", force=True) as tmp:
        write_child(plan, execute(plan, ckpts, device=cfg.device), tmp, ckpts, max_shard_bytes=5 * 10**9,
                    card_sections=sections)
        (Path(tmp) / "lineage.json").write_text(json.dumps(lineage, indent=1))
    return out / "child"
