"""Where CMA-ES starts: the best tuned uniform merge the genome can express, or the genome's start.

A search that starts at the best tuned uniform merge and looks around it with a small step is a
local improvement on the strongest simple baseline (mergekit-evolve starts at uniform weights
with sigma0 1/6; evaluation protocol in docs/evolve.md). ``search.start``:

* ``auto`` (default): ``uniform`` when the run scores tuned baselines and the genome reproduces one
  of their families (:func:`darwin.genome.decode.uniform_families`), else ``genome``;
* ``uniform``: the tuned baseline of those families with the best *fitness* (the search's own
  objective; selection and test data are not read), decoded by
  :func:`darwin.genome.decode.uniform_start`; ``sigma0`` defaults to 0.25;
* ``genome``: every gene at its ``start`` value; ``sigma0`` defaults to 0.5.

Genes in ``search.fixed`` keep their fixed value either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from darwin.errors import RecipeError
from darwin.genome.breeder import PairBreeder
from darwin.genome.decode import check_values, uniform_families, uniform_start
from darwin.search.context import RunContext


@dataclass(frozen=True)
class Start:
    """The CMA-ES start.

    Attributes:
        x0: search coordinates, one per free gene.
        sigma0: initial step size (search coordinates, logit units).
        source: ``"genome"`` or the baseline's name (``"tuned linear"``…).
        values: every gene's value at the start.
    """

    x0: list[float]
    sigma0: float
    source: str
    values: dict[str, float]


def genome_start_values(ctx: RunContext) -> dict[str, float]:
    """Every gene at its ``start`` value, fixed genes at their fixed value."""
    return {g.name: float(ctx.cfg.search.fixed.get(g.name, g.start)) for g in ctx.genes}


def check_start_options(ctx: RunContext) -> None:
    """``search.fixed`` names genes of this genome, inside their bounds; ``start: uniform`` is possible.

    Raises:
        RecipeError: an unknown or out-of-bounds fixed gene, every gene fixed, or ``start: uniform``
            with a genome or run that cannot start there.
    """
    names = {g.name for g in ctx.genes}
    unknown = sorted(set(ctx.cfg.search.fixed) - names)
    if unknown:
        raise RecipeError(f"search.fixed: genome {ctx.spec.name!r} has no genes {unknown}")
    if not ctx.free_genes:
        raise RecipeError(f"search.fixed fixes every gene of genome {ctx.spec.name!r}: nothing to search")
    check_values(ctx.spec, genome_start_values(ctx), ctx.breeder.num_layers)
    if ctx.cfg.search.start == "uniform" and not _can_start_uniform(ctx):
        raise RecipeError(f"search.start: uniform needs tuned baselines (baselines.enabled, a pair genome) and a "
                          f"genome that reproduces one of them; genome {ctx.spec.name!r} "
                          f"(decoder {ctx.spec.decoder!r}) reproduces {list(uniform_families(ctx.spec)) or 'none'}")


def _can_start_uniform(ctx: RunContext) -> bool:
    return bool(ctx.cfg.baselines.enabled and isinstance(ctx.breeder, PairBreeder) and uniform_families(ctx.spec))


def search_start(ctx: RunContext, baselines: dict[str, dict[str, Any]]) -> Start:
    """The start of this run (see the module doc), from the scored ``baselines`` (``baselines.json``)."""
    if ctx.cfg.search.start != "genome" and _can_start_uniform(ctx):
        fams = uniform_families(ctx.spec)
        tuned = {k: v for k, v in baselines.items()
                 if k.removeprefix("tuned ") in fams and k.startswith("tuned ") and v.get("fitness") is not None}
        if tuned:
            name = max(tuned, key=lambda k: tuned[k]["fitness"])
            values = uniform_start(ctx.spec, name.removeprefix("tuned "), tuned[name]["setting"],
                                   ctx.breeder.num_layers)
            if values is not None:
                values.update({k: float(v) for k, v in ctx.cfg.search.fixed.items()})
                return Start(ctx.vector_of(values), ctx.cfg.search.initial_sigma(True), name, values)
    values = genome_start_values(ctx)
    return Start(ctx.vector_of(values), ctx.cfg.search.initial_sigma(False), "genome", values)
