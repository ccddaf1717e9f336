"""Genome recipes: a saved genome that ``darwin merge`` replays into the same child, bit for bit.

``darwin evolve`` writes ``OUT/recipe.yaml`` in this format::

    genome: darwin14                 # built-in name or path to a genome YAML
    parents: [path/to/A, path/to/B]
    base: null                       # optional base model
    values: {global_ratio: 0.61, …}  # every gene's value
    mri: {model.layers.0.mlp.up_proj.weight: 0.47, …}   # optional r_MRI per tensor
    dtype: bfloat16
    seed: 0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from darwin.errors import RecipeError, describe_validation_error
from darwin.genome.breeder import make_breeder, mri_prior
from darwin.genome.spec import load_genome
from darwin.io.checkpoint import Checkpoint
from darwin.io.yamlfile import load_yaml_mapping
from darwin.plan.plan import MergePlan
from darwin.plan.planner import parse_dtype


class GenomeRecipe(BaseModel):
    """A genome applied to two parents (see module doc)."""

    model_config = ConfigDict(extra="forbid")
    genome: str
    parents: list[str]
    base: Optional[str] = None
    values: dict[str, float]
    mri: Optional[dict[str, float]] = None
    dtype: str = "float32"
    seed: int = 0
    prior: Optional[list[float]] = None       # golf: the per-layer MRI prior (ranks) used in the search
    max_params: Optional[int] = None          # golf: the parameter budget


def is_genome_recipe(data: Any) -> bool:
    """Whether a loaded YAML mapping is a genome recipe (has a ``genome`` key)."""
    return isinstance(data, dict) and "genome" in data


def load_genome_recipe(source: GenomeRecipe | dict[str, Any] | str | os.PathLike) -> GenomeRecipe:
    """Validate a genome recipe from a dict or YAML path.

    Raises:
        RecipeError: unreadable file or invalid content (naming the key).
    """
    if isinstance(source, GenomeRecipe):
        return source
    data, where = source, "genome recipe"
    if isinstance(source, (str, os.PathLike)):
        where = str(source)
        data = load_yaml_mapping(source, "genome recipe")
    try:
        rec = GenomeRecipe.model_validate(data)
    except ValidationError as e:
        raise describe_validation_error(where, "genome recipe", e) from None
    if not 1 <= len(rec.parents) <= 2:
        raise RecipeError(f"{where}: a genome recipe needs one or two parents, got {len(rec.parents)}")
    return rec


def plan_genome_recipe(source: GenomeRecipe | dict[str, Any] | str | os.PathLike
                       ) -> tuple[MergePlan, dict[str, Checkpoint]]:
    """Open the parents and decode the genome into a merge plan (no weights read)."""
    rec = load_genome_recipe(source)
    spec = load_genome(rec.genome)
    refs = rec.parents + ([rec.base] if rec.base else [])
    ckpts = {r: Checkpoint(r) for r in refs}
    breeder = make_breeder(spec, ckpts, rec.parents, rec.base, parse_dtype(rec.dtype), rec.max_params)
    if rec.prior is not None:
        if mri_prior(spec) != "layer":
            raise RecipeError(f"genome recipe: 'prior' is for the golf genome, not {spec.name!r}")
        breeder.set_prior_ranks(rec.prior)
    return breeder.decode(spec, rec.values, r_mri=rec.mri, seed=rec.seed), ckpts


def genome_recipe_plan(source: Any, *, seed: int | None = None) -> tuple[MergePlan, dict[str, Checkpoint]] | None:
    """Decode ``source`` if it is a genome recipe (a :class:`GenomeRecipe`, a dict or a YAML file with a
    ``genome:`` key); None for anything else (a mergekit recipe, handled by :func:`darwin.plan.run.merge`).

    Args:
        source: what ``darwin merge`` was given.
        seed: overrides the recipe's mask seed.

    Raises:
        RecipeError: an invalid genome recipe, naming the file.
    """
    import yaml

    data: Any = source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            data = yaml.safe_load(path.read_text()) if path.is_file() else None
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None  # the mergekit recipe loader reports it with the file name
    if not (isinstance(data, GenomeRecipe) or is_genome_recipe(data)):
        return None
    try:
        rec = load_genome_recipe(source)
        if seed is not None:
            rec = rec.model_copy(update={"seed": seed})
        return plan_genome_recipe(rec)
    except RecipeError as e:
        if isinstance(source, (str, os.PathLike)) and not str(e).startswith(str(source)):
            raise RecipeError(f"{source}: {e}") from None
        raise
