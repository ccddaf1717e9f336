"""The run's final outputs: ``best_genome.yaml``, ``recipe.yaml``, ``health.json``, ``constraints.json``
and ``child/`` (an HF folder with a model card and ``lineage.json``).

``recipe.yaml`` is a genome recipe (:mod:`darwin.genome.recipe`): ``darwin merge OUT/recipe.yaml``
and ``darwin.merge("OUT/recipe.yaml")`` rebuild the child bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from darwin.genome.spec import genome_ref
from darwin.io.writer import atomic_output_dir
from darwin.io.yamlfile import absolute_if_local
from darwin.kernels.masks import COUNTER
from darwin.plan.execute import execute
from darwin.plan.plan import MergePlan
from darwin.plan.run import write_card, write_child
from darwin.search.constraints import constraint_card, verify_child, window_text
from darwin.search.context import RunContext
from darwin.search.evaluator import Evaluator
from darwin.search.report import summary_table
from darwin.search.runfolder import write_json_atomic, write_text_atomic

CHILD_SHARD_BYTES = 5 * 10**9


@dataclass(frozen=True)
class ChildOutputs:
    """Where the child went and what was checked of it.

    Attributes:
        child_dir: ``OUT/child``.
        constraints: the report of :func:`darwin.search.constraints.verify_child` when the run has
            constraints (also in ``OUT/constraints.json``), else None.
    """

    child_dir: Path
    constraints: dict[str, Any] | None


def read_lineage(folder: Path) -> dict[str, Any]:
    """A parent's lineage (its ``lineage.json`` if darwin made it, else just its reference)."""
    p = Path(folder) / "lineage.json"
    if p.exists():
        return json.loads(p.read_text())
    return {"model": str(folder)}


