"""The public functions: one per command, each what the command does (the CLI parses, calls, prints).

``darwin.merge``, ``darwin.evolve``, ``darwin.golf``, ``darwin.trim_vocab``, ``darwin.crossover``
and ``darwin.mri`` are these functions. They keep the flat keyword signatures a user types and pass
checked options down to :mod:`darwin.search`, :mod:`darwin.plan` and :mod:`darwin.diagnosis`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError

from darwin.errors import RecipeError, describe_validation_error
from darwin.plan.crossover import crossover
from darwin.plan.run import MergeResult
from darwin.plan.trim import TrimResult, trim_vocab

if TYPE_CHECKING:
    from darwin.search.evolve import EvolveResult
    from darwin.search.golf import WidthGolfResult

__all__ = ["merge", "evolve", "golf", "trim_vocab", "prune", "crossover", "mri", "MergeResult", "TrimResult"]


def merge(recipe: Any, out_dir: str | os.PathLike | None = None, *, force: bool = False,
          device: str | torch.device | None = "auto", max_shard_size: str | int = "5GB",
          batch_bytes: int | None = None, seed: int | None = None, dry_run: bool = False,
          progress: bool = True, intermediate_dir: str | os.PathLike | None = None) -> MergeResult:
    """Merge parents as a recipe says and write the child (``darwin merge``).

    Args:
        recipe: a mergekit recipe (YAML path, YAML text, dict or :class:`darwin.plan.recipe.Recipe`),
            or a genome recipe (``OUT/recipe.yaml`` of ``darwin evolve`` / ``darwin golf``, a dict
            with a ``genome`` key or a :class:`darwin.genome.recipe.GenomeRecipe`), which rebuilds
            the evolved child bit for bit.
        out_dir: child folder; refused if it exists unless ``force``. Not needed for a dry run.
        force: replace an existing ``out_dir`` (only once the new child is complete).
        device: kernel device; ``"auto"`` uses CUDA when available.
        max_shard_size: shard size limit (``"5GB"``, ``"500MB"``, bytes).
        batch_bytes: working-set budget of one batched kernel call, bytes (default by device).
        seed: overrides the recipe's mask seed (DARE/DELLA masks; a genome recipe's seed).
        dry_run: plan and check only; nothing is written.
        progress: show a rich progress bar.
        intermediate_dir: for a multi-stage recipe (several YAML documents, mergekit-multi style:
            :mod:`darwin.plan.stages`), where the named stages go (default ``<out_dir>-stages``).

    Returns:
        a :class:`darwin.plan.run.MergeResult` (of the final stage for a multi-stage recipe).

    Raises:
        RecipeError, CheckpointError, CompatibilityError, OutputExistsError: bad input, named.
    """
    from darwin.genome.recipe import genome_recipe_plan
    from darwin.plan.run import merge as run_merge
    from darwin.plan.run import plan_recipe
    from darwin.plan.stages import read_stages, run_stages

    if out_dir is None and not dry_run:
        raise RecipeError("give an output folder (out_dir), or dry_run=True")
    stages = read_stages(recipe) if isinstance(recipe, (str, os.PathLike)) and _is_file(recipe) else None
    if stages is not None:
        kw: dict[str, Any] = dict(device=device, max_shard_size=max_shard_size, batch_bytes=batch_bytes, seed=seed,
                                  progress=progress)
        if dry_run:  # plan the stages whose inputs exist; a later stage needs the earlier ones merged
            return run_merge(stages[0].recipe, None, dry_run=True, **kw)
        assert out_dir is not None  # refused above
        out = Path(out_dir).expanduser()
        result, final = run_stages(stages, out, intermediate_dir=Path(intermediate_dir) if intermediate_dir else None,
                                   force=force, merge=lambda r, f, frc: run_merge(r, f, force=frc, **kw))
        return result if result is not None else MergeResult(plan_recipe(final)[0], out.resolve(), 0)
    planned = genome_recipe_plan(recipe, seed=seed)
    return run_merge(planned if planned is not None else recipe, out_dir, force=force, device=device,
                     max_shard_size=max_shard_size, batch_bytes=batch_bytes, seed=seed, dry_run=dry_run,
                     progress=progress)


def prune(model: str | os.PathLike, out_dir: str | os.PathLike, *, calibration: Sequence[str | os.PathLike],
          ffn: int | None = None, groups: int | None = None, max_params: int | str | None = None,
          score: str = "second_moment", refit: bool = True, ridge: float = 1e-2, tokens: int = 32768,
          window: int = 512, multiple: int = 1, sequential: bool = False, device: str = "auto", force: bool = False,
          progress: bool = True) -> Any:
    """Cut a llama-family model to uniform FFN / attention widths with least-squares re-fits
    (``darwin prune``; :mod:`darwin.search.prune`).

    Args:
        model: folder or hub id.
        out_dir: child folder.
        calibration: text files or folders for the statistics (not the text you evaluate on).
        ffn: kept FFN neurons per layer (None: the widest under ``max_params``).
        groups: kept GQA groups (key/value heads with their query heads) per layer (None: all).
        max_params: budget (``100M`` style or an int), used when ``ffn`` is None.
        score: ``second_moment``, ``flap``, ``leverage``, ``obs`` or ``magnitude``.
        refit: least-squares re-fit of ``down_proj``/``o_proj`` (False: plain pruning).
        ridge, tokens, window, multiple, sequential, device: see :class:`darwin.search.prune.PruneRequest`.
        force: replace an existing ``out_dir``.
        progress: rich progress bar.

    Returns:
        a :class:`darwin.search.prune.PruneResult`.

    Raises:
        RecipeError, CheckpointError, CompatibilityError, OutputExistsError: bad input, named.
    """
    from darwin.search.config import parse_count
    from darwin.search.prune import PruneRequest

    def _count(v: int | str | None) -> int | None:
        try:
            return parse_count(v, "max_params")
        except ValueError as e:
            raise RecipeError(f"darwin prune: {e}") from None

    from darwin.search.prune import prune as run_prune

    _out_dir(out_dir, "prune")
    fields = {"model": str(model), "calibration": _paths(calibration, "calibration") or [], "ffn": ffn, "groups": groups,
              "max_params": _count(max_params), "score": score,
              "refit": refit, "ridge": ridge, "tokens": tokens, "window": window, "multiple": multiple,
              "sequential": sequential, "device": device}
    try:
        req = PruneRequest.model_validate(fields)
    except ValidationError as e:
        raise describe_validation_error("darwin prune", "options", e) from None
    return run_prune(req, out_dir, force=force, progress=progress)


def _is_file(recipe: str | os.PathLike) -> bool:
    text = os.fspath(recipe)
    return "\n" not in text and Path(text).expanduser().is_file()


def evolve(config: Any, out_dir: str | os.PathLike, *, resume: bool = False, force: bool = False,
           fitness: Any = None, progress: bool = True, write_outputs: bool = True, workers: int | None = None,
           address: str | None = None, baselines_only: bool = False) -> EvolveResult:
    """Breed a child with CMA-ES (``darwin evolve``; the steps: :mod:`darwin.search.evolve`).

    Args:
        config: ``parents.yaml`` path, dict or :class:`darwin.search.config.ParentsConfig`.
        out_dir: run folder.
        resume: continue a killed run in ``out_dir`` (same configuration required).
        force: restart from scratch if ``out_dir`` holds a previous run.
        fitness: a callable ``(model, tokenizer) -> float | Score`` replacing the configured
            fitness entries (they are still validated).
        progress: rich progress bar.
        write_outputs: write the child, recipe, health check (off for quick experiments).
        workers: Ray actors scoring candidates in parallel (overrides ``search.workers``).
        address: Ray cluster to join (overrides ``search.address``).
        baselines_only: no search: score the tuned uniform merges and write the best (on the
            selection data, else the fitness) as the child, with a plain mergekit ``recipe.yaml``.

    Returns:
        a :class:`darwin.search.evolve.EvolveResult`.

    Raises:
        RecipeError, CheckpointError, CompatibilityError, OutputExistsError, DarwinError.
    """
    from darwin.search.evolve import EvolveOptions
    from darwin.search.evolve import evolve as run_evolve

    opts = EvolveOptions(resume=resume, force=force, progress=progress, write_outputs=write_outputs,
                         workers=workers, address=address, baselines_only=baselines_only)
    return run_evolve(config, out_dir, opts, fitness)


def golf(models: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
         max_params: int | str = "100M", min_context: int = 1028, text: Sequence[str | os.PathLike] | None = None,
         fitness: list[dict[str, Any]] | None = None, population: int = 8, generations: int = 6, seed: int = 0,
         trim_corpus: Sequence[str | os.PathLike] | None = None, device: str = "auto", resume: bool = False,
         force: bool = False, progress: bool = True, method: str = "width",
         calibration: Sequence[str | os.PathLike] | None = None, score: str = "second_moment",
         sequential: bool = False, tokens: int = 32768) -> EvolveResult | WidthGolfResult:
    """Cut one model (or two of one family) to a parameter budget without training (``darwin golf``).

    ``method="width"`` (the default, best measured) prunes one model's FFN and attention widths
    with least-squares re-fits; ``method="depth"`` evolves which layers to keep, drop or collapse.

    Args:
        models: one parent, or two of one family (folders or hub ids).
        out_dir: run folder; the child is ``out_dir/child``.
        max_params: budget (tied embeddings counted once): ``100M``, ``99_500_000`` …
        min_context: minimum context window, checked on the saved child.
        text: files or folders of the bits-per-byte fitness (default: the shipped probe prompts).
        fitness: ``fitness:`` entries (``parents.yaml`` schema) replacing that fitness.
        population, generations, seed: CMA-ES budget and seed.
        trim_corpus: vocabulary trimming (off by default): first keep only the tokens these texts
            use, into ``<out_dir>-trimmed-<i>``.
        device: search device.
        resume, force, progress: as for :func:`evolve`.
        method: ``width`` or ``depth``.
        calibration: width: the statistics text (default: ``trim_corpus``, else ``text``, else
            the shipped probe prompts); never the text you evaluate on.
        score, sequential, tokens: width: neuron score, layer-by-layer re-fits, calibration tokens.

    Returns:
        width: a :class:`darwin.search.golf.WidthGolfResult`; depth: a
        :class:`darwin.search.evolve.EvolveResult` (``constraints``: the saved child measured).

    Raises:
        RecipeError, CheckpointError, CompatibilityError, OutputExistsError, DarwinError.
    """
    from darwin.search.evolve import EvolveOptions
    from darwin.search.golf import GolfRequest
    from darwin.search.golf import golf as run_golf

    _out_dir(out_dir, "golf")
    fields = {"models": _paths(models, "models") or [], "max_params": max_params, "min_context": min_context,
              "text": _paths(text, "text"), "fitness": fitness, "population": population,
              "generations": generations, "seed": seed, "device": device,
              "trim_corpus": _paths(trim_corpus, "trim_corpus"), "method": method,
              "calibration": _paths(calibration, "calibration"),
              "score": score, "sequential": sequential, "tokens": tokens}
    try:
        req = GolfRequest.model_validate(fields)
    except ValidationError as e:
        raise describe_validation_error("golf", "golf options", e) from None
    return run_golf(req, Path(out_dir), EvolveOptions(resume=resume, force=force, progress=progress))


def _paths(x: Any, what: str) -> list[str] | None:
    """One path or a sequence of them → a list of strings (None or empty: None).

    Raises:
        RecipeError: ``x`` is neither.
    """
    if x is None or (isinstance(x, (list, tuple)) and not x):
        return None
    if isinstance(x, (str, os.PathLike)):
        return [str(x)]
    if isinstance(x, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in x):
        return [str(p) for p in x]
    raise RecipeError(f"{what}: give a path or a list of paths, got {x!r}")


def _out_dir(out_dir: Any, command: str) -> None:
    """Refuse a missing or non-path output folder (named)."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise RecipeError(f"darwin {command}: out_dir: give the output folder (a path), got {out_dir!r}")


def mri(model: str, out_dir: str | os.PathLike | None = None, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """MRI scan of a model or pair (``darwin mri``; arguments: :func:`darwin.diagnosis.run.run_mri`).

    Returns:
        (the ``mri.json`` document, the scans by label ``A``/``B``).
    """
    from darwin.diagnosis.run import run_mri

    return run_mri(model, out_dir, **kwargs)
