"""Model golf runs: a child under a parameter budget with at least a given context, no training.

:func:`golf` is ``darwin golf``: optionally trim each parent's vocabulary to a reference corpus
(:func:`darwin.plan.trim.trim_vocab`, into ``OUT-trimmed-<i>``), then evolve the ``golf`` genome
(:mod:`darwin.genome.golf`) under ``search.constraints`` with a bits-per-byte fitness. The saved child
is verified from its files (:func:`darwin.search.constraints.verify_child`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, field_validator

from darwin.errors import OutputExistsError
from darwin.io.yamlfile import absolute_if_local
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

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        if not 1 <= len(v) <= 2:
            raise ValueError(f"give one model, or two of one family; got {len(v)}")
        if len(set(v)) != len(v):
            raise ValueError("the same model is given twice")
        return v

    @field_validator("min_context", "population", "generations")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        least = {"min_context": 1, "population": 2, "generations": 1}[info.field_name]
        if v < least:
            raise ValueError(f"{info.field_name} must be >= {least}, got {v}")
        return v

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
    fitness = req.fitness if req.fitness is not None else [
        {"bits_per_byte": {"files": files, "max_tokens": 2048, "window": 1024}}]
    return {"parents": list(parents), "genome": "golf", "mri": {"enabled": True}, "fitness": fitness,
            "search": {"population": req.population, "generations": req.generations, "seed": req.seed,
                       "constraints": {"max_params": req.max_params, "min_context": req.min_context}},
            "device": req.device}


@dataclass
class TrimmedParents:
    """The parents of a golf run with vocabulary trimming, and what to undo if the run fails early.

    Attributes:
        parents: the trimmed parent folders (``OUT-trimmed-<i>``).
        created: folders written by this call.
        backups: ``(backup, original)``: a previous run's trimmed parent set aside (``--force``);
            restored if this run fails before searching, deleted once it has searched.
    """

    parents: list[str] = field(default_factory=list)
    created: list[Path] = field(default_factory=list)
    backups: list[tuple[Path, Path]] = field(default_factory=list)

    def undo(self) -> None:
        """Remove what this run created and put back what it set aside."""
        remove_folders(self.created)
        for backup, original in self.backups:
            if backup.exists() and not original.exists():
                os.replace(backup, original)

    def commit(self) -> None:
        """Drop the set-aside trimmed parents of the previous run."""
        remove_folders([b for b, _ in self.backups])


def trimmed_parents(req: GolfRequest, out: Path, *, resume: bool, force: bool) -> TrimmedParents:
    """Trim every parent's vocabulary into ``OUT-trimmed-<i>``.

    On resume an existing trimmed parent of the run is reused. With ``force`` an existing one is
    set aside (not deleted) until the run has searched. On failure here everything is undone before
    the error propagates.

    Raises:
        DarwinError: from :func:`darwin.plan.trim.trim_vocab` (an existing folder without ``force``, …).
    """
    from darwin.plan.trim import trim_vocab

    assert req.trim_corpus is not None
    done = TrimmedParents()
    try:
        for i, m in enumerate(req.models):
            dest = out.parent / f"{out.name}-trimmed-{i}"
            if resume and (dest / "lineage.json").exists():  # the trimmed parent of the run being resumed
                done.parents.append(str(dest.resolve()))
                continue
            if dest.exists() and not (dest / "lineage.json").exists():
                raise OutputExistsError(f"{dest}: exists and is not a trimmed parent of a golf run; move it away")
            if force and dest.is_dir():
                backup = dest.parent / f".{dest.name}.previous-{os.getpid()}"
                os.replace(dest, backup)
                done.backups.append((backup, dest))
            done.parents.append(str(trim_vocab(m, list(req.trim_corpus), dest, force=force).out_dir))
            done.created.append(dest)
    except BaseException:
        done.undo()
        raise
    return done


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
    trimmed = (trimmed_parents(req, out, resume=opts.resume, force=opts.force) if req.trim_corpus
               else TrimmedParents(parents=[absolute_if_local(m) for m in req.models]))
    history = out / "history.jsonl"
    before = _stamp(history)
    try:
        result = evolve(golf_config(req, trimmed.parents), out, opts)
    except BaseException:
        if _stamp(history) in (None, before):
            trimmed.undo()  # this run searched nothing: leave the trimmed parents as they were
        else:
            trimmed.commit()
        raise
    trimmed.commit()
    return result


def _stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime) of a file, None if absent: tells whether a run appended to its history."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns
