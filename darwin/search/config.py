"""``parents.yaml``: what ``darwin evolve`` breeds, how it scores, how long it searches.

Example::

    parents: [./parent_a, ./parent_b]      # two parents (folders or hub ids)
    base: ./base                            # optional: DARE-TIES task vectors are taken from it
    genome: darwin14                        # built-in name or path to a genome YAML
    mri: {enabled: true, probes: [reasoning, code, math, knowledge, language],
          weights: {static: 0.4, probe: 0.6}}
    fitness:                                # what CMA-ES optimises
      - perplexity: {files: [heldout.txt], max_tokens: 2048, window: 512}
        weight: 1.0
      - lm_eval: {tasks: [my_task], include_path: ./tasks, limit: 50}
        weight: 0.5
      - python: mymodule:score
    selection:                              # picks the final child, stops the search (search.patience)
      - perplexity: {files: [selection/], window: 256, documents: true}
    test:                                   # reported only: no decision reads it
      - perplexity: {files: [test/], window: 256, documents: true}
    search: {population: 8, generations: 10, sigma0: 0.5, seed: 0}   # or max_evaluations
    #   + constraints: {max_params: 100M, min_context: 1028}   (candidates over budget are never scored)
    # optional: score candidates in parallel on Ray actors (pip install 'darwin-merge[ray]');
    # address joins a running cluster ("auto", "ray://head:10001"), else Ray starts locally
    #   search: {..., workers: 4, address: auto}
    dtype: float32                          # the child's storage dtype
    device: auto
    fitness_dtype: auto                     # candidates scored in bfloat16 where native (CUDA, AVX-512-BF16/AMX)
    placement: auto                         # parents on the device, or in host memory when they do not fit
    baselines: {linear: [0, 0.1, …, 1], slerp: [0.1, …, 0.9], task_arithmetic: [0.5, 0.75, 1, 1.25],
                ties: {density: [0.3, 0.5, 0.7], lambda: [0.7, 1, 1.3]}, dare_ties: {…}}   # tuned uniform merges

Every mapping is ``extra="forbid"``: an unknown key is an error naming it. Relative paths resolve
against the YAML file's folder.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from darwin.diagnosis.probe import FAMILIES
from darwin.errors import describe_validation_error
from darwin.io.yamlfile import load_yaml_mapping, resolve_beside


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MriWeights(_Strict):
    """Weights of the static and probe signals in r_MRI."""

    static: float = 0.4
    probe: float = 0.6


class MriConfig(_Strict):
    """MRI diagnosis used to guide the search (``r = τ·r_MRI + (1 − τ)·r_genome``)."""

    enabled: bool = True
    probes: list[str] = Field(default_factory=lambda: list(FAMILIES))
    weights: MriWeights = MriWeights()

    @model_validator(mode="after")
    def _families(self):
        bad = [p for p in self.probes if p not in FAMILIES]
        if bad:
            raise ValueError(f"unknown probe families {bad}; known: {list(FAMILIES)}")
        return self


class PerplexitySpec(_Strict):
    """Perplexity (or bits per byte) over local text files (see :mod:`darwin.fitness.perplexity`).

    ``documents: false`` (default): the files' text as one token stream, ``max_tokens`` of it in
    windows of ``window``. ``documents: true``: every document (a file, a JSONL record, or a chunk
    between ``separator`` strings) scored on its first ``window`` tokens, the fitness the mean over
    documents (:class:`darwin.fitness.perplexity.DocumentFitness`). ``part`` (``fitness`` or
    ``selection``) keeps one side of a deterministic hold-out of ``part_share`` of the documents
    (:func:`darwin.io.documents.split_documents`); darwin sets it when ``selection:`` is absent.
    """

    files: list[str]
    max_tokens: int = 2048
    window: int = Field(512, ge=2)
    batch_size: int = Field(4, ge=1)
    documents: bool = False
    separator: Optional[str] = None
    text_field: str = "text"
    part: Optional[Literal["fitness", "selection"]] = None   # set by darwin for the hold-out (search.holdout_share)
    part_share: float = Field(0.3, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _document_keys(self):
        if not self.documents and (self.separator is not None or self.text_field != "text" or self.part):
            raise ValueError("separator, text_field and part need documents: true")
        if self.separator == "":
            raise ValueError("separator must not be empty")
        return self


class LmEvalSpec(_Strict):
    """lm-eval tasks on the in-memory model (see :mod:`darwin.fitness.lm_eval`).

    ``limit``: items per task, an int ≥ 1 or a fraction in (0, 1) of each task's items (lm-eval's
    rule: ⌈n·limit⌉). ``metric``: one metric name for every task, or ``{task: metric}``; default:
    each task's first metric. ``score``: ``auto`` (the log-likelihood margin for multiple-choice
    tasks without a named metric, the metric otherwise), ``margin`` or ``metric``. ``num_fewshot``, ``apply_chat_template``,
    ``fewshot_as_multiturn`` (default: on with a chat template, as the ``lm_eval`` CLI),
    ``system_instruction``, ``gen_kwargs`` (generative tasks) and ``batch_size`` (int or ``auto``)
    are lm-eval's own options, passed through.
    """

    tasks: list[str] = Field(min_length=1)
    include_path: Optional[str] = None
    limit: Optional[float] = None
    metric: Optional[str | dict[str, str]] = None
    score: Literal["auto", "margin", "metric"] = "auto"
    batch_size: int | Literal["auto"] = 4
    num_fewshot: Optional[int] = Field(None, ge=0)
    apply_chat_template: bool | str = False
    fewshot_as_multiturn: Optional[bool] = None
    system_instruction: Optional[str] = None
    gen_kwargs: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _check(self):
        if self.limit is not None and not (0 < self.limit < 1 or (self.limit >= 1 and self.limit == int(self.limit))):
            raise ValueError(f"limit: an item count >= 1 or a fraction in (0, 1), got {self.limit}")
        if isinstance(self.metric, dict) and (extra := sorted(set(self.metric) - set(self.tasks))):
            raise ValueError(f"metric: {extra} are not among the tasks {self.tasks}")
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1 or 'auto'")
        if self.fewshot_as_multiturn and not self.apply_chat_template:
            raise ValueError("fewshot_as_multiturn needs apply_chat_template")
        return self


_KINDS = ("perplexity", "bits_per_byte", "lm_eval", "python")


class FitnessEntry(_Strict):
    """One fitness component: exactly one of ``perplexity``, ``bits_per_byte``, ``lm_eval``,
    ``python``; plus ``weight``."""

    perplexity: Optional[PerplexitySpec] = None
    bits_per_byte: Optional[PerplexitySpec] = None
    lm_eval: Optional[LmEvalSpec] = None
    python: Optional[str] = None
    weight: float = 1.0

    @model_validator(mode="after")
    def _one(self):
        set_ = [k for k in _KINDS if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"a fitness entry needs exactly one of {', '.join(_KINDS)}; got {set_ or 'none'}")
        return self

    @property
    def kind(self) -> str:
        """``perplexity``, ``bits_per_byte``, ``lm_eval`` or ``python``."""
        return next(k for k in _KINDS if getattr(self, k) is not None)


def parse_count(value: Any, key: str) -> int | None:
    """``100_000_000``, ``"100M"``, ``"1.5B"``, ``"800K"`` → int (None stays None).

    Raises:
        ValueError: not a positive count.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected a count, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key}: expected a finite count, got {value!r}")
    if isinstance(value, (int, float)):
        n = int(value)
    else:
        text = str(value).strip().upper().replace("_", "")
        mult = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}.get(text[-1:], 1)
        try:
            n = int(float(text[:-1] if mult > 1 else text) * mult)
        except (ValueError, OverflowError):
            raise ValueError(f"{key}: expected a count like 100000000 or 100M, got {value!r}") from None
    if n <= 0:
        raise ValueError(f"{key}: must be > 0, got {value!r}")
    return n


