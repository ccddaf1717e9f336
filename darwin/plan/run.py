"""Run a recipe end to end: open parents, plan, merge batch by batch, write the child atomically."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from darwin.arch.config import dtype_name
from darwin.errors import DarwinWarning, RecipeError
from darwin.io.card import write_model_card
from darwin.io.checkpoint import Checkpoint
from darwin.io.extras import copy_generation_config, copy_tokenizer_files, write_chat_template
from darwin.io.lora import open_checkpoint
from darwin.io.writer import ShardedWriter, atomic_output_dir, check_output_dir, parse_size, refuse_input_overlap
from darwin.plan.execute import default_batch_bytes, execute, peak_bytes_estimate, resolve_device
from darwin.plan.plan import MergePlan
from darwin.plan.planner import build_plan
from darwin.plan.recipe import Recipe, load_recipe
from darwin.plan.vocab_plan import as_parent


@dataclass
class MergeResult:
    """What :func:`merge` did.

    Attributes:
        plan: the executed (or, for a dry run, planned) merge.
        out_dir: the child folder (None for a dry run).
        peak_estimate_bytes: estimated peak working memory of the merge (batch + one shard).
    """

    plan: MergePlan
    out_dir: Path | None
    peak_estimate_bytes: int


def open_parents(refs: list[str], *, allow_bin: bool = True) -> dict[str, Checkpoint]:
    """Open every referenced parent lazily (headers only); ``base+adapter`` merges a LoRA adapter in
    as its tensors are read (:mod:`darwin.io.lora`).

    Raises:
        CheckpointError: naming the first parent that is missing or unreadable.
    """
    return {ref: open_checkpoint(ref, allow_bin=allow_bin) for ref in refs}


def plan_recipe(recipe: Recipe | dict[str, Any] | str | os.PathLike, *, seed: int | None = None
                ) -> tuple[MergePlan, dict[str, Checkpoint]]:
    """Load a recipe, open its parents and build the plan (no weights read).

    Args:
        recipe: path, YAML text, dict or :class:`Recipe`.
        seed: overrides the recipe's ``seed`` for random masks.
    """
    rec = load_recipe(recipe)
    if seed is not None:
        rec = rec.model_copy(update={"seed": seed})
    ckpts = open_parents(rec.referenced_models())
    return build_plan(rec, ckpts), ckpts


def write_child(plan: MergePlan, tensors, folder: Path, checkpoints: dict[str, Checkpoint], *,
                max_shard_bytes: int, card_sections: list[str] | None = None) -> None:
    """Write weights, config, tokenizer, generation config, chat template and card into ``folder``.

    Args:
        plan: the merge plan (config, dtype, tokenizer source).
        tensors: iterable of ``(name, tensor)``.
        folder: destination (a temporary folder from :func:`atomic_output_dir`).
        checkpoints: opened parents (for tokenizer and generation config files).
        max_shard_bytes: shard size limit.
        card_sections: extra markdown sections for the model card.
    """
    writer = ShardedWriter(folder, max_shard_bytes)
    for name, tensor in tensors:
        writer.add(name, tensor)
    writer.finish()
    (folder / "config.json").write_text(json.dumps(plan.config, indent=2, sort_keys=True))
    ref = checkpoints[plan.reference].path
    assert plan.tokenizer_source is not None  # every plan builder names its tokenizer source
    tok = checkpoints[plan.tokenizer_source].path if plan.tokenizer_source in checkpoints \
        else Path(plan.tokenizer_source).expanduser()  # a tokenizer-only folder needs no weights
    if plan.vocab is not None:  # the child's own tokenizer (vocabulary surgery)
        plan.vocab.tokenizer.save_pretrained(str(folder))
        tok = plan.vocab.source
    elif not copy_tokenizer_files(tok, folder):  # the source has none: the first parent that has one
        donor = next((checkpoints[m].path for m in plan.models
                      if m in checkpoints and copy_tokenizer_files(checkpoints[m].path, folder)), None)
        if donor is not None:
            warnings.warn(f"{tok}: no tokenizer files; the child's tokenizer is copied from {donor}", DarwinWarning,
                          stacklevel=2)
    if not copy_generation_config(tok, folder):  # a tokenizer-only folder: the reference parent's
        copy_generation_config(ref, folder)
    if plan.chat_template:
        write_chat_template(folder, plan.chat_template)
    write_card(plan, folder, card_sections)


def _recipe_folders(plan: MergePlan) -> dict[str, str]:
    """Folders besides the parents that a recipe reads (a tokenizer source, a chat template's model)."""
    out = {}
    if plan.tokenizer_source and plan.tokenizer_source not in plan.models:
        out["the tokenizer source"] = plan.tokenizer_source
    ct = plan.recipe.get("chat_template")
    if isinstance(ct, str) and "{" not in ct and Path(ct).expanduser().is_dir():
        out["the chat template's model"] = ct
    return out


def write_card(plan: MergePlan, folder: Path, sections: list[str] | None = None) -> None:
    """(Re)write the child's model card: parents, base, method, recipe, parameter count, extra sections."""
    base = plan_base(plan)
    write_model_card(folder, parents=[m for m in plan.models if m != base], method=plan.method,
                     parameters=plan.recipe, num_parameters=plan.num_parameters, dtype=dtype_name(plan.out_dtype),
                     extra_sections=sections, base=base)


def plan_base(plan: MergePlan) -> str | None:
    """The model of ``plan.models`` that the recipe names as its base (``base_model`` / ``base``)."""
    named = plan.recipe.get("base_model") or plan.recipe.get("base")
    if not isinstance(named, str):
        return None

    found = as_parent(named, plan.models)  # the same string, or the same local folder written two ways
    return found if found in plan.models else None


def merge(recipe: Recipe | dict[str, Any] | str | os.PathLike | tuple[MergePlan, dict[str, Checkpoint]],
          out_dir: str | os.PathLike | None = None, *,
          force: bool = False, device: str | torch.device | None = "auto",
          max_shard_size: str | int = "5GB", batch_bytes: int | None = None,
          seed: int | None = None, dry_run: bool = False, progress: bool = True) -> MergeResult:
    """Merge parents as a recipe says and write the child (Python API of ``darwin merge``).

    Args:
        recipe: mergekit-style recipe: YAML path, YAML text, dict or :class:`Recipe`; or an
            already built ``(MergePlan, checkpoints)`` pair (genome recipes).
        out_dir: child folder; refused if it exists unless ``force``. Not needed for a dry run.
        force: replace an existing ``out_dir`` (only once the new child is complete).
        device: kernel device; ``"auto"`` uses CUDA when available.
        max_shard_size: shard size limit (``"5GB"``, ``"500MB"``, bytes).
        batch_bytes: working-set budget of one batched kernel call, bytes (default by device).
        seed: overrides the recipe's mask seed (DARE/DELLA).
        dry_run: plan and check only; nothing is written.
        progress: show a rich progress bar.

    Returns:
        a :class:`MergeResult`.

    Raises:
        RecipeError, CheckpointError, CompatibilityError, OutputExistsError: bad input, named.
    """
    shard_bytes = parse_size(max_shard_size)
    resolve_device(device)  # a bad device fails before any work
    if not dry_run and out_dir is None:
        raise RecipeError("give an output folder (out_dir), or dry_run=True")
    if not dry_run:
        assert out_dir is not None  # refused above
        check_output_dir(out_dir, force=force)
    if isinstance(recipe, tuple):  # an already built (plan, checkpoints), e.g. a decoded genome recipe
        plan, ckpts = recipe
    else:
        plan, ckpts = plan_recipe(recipe, seed=seed)
    if out_dir is not None:
        refuse_input_overlap(out_dir, {**{f"parent {ref}": c.path for ref, c in ckpts.items()},
                                       **_recipe_folders(plan)})
    batch_bytes = batch_bytes or default_batch_bytes(resolve_device(device))
    peak = peak_bytes_estimate(plan, batch_bytes) + min(shard_bytes, plan.output_bytes)
    if dry_run:
        return MergeResult(plan, None, peak)
    assert out_dir is not None  # refused above unless dry_run
    with atomic_output_dir(out_dir, force=force) as tmp:
        with Progress(TextColumn("[bold]merging"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      disable=not progress, transient=True) as bar:
            job = bar.add_task("merge", total=len(plan.tasks))
            stream = execute(plan, ckpts, device=device, batch_bytes=batch_bytes,
                             on_batch=lambda n: bar.advance(job, n))
            write_child(plan, stream, tmp, ckpts, max_shard_bytes=shard_bytes)
    for c in ckpts.values():
        c.close()
    return MergeResult(plan, Path(out_dir).expanduser().resolve(), peak)
