"""Genome recipes: a saved genome that ``darwin merge`` replays into the same child, bit for bit.

``darwin evolve`` writes ``OUT/recipe.yaml`` in this format::

    genome: darwin14                 # built-in name or path to a genome YAML
    parents: [path/to/A, path/to/B]
    base: null                       # optional base model
    values: {global_ratio: 0.61, …}  # every gene's value
    mri: {model.layers.0.mlp.up_proj.weight: 0.47, …}   # optional r_MRI per tensor
    dtype: bfloat16
    seed: 0
    mask_rng: counter                # random-mask convention (absent: cpu_generator, see below)

``mask_rng`` names how DARE masks are drawn (:mod:`darwin.kernels.masks`). Recipes written before it
existed have no such key and used ``cpu_generator``; they still replay bit for bit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from darwin.errors import RecipeError, describe_validation_error
from darwin.genome.breeder import make_breeder, mri_prior
from darwin.genome.spec import load_genome
from darwin.io.checkpoint import Checkpoint
from darwin.io.yamlfile import load_yaml_mapping, resolve_beside
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
    mask_rng: Literal["counter", "cpu_generator"] = "cpu_generator"  # absent in recipes older than the key

    @field_validator("mri", "prior")
    @classmethod
    def _fractions(cls, v: Any, info: Any) -> Any:
        values = v.values() if isinstance(v, dict) else v or []
        if any(not (math.isfinite(x) and 0.0 <= x <= 1.0) for x in values):
            raise ValueError(f"{info.field_name}: every value must be a number in [0, 1]")
        return v

    @field_validator("max_params")
    @classmethod
    def _budget(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v <= 0:
            raise ValueError("max_params must be > 0")
        return v


def _resolve_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative parents, base and genome file that exist next to the recipe resolve against its folder
    (as mergekit recipes do); anything else (hub ids, built-in genome names) stays as written."""
    out = dict(data)
    if isinstance(out.get("parents"), list):
        out["parents"] = [resolve_beside(p, folder) for p in out["parents"]]
    out["base"] = resolve_beside(out.get("base"), folder)
    if isinstance(out.get("genome"), str) and out["genome"].endswith((".yaml", ".yml")):
        out["genome"] = resolve_beside(out["genome"], folder)
    return out


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
        data = _resolve_paths(load_yaml_mapping(source, "genome recipe"), Path(source).resolve().parent)
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
    if (rec.prior is not None or rec.max_params is not None) and mri_prior(spec) != "layer":
        raise RecipeError(f"genome recipe: 'prior' and 'max_params' are for the golf genome, not {spec.name!r}")
    if rec.prior is not None:
        breeder.set_prior_ranks(rec.prior)
    plan = breeder.decode(spec, rec.values, r_mri=rec.mri, seed=rec.seed)
    for task in plan.tasks:  # decoders draw counter masks; an older recipe replays its own convention
        if "mask_rng" in task.shared:
            task.shared["mask_rng"] = rec.mask_rng
    return plan, ckpts


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
            try:
                rec = GenomeRecipe.model_validate({**rec.model_dump(), "seed": seed})
            except ValidationError as e:
                raise describe_validation_error("--seed", "genome recipe", e) from None
        return plan_genome_recipe(rec)
    except RecipeError as e:
        if isinstance(source, (str, os.PathLike)) and not str(e).startswith(str(source)):
            raise RecipeError(f"{source}: {e}") from None
        raise