class Constraints(_Strict):
    """Hard limits on the child; a candidate that violates one is never evaluated.

    Attributes:
        max_params: parameter budget, counted as a published checkpoint counts them (tied
            embeddings once); ``100M``-style strings are accepted.
        min_context: minimum context window (the child config's ``max_position_embeddings``).
    """

    max_params: Optional[int] = None
    min_context: Optional[int] = None

    @field_validator("max_params", "min_context", mode="before")
    @classmethod
    def _count(cls, v, info):
        return parse_count(v, info.field_name)


def _grid(lo: float, hi: float, n: int) -> list[float]:
    return [round(lo + (hi - lo) * i / (n - 1), 4) for i in range(n)]


class DensityLambdaGrid(_Strict):
    """A density × λ grid (TIES, DARE-TIES): every pair is one uniform merge."""

    density: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7])
    lam: list[float] = Field(default_factory=lambda: [0.7, 1.0, 1.3], alias="lambda")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class BaselinesConfig(_Strict):
    """Tuned uniform baselines: grids of one-number merges of the two parents, scored on the fitness;
    the best of each family is what the child must beat (see :mod:`darwin.search.baselines`).

    Lists are grids; an empty list turns a family off. ``task_arithmetic``, ``ties`` and
    ``dare_ties`` need ``base:`` and are skipped without one.
    """

    enabled: bool = True
    linear: list[float] = Field(default_factory=lambda: _grid(0.0, 1.0, 11))   # weight of parent B
    slerp: list[float] = Field(default_factory=lambda: _grid(0.1, 0.9, 9))     # t, fraction of parent B
    task_arithmetic: list[float] = Field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25])  # λ, weights 1, 1
    ties: DensityLambdaGrid = DensityLambdaGrid()
    dare_ties: DensityLambdaGrid = DensityLambdaGrid()

    @model_validator(mode="after")
    def _fractions(self):
        bad = [v for v in self.linear + self.slerp + self.ties.density + self.dare_ties.density
               if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
        if bad:
            raise ValueError(f"linear and slerp weights and densities must be in [0, 1], got {bad}")
        lams = self.task_arithmetic + self.ties.lam + self.dare_ties.lam
        if any(not math.isfinite(v) for v in lams):
            raise ValueError(f"lambda values must be finite, got {lams}")
        return self


class SearchConfig(_Strict):
    """CMA-ES budget and settings, and where candidates are scored.

    Budget: ``generations``, else ``max_evaluations``, else the default ``10 × dims`` evaluations
    (dims: the genes CMA-ES searches, ``fixed`` ones excluded), in generations of ``population``
    (default ``4 + ⌊3 ln dims⌋``).

    Start: ``start: uniform`` (the default ``auto`` where tuned baselines are scored) starts at the
    genome point that reproduces the best tuned uniform merge the genome can express (see
    :func:`darwin.genome.decode.uniform_start`), with ``sigma0`` 0.25 unless given; ``start:
    genome`` starts at the genes' ``start`` values with ``sigma0`` 0.5. ``pull`` ≥ 0 adds
    ``pull · mean((x − x₀)²)`` (search coordinates) to every candidate's CMA-ES loss, a penalty
    toward the start (the recorded fitness is unchanged).

    ``fixed``: gene → value held constant (not searched), e.g. ``{mri_trust: 0}``.

    ``workers`` > 1 or an ``address`` scores candidates on Ray actors
    (:mod:`darwin.search.ray_pool`); 1 without an address scores them in this process. Neither
    changes the result, so a run may be resumed with other values.
    """

    population: Optional[int] = None
    generations: Optional[int] = None
    max_evaluations: Optional[int] = None
    sigma0: Optional[float] = None
    start: Literal["auto", "uniform", "genome"] = "auto"
    pull: float = Field(0.0, ge=0.0)
    fixed: dict[str, float] = Field(default_factory=dict)
    seed: int = 0
    workers: int = 1
    address: Optional[str] = None
    constraints: Constraints = Constraints()
    selection_top_k: int = Field(3, ge=1)   # candidates of each generation scored on the selection data
    patience: Optional[int] = Field(None, ge=1)  # stop after this many generations without a selection gain
    holdout_share: float = Field(0.3, gt=0.0, lt=1.0)  # fitness documents held out as selection without selection:

    @model_validator(mode="after")
    def _budget(self):
        if self.workers < 1:
            raise ValueError("search.workers must be >= 1")
        if self.generations is not None and self.generations < 1:
            raise ValueError("search.generations must be >= 1")
        if self.max_evaluations is not None and self.max_evaluations < 1:
            raise ValueError("search.max_evaluations must be >= 1")
        if self.population is not None and self.population < 2:
            raise ValueError("search.population must be >= 2")
        if self.sigma0 is not None and not (math.isfinite(self.sigma0) and self.sigma0 > 0):
            raise ValueError("search.sigma0 must be > 0")
        if any(not math.isfinite(v) for v in self.fixed.values()):
            raise ValueError(f"search.fixed: values must be finite numbers, got {self.fixed}")
        return self

    def popsize(self, n_genes: int) -> int:
        """Population: as given, else CMA-ES's default ``4 + ⌊3 ln n⌋``."""
        return self.population or 4 + int(3 * math.log(max(n_genes, 1)))

    def num_generations(self, n_genes: int) -> int:
        """Generations: as given, else ``⌈max_evaluations / population⌉`` (default ``10 × n_genes``)."""
        if self.generations is not None:
            return self.generations
        evals = self.max_evaluations if self.max_evaluations is not None else 10 * n_genes
        return max(1, math.ceil(evals / self.popsize(n_genes)))

    def initial_sigma(self, from_uniform: bool) -> float:
        """``sigma0`` as given, else 0.25 from a uniform start (a local search) and 0.5 from the genome's."""
        return self.sigma0 if self.sigma0 is not None else (0.25 if from_uniform else 0.5)


class ParentsConfig(_Strict):
    """The whole ``parents.yaml``."""

    parents: list[str]
    base: Optional[str] = None
    genome: str = "darwin14"
    mri: MriConfig = MriConfig()
    fitness: list[FitnessEntry]
    selection: list[FitnessEntry] = Field(default_factory=list)
    test: list[FitnessEntry] = Field(default_factory=list)
    search: SearchConfig
    dtype: str = "float32"
    device: str = "auto"
    fitness_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    baselines: BaselinesConfig = BaselinesConfig()
    placement: Literal["auto", "device", "device_lean", "host"] = "auto"

    @model_validator(mode="after")
    def _check(self):
        if not self.parents:
            raise ValueError("give at least one parent (two for merge genomes)")
        if not self.fitness:
            raise ValueError("give at least one fitness entry")
        return self


def _resolve(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    def fix(p: str | None) -> str | None:
        return resolve_beside(p, base_dir)

    data = dict(data)  # only well-typed values are resolved; the model reports the others by key
    if isinstance(data.get("parents"), list):
        data["parents"] = [fix(p) for p in data["parents"]]
    if "base" in data:
        data["base"] = fix(data["base"])
    if isinstance(data.get("genome"), str) and data["genome"].endswith((".yaml", ".yml")):
        data["genome"] = fix(data["genome"])
    for role in ("selection", "test"):
        if isinstance(data.get(role), list):
            data[role] = _resolve_entries(data[role], fix)
    if isinstance(data.get("fitness"), list):
        data["fitness"] = _resolve_entries(data["fitness"], fix)
    return data


def _resolve_entries(entries: list[Any], fix) -> list[Any]:
    fits = []
    for e in entries:
        e = dict(e) if isinstance(e, dict) else e
        for kind in ("perplexity", "bits_per_byte"):
            if isinstance(e, dict) and isinstance(e.get(kind), dict) and isinstance(e[kind].get("files"), list):
                e[kind] = {**e[kind], "files": [fix(f) for f in e[kind]["files"]]}
        if isinstance(e, dict) and isinstance(e.get("lm_eval"), dict) and isinstance(e["lm_eval"].get("include_path"),
                                                                                   str):
            e["lm_eval"] = {**e["lm_eval"], "include_path": fix(e["lm_eval"]["include_path"])}
        if isinstance(e, dict) and isinstance(e.get("python"), str) and ".py:" in e["python"]:
            path, _, fn = e["python"].rpartition(":")
            e["python"] = f"{fix(path)}:{fn}"
        fits.append(e)
    return fits


def load_parents_config(source: ParentsConfig | dict[str, Any] | str | os.PathLike) -> ParentsConfig:
    """Validate ``parents.yaml`` (path, dict or model).

    Raises:
        RecipeError: unreadable file, invalid YAML, unknown key, bad value (naming the key).
    """
    if isinstance(source, ParentsConfig):
        return source
    where, data = "parents config", source
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        where = str(p)
        data = _resolve(load_yaml_mapping(p, "parents config"), p.resolve().parent)
    try:
        return ParentsConfig.model_validate(data)
    except ValidationError as e:
        raise describe_validation_error(where, "parents config", e) from None
