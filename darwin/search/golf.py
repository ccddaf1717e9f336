"""Model golf runs: a child under a parameter budget with at least a given context, no training.

:func:`golf` is ``darwin golf``: optionally trim each parent's vocabulary to a reference corpus
(:func:`darwin.plan.trim.trim_vocab`, into ``OUT-trimmed-<i>``), then evolve the ``golf`` genome
(:mod:`darwin.genome.golf`) under ``search.constraints`` with a bits-per-byte fitness. The saved child
is verified from its files (:func:`darwin.search.constraints.verify_child`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from darwin.arch.config import context_length
from darwin.diagnosis.probe import shipped_probe_dir
from darwin.errors import OutputExistsError, RecipeError
from darwin.io.card import shown
from darwin.io.checkpoint import Checkpoint
from darwin.io.textfiles import collect_files
from darwin.io.writer import atomic_output_dir, check_output_dir, refuse_input_overlap
from darwin.io.yamlfile import absolute_if_local
from darwin.plan.width import SCORES
from darwin.search.config import Constraints, parse_count
from darwin.search.constraints import constraint_card, verify_child
from darwin.search.evolve import EvolveOptions, EvolveResult, evolve
from darwin.search.prune import PruneRequest, PruneResult, check_prunable, prune


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
        trim_corpus: texts whose tokens are kept (vocabulary trimming; None: off).
        device: search device (``auto``, ``cpu``, ``cuda:N``).
        method: ``width`` (one model: uniform width pruning with re-fits) or ``depth`` (the golf
            genome's CMA-ES search, one or two models).
        calibration: width only: the statistics text (None: ``trim_corpus``, else ``text``, else
            the shipped probe prompts); never the text a report holds out.
        score, sequential, tokens: width only: the neuron score, layer-by-layer re-fits, and
            the calibration tokens (:class:`darwin.search.prune.PruneRequest`).
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
    method: Literal["width", "depth"] = "width"
    calibration: Optional[list[str]] = None
    score: str = "second_moment"
    sequential: bool = False
    tokens: int = Field(default=32768, ge=64)

    @model_validator(mode="after")
    def _method_options(self) -> GolfRequest:
        """An option of the other method is an error (it would silently do nothing)."""
        other = ({"population": 8, "generations": 6, "seed": 0, "fitness": None} if self.method == "width" else
                 {"calibration": None, "score": "second_moment", "sequential": False, "tokens": 32768})
        given = [k for k, default in other.items() if getattr(self, k) != default]
        if given:
            raise ValueError(f"{', '.join(given)}: option(s) of method {'depth' if self.method == 'width' else 'width'}, "
                             f"not of method {self.method}")
        if self.score not in SCORES:
            raise ValueError(f"score {self.score!r}: one of {', '.join(SCORES)}")
        return self

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
        least = {"min_context": 2, "population": 2, "generations": 1}[info.field_name]  # a window scores ≥ 2 tokens
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
                _same_trim(dest, m, req.trim_corpus)
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


def _same_trim(dest: Path, model: str, corpus: list[str]) -> None:
    """Refuse to resume with a trimmed parent made from another model or corpus.

    Raises:
        OutputExistsError: ``dest``'s ``lineage.json`` names other inputs.
    """
    def ref(x: str) -> str:
        p = Path(x).expanduser()
        return str(p.resolve()) if p.exists() else x

    lin = json.loads((dest / "lineage.json").read_text())
    was = ([ref(str(p.get("model", ""))) for p in lin.get("parents", [])][:1], sorted(ref(c) for c in lin.get("corpus", [])))
    now = ([ref(model)], sorted(ref(c) for c in corpus))
    if was != now:
        raise OutputExistsError(f"{dest}: was trimmed from {was[0][0] if was[0] else '?'} with corpus {was[1]}; this run "
                                f"asks for {now[0][0]} with {now[1]}; --force redoes the run")


def remove_folders(folders: list[Path]) -> None:
    """Remove folders this run created (best effort)."""
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)


def golf(req: GolfRequest, out_dir: str | Path, options: EvolveOptions | None = None
         ) -> EvolveResult | WidthGolfResult:
    """Run model golf (see module doc); the child is ``OUT/child``.

    Returns:
        ``width``: a :class:`WidthGolfResult`; ``depth``: the search's
        :class:`darwin.search.evolve.EvolveResult`.

    Raises:
        RecipeError, CheckpointError, CompatibilityError, OutputExistsError, DarwinError: bad input,
            named; trimmed parents created by a run that fails before searching are removed.
    """
    opts = options or EvolveOptions()
    out = Path(out_dir)
    if req.method == "width":
        return width_golf(req, out, opts)
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


@dataclass
class WidthGolfResult:
    """A ``width`` golf run.

    Attributes:
        out_dir: the run folder (``golf.json``: the request, the widths and the checks).
        child_dir: the child (``out_dir/child``).
        pruned: what :func:`darwin.search.prune.prune` did (widths, parameters before and after).
        constraints: the saved child measured (:func:`darwin.search.constraints.verify_child`).
        parent: the pruned model (the vocabulary-trimmed parent when trimming).
        parameters_original: the original model's parameters (tied embeddings once).
        seconds: wall time of the run.
    """

    out_dir: Path
    child_dir: Path
    pruned: PruneResult
    constraints: dict[str, Any]
    parent: str
    parameters_original: int
    seconds: float


def width_golf(req: GolfRequest, out: Path, opts: EvolveOptions) -> WidthGolfResult:
    """Trim the vocabulary (optional), then prune to the widest uniform widths under the budget.

    The run folder is written atomically; with ``resume`` a trimmed parent of the run is reused.

    Raises:
        RecipeError: two models, or a context shorter than ``min_context``.
        OutputExistsError: ``out`` exists without ``force`` / ``resume``.
        CompatibilityError: not a llama-family model (trimmed parents created by the run are removed).
        DarwinError: the child misses a constraint (nothing is put in place).
    """
    start = time.perf_counter()
    calibration = req.calibration or req.trim_corpus or req.text or [str(shipped_probe_dir())]
    original = _check_width_run(req, out, opts, calibration)
    trimmed = (trimmed_parents(req, out, resume=opts.resume, force=opts.force) if req.trim_corpus
               else TrimmedParents(parents=[absolute_if_local(m) for m in req.models]))
    parent = trimmed.parents[0]
    preq = PruneRequest(model=parent, calibration=calibration, max_params=req.max_params, score=req.score,
                        sequential=req.sequential, tokens=req.tokens, device=req.device)
    limits = Constraints(max_params=req.max_params, min_context=req.min_context)
    text = "\n\n".join(p.read_text(errors="replace") for p in collect_files(calibration, "calibration"))
    report: dict[str, Any] = {}

    def check(folder: Path) -> list[str]:
        report.update(verify_child(folder, limits, text))
        return [constraint_card(report, Path(parent)), lineage_card(req, parent, original)]

    try:
        with atomic_output_dir(out, force=True) as tmp:
            pruned = prune(preq, tmp / "child", progress=opts.progress, check=check, method="golf-width")
            (tmp / "golf.json").write_text(json.dumps(
                {"request": req.model_dump(), "parent": parent, "ffn": pruned.plan.ffn, "groups": pruned.plan.groups,
                 "parameters_original": original, "parameters_pruned_parent": pruned.parameters_before,
                 "constraints": report,
                 "seconds": round(time.perf_counter() - start, 1)}, indent=1))
    except BaseException:
        trimmed.undo()
        raise
    trimmed.commit()
    pruned.out_dir = out.resolve() / "child"
    return WidthGolfResult(out.resolve(), out.resolve() / "child", pruned, report, parent, original,
                           time.perf_counter() - start)


def _check_width_run(req: GolfRequest, out: Path, opts: EvolveOptions, calibration: list[str]) -> int:
    """Everything a width run can refuse before any work; returns the model's parameters.

    ``--force`` replaces only a golf run folder; ``--resume`` reuses a trimmed parent, never a
    finished run; no output may hold or be an input; the model must have a llama-family layout and
    a context of at least ``min_context``.
    """
    if len(req.models) != 1:
        raise RecipeError(f"golf method width prunes one model, got {len(req.models)}; give one, or "
                          "method depth (--method depth) to breed two")
    inputs = {"the model": req.models[0], **{f"the text {c}": c for c in [*(req.trim_corpus or []), *calibration]}}
    for folder in (out, out.parent / f"{out.name}-trimmed-0"):
        refuse_input_overlap(folder, inputs)
    if out.is_dir() and (out / "golf.json").exists() and not opts.force:
        raise OutputExistsError(f"{out}: holds a finished golf run; --force redoes it (--resume only reuses "
                                "the trimmed parent of a run that stopped before writing it)")
    check_output_dir(out, force=opts.force)
    if opts.force and out.is_dir() and any(out.iterdir()) and not (out / "golf.json").exists():
        raise OutputExistsError(f"{out}: exists and holds no golf run (no golf.json); --force replaces only a run "
                                "folder; move it away or choose another")
    first = Checkpoint(req.models[0])
    try:
        config = dict(first.require_config())
        check_prunable(config, first)
        original, ctx = first.num_parameters, context_length(config)
    finally:
        first.close()
    if ctx is not None and ctx < req.min_context:
        raise RecipeError(f"min_context = {req.min_context}, but {req.models[0]} has a context window of {ctx} "
                          "(max_position_embeddings); pruning cannot lengthen it")
    return original


def lineage_card(req: GolfRequest, parent: str, original: int) -> str:
    """Model-card section: the chain from the original model to this child."""
    lines = ["## Lineage", "", f"1. {shown(req.models[0])}: the original model, {original:,} parameters"]
    lineage = Path(parent) / "lineage.json"
    if req.trim_corpus and lineage.exists():
        t = json.loads(lineage.read_text())
        lines.append(f"2. `darwin trim-vocab`: vocabulary {t['vocab_before']:,} → {t['vocab_after']:,} "
                     f"tokens, kept by their use in {', '.join(f'`{Path(c).name}`' for c in req.trim_corpus)}")
    lines.append(f"{len(lines) - 1}. `darwin prune` ({req.score}, least-squares re-fit"
                 f"{', sequential' if req.sequential else ''}): the widest uniform FFN under "
                 f"{req.max_params:,} parameters; this child")
    return "\n".join(lines)
