"""Model golf runs: a child under a parameter budget with at least a given context, no training.

:func:`golf` is ``darwin golf``: optionally trim each parent's vocabulary to a reference corpus
(:func:`darwin.plan.trim.trim_vocab`, into ``OUT-trimmed-<i>``), then evolve the ``golf`` genome
(:mod:`darwin.genome.golf`) under ``search.constraints`` with a bits-per-byte fitness. The saved child
is verified from its files (:func:`darwin.search.constraints.verify_child`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, field_validator

from darwin.errors import DarwinError
from darwin.search.config import parse_count
from darwin.search.evolve import EvolveOptions, EvolveResult, evolve


class GolfRequest(BaseModel):
    """What a golf run is asked for (every field checked; unknown keys refused).

    Attributes:
        models: one parent, or two of one family (folders or hub ids).
        max_params: the budget, parameters counted as published (tied embeddings once); ``100M``
            style strings are accepted.
        min_context: the minimum context window, tokens (checked on the saved child).
        text: files or folders of the bits-per-byte fitness (None: the shipped MRI probe prompts).
        fitness: ``fitness:`` entries of ``parents.yaml`` replacing the bits-per-byte fitness on
            ``text`` (e.g. one equally weighted entry per domain).
        population, generations, seed: the CMA-ES budget and seed.
        trim_corpus: texts whose tokens are kept (the width operator; None: off).
        device: search device (``auto``, ``cpu``, ``cuda:N``).
    """

    model_config = ConfigDict(extra="forbid")
    models: list[str]
    max_params: int = 100_000_000
    min_context: int = 1028
    text: Optional[list[str]] = None
    fitness: Optional[list[dict[str, Any]]] = None
    population: int = 8
    generations: int = 6
    seed: int = 0
    trim_corpus: Optional[list[str]] = None
    device: str = "auto"

    @field_validator("max_params", mode="before")
    @classmethod
    def _count(cls, v: Any) -> int:
        n = parse_count(v, "max_params")
        if n is None:
            raise ValueError("max_params: give a parameter budget")
        return n


def golf_config(req: GolfRequest, parents: list[str]) -> dict[str, Any]:
    """The ``parents.yaml`` of a golf run over ``parents`` (the trimmed ones when trimming)."""
    from darwin.diagnosis.probe import shipped_probe_dir

    files = list(req.text) if req.text else [str(shipped_probe_dir())]
    fitness = req.fitness or [{"bits_per_byte": {"files": files, "max_tokens": 2048, "window": 1024}}]
    return {"parents": list(parents), "genome": "golf", "mri": {"enabled": True}, "fitness": fitness,
            "search": {"population": req.population, "generations": req.generations, "seed": req.seed,
                       "constraints": {"max_params": req.max_params, "min_context": req.min_context}},
            "device": req.device}


def trimmed_parents(req: GolfRequest, out: Path, *, resume: bool, force: bool) -> tuple[list[str], list[Path]]:
    """Trim every parent's vocabulary into ``OUT-trimmed-<i>``; returns (parents, folders created now).

    On resume an existing trimmed parent of the run is reused. On failure the folders created
    here are removed before the error propagates.

    Raises:
        DarwinError: from :func:`darwin.plan.trim.trim_vocab` (an existing folder without ``force``, …).
    """
    from darwin.plan.trim import trim_vocab

    assert req.trim_corpus is not None
    parents: list[str] = []
    created: list[Path] = []
    try:
        for i, m in enumerate(req.models):
            dest = out.parent / f"{out.name}-trimmed-{i}"
            if resume and (dest / "lineage.json").exists():  # the trimmed parent of the run being resumed
                parents.append(str(dest))
                continue
            parents.append(str(trim_vocab(m, list(req.trim_corpus), dest, force=force).out_dir))
            created.append(dest)
    except DarwinError:
        remove_folders(created)
        raise
    return parents, created


def remove_folders(folders: list[Path]) -> None:
    """Remove folders this run created (best effort)."""
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)


def golf(req: GolfRequest, out_dir: str | Path, options: EvolveOptions | None = None) -> EvolveResult:
    """Run model golf (see module doc); the child is ``OUT/child``.

    Raises:
        RecipeError, CheckpointError, CompatibilityError, OutputExistsError, DarwinError: bad input,
            named; trimmed parents created by a run that fails before searching are removed.
    """
    opts = options or EvolveOptions()
    out = Path(out_dir)
    parents, created = (trimmed_parents(req, out, resume=opts.resume, force=opts.force) if req.trim_corpus
                        else (list(req.models), []))
    try:
        return evolve(golf_config(req, parents), out, opts)
    except BaseException:
        if not (out / "history.jsonl").exists():
            remove_folders(created)  # nothing was searched: do not leave the trimmed parents behind
        raise