def write_genome_files(ctx: RunContext, best: dict[str, Any]) -> MergePlan:
    """Write ``best_genome.yaml`` and ``recipe.yaml``; returns the best candidate's plan."""
    values = best["genes"]
    write_text_atomic(ctx.out / "best_genome.yaml", yaml.safe_dump(
        {"genome": ctx.spec.name, "fitness": best["fitness"], "components": best["components"],
         "generation": best["generation"], "values": values}, sort_keys=False))
    plan = ctx.plan_of(values)
    b = ctx.breeder
    recipe: dict[str, Any] = {"genome": genome_ref(ctx.spec), "parents": [absolute_if_local(p) for p in b.parents],
                              "base": absolute_if_local(b.base) if b.base else None, "values": values,
                              "mri": ctx.r_mri, "dtype": ctx.cfg.dtype, "seed": ctx.seed,
                              "mask_rng": COUNTER,
                              **{k: plan.recipe[k] for k in ("prior", "max_params") if k in plan.recipe}}
    write_text_atomic(ctx.out / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
    return plan


def child_health(ctx: RunContext, evaluator: Evaluator, plan: MergePlan) -> dict[str, Any]:
    """Health check of the child (merged into the resident model) against both parents (loaded from disk)."""
    from transformers import AutoModelForCausalLM

    from darwin.arch.mapper import num_layers
    from darwin.diagnosis.health import health_check
    from darwin.diagnosis.probe import load_probes

    evaluator.close()  # Ray workers release their parents before the driver loads its own
    resident = evaluator.resident()
    resident.load_plan(plan)
    if resident.tokenizer is None:  # tokenizer-free parents: no probe prompts to compare on
        return {"layers": [], "finite": all(bool(torch.isfinite(p).all()) for p in resident.model.parameters()),
                "flags": ["no tokenizer: layer-by-layer comparison skipped"], "threshold": None}
    dev, b = resident.device, ctx.breeder
    # transformers stubs type from_pretrained(...).to as a decorator wrapper (wants a model)
    pa = AutoModelForCausalLM.from_pretrained(ctx.checkpoints[b.a].path, dtype=resident.dtype).to(dev).eval()  # type: ignore[arg-type]
    pb = AutoModelForCausalLM.from_pretrained(ctx.checkpoints[b.b].path, dtype=resident.dtype).to(dev).eval()  # type: ignore[arg-type]
    prompts = [p for ps in load_probes(tuple(ctx.cfg.mri.probes)).values() for p in ps[:3]]
    n_layers = num_layers(plan.config)
    assert n_layers is not None  # the child of a layer-wise genome search has a layer count
    return health_check(resident.model, pa, pb, resident.tokenizer, prompts, n_layers, **b.health_map(plan))


def card_sections(ctx: RunContext, best: dict[str, Any] | None, health: dict[str, Any], summary: dict[str, Any]
                  ) -> tuple[list[str], dict[str, Any]]:
    """Model-card sections (the report's table, health, lineage) and the child's lineage."""
    lineage = {"model": "child", "method": f"darwin evolve ({ctx.spec.name})", "child": summary["child"],
               "fitness": next(r["search_fitness"] for r in summary["models"] if r["kind"] == "child"),
               "genes": best["genes"] if best and summary["child"] == "best candidate" else None,
               "parents": [read_lineage(ctx.checkpoints[r].path) for r in ctx.breeder.models]}
    notes = "".join(f"\n\n{n}." for n in summary["data_notes"])
    flags = health["flags"] or ["none"]
    sections = ["## Fitness (higher is better)\n\nsearch: what CMA-ES optimised; selection: picked the child; "
                "test: never read by any decision.\n\n" + summary_table(summary) + notes,
                "## Health check\n\n" + f"finite: {health['finite']}; flags: " + "; ".join(flags),
                "## Lineage\n\n```json\n" + json.dumps(lineage, indent=1) + "\n```"]
    return sections, lineage


def write_child_folder(ctx: RunContext, plan: MergePlan, sections: list[str], lineage: dict[str, Any]
                       ) -> ChildOutputs:
    """Merge ``plan`` from disk into ``OUT/child`` (atomically); with constraints, check the saved files
    first (:func:`darwin.search.constraints.verify_child`) and add the size section to the card.

    Raises:
        DarwinError: the saved child violates a constraint (it is not put in place).
    """
    c, report = ctx.cfg.search.constraints, None
    with atomic_output_dir(ctx.out / "child", force=True) as tmp:
        write_child(plan, execute(plan, ctx.checkpoints, device=ctx.cfg.device), tmp, ctx.checkpoints,
                    max_shard_bytes=CHILD_SHARD_BYTES, card_sections=sections)
        if c.max_params is not None or c.min_context is not None:
            report = verify_child(Path(tmp), c, window_text(ctx.cfg))
            write_json_atomic(ctx.out / "constraints.json", report)
            write_card(plan, Path(tmp), [constraint_card(report, ctx.checkpoints[ctx.breeder.a].path), *sections])
        (Path(tmp) / "lineage.json").write_text(json.dumps(lineage, indent=1))
    return ChildOutputs(ctx.out / "child", report)


def baseline_recipe(ctx: RunContext, name: str, baselines: dict[str, Any]) -> dict[str, Any]:
    """A plain mergekit recipe that rebuilds baseline ``name`` (a parent, the uniform 0.5, a tuned merge)."""
    from darwin.search.baselines import PairRefs, recipe_of_setting

    b = ctx.breeder
    a_ref, b_ref = absolute_if_local(b.parents[0]), absolute_if_local(b.parents[1])
    if name.startswith("tuned "):
        base = absolute_if_local(ctx.cfg.base) if ctx.cfg.base else None
        return recipe_of_setting(name.removeprefix("tuned "), baselines[name]["setting"],
                                 PairRefs(a_ref, b_ref, base, ctx.cfg.dtype, ctx.seed))
    if name in ("parent A", "parent B"):
        return {"merge_method": "passthrough", "dtype": ctx.cfg.dtype,
                "models": [{"model": a_ref if name == "parent A" else b_ref}]}
    return {"merge_method": "linear", "dtype": ctx.cfg.dtype,
            "models": [{"model": a_ref, "parameters": {"weight": 0.5}}, {"model": b_ref, "parameters": {"weight": 0.5}}]}


def write_outputs(ctx: RunContext, evaluator: Evaluator, best: dict[str, Any] | None, baselines: dict[str, Any],
                  winner: tuple[str, MergePlan] | None, summary: dict[str, Any]) -> ChildOutputs:
    """Everything a finished run writes besides its history and report (see module doc).

    ``winner``: a baseline (name, plan) that beat every candidate on the selection data (or the
    best uniform merge with ``--baselines-only``, where ``best`` is None); it is then the child, and
    ``recipe.yaml`` is its plain mergekit recipe (``best_genome.yaml`` still records the best
    candidate).
    """
    plan = write_genome_files(ctx, best) if best is not None else None
    if winner is not None:
        name, plan = winner
        why = "it beat every candidate on the selection data" if best is not None else "the best tuned uniform merge"
        write_text_atomic(ctx.out / "recipe.yaml", f"# {name}: {why}\n"
                          + yaml.safe_dump(baseline_recipe(ctx, name, baselines), sort_keys=False))
    assert plan is not None  # a run without a best candidate has a winner
    health = child_health(ctx, evaluator, plan)
    write_json_atomic(ctx.out / "health.json", health)
    sections, lineage = card_sections(ctx, best, health, summary)
    return write_child_folder(ctx, plan, sections, lineage)
