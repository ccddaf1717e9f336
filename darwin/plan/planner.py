"""Turn a recipe plus opened parents into a :class:`~darwin.plan.plan.MergePlan`.

Only headers and configs are read here; no weight bytes. The planner maps every parent with the
architecture mapper, builds the child's layer list from ``models`` or ``slices``, resolves every
parameter for every tensor, and runs the pre-flight checks. Anything that cannot be merged as
asked becomes a report row and a :class:`~darwin.errors.CompatibilityError`, never a silent drop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, overload

import torch

from darwin.arch.config import child_config
from darwin.arch.mapper import ArchMap, TensorRole, merge_units
from darwin.arch.preflight import config_checks, tensor_verdict
from darwin.arch.tokenizers import ChildVocab
from darwin.errors import CompatibilityError, RecipeError
from darwin.io.checkpoint import Checkpoint
from darwin.kernels.masks import MASK_RNGS
from darwin.kernels.methods import MethodSpec, get_method, normalize_rescale
from darwin.kernels.seeds import tensor_seed
from darwin.plan import params as P
from darwin.plan.chat import resolve_chat_template
from darwin.plan.leniency import check_parameter
from darwin.plan.plan import MergePlan, ReportRow, Source, TaskAction, TensorTask
from darwin.plan.recipe import InputSlice, OutputSlice, Recipe
from darwin.plan.vocab_plan import as_parent, describe, embedding_rows, plan_vocabulary

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float64": torch.float64}
_GLOBAL_ONLY = {"int8_mask"}
_FEW_HINT = {"model_stock": "; model_stock averages two or more fine-tunes of the base and needs a base_model"}
_FRACTIONS = {"density", "gamma", "epsilon", "t"}


@overload
def parse_dtype(name: None, where: str = ...) -> None: ...
@overload
def parse_dtype(name: str, where: str = ...) -> torch.dtype: ...
def parse_dtype(name: str | None, where: str = "dtype") -> torch.dtype | None:
    """``"bfloat16"`` → ``torch.bfloat16`` (None stays None).

    Raises:
        RecipeError: unknown dtype name.
    """
    if name is None:
        return None
    try:
        return _DTYPES[str(name).removeprefix("torch.")]
    except KeyError:
        raise RecipeError(f"{where}: unknown dtype {name!r}; use one of {sorted(_DTYPES)}") from None


@dataclass
class _Layer:
    """One child layer: for each source of its slice, (model, source layer); plus gradient t."""

    slice_index: int
    sources: list[tuple[str, int]]
    t: float


def _slices(recipe: Recipe, maps: dict[str, ArchMap]) -> list[OutputSlice]:
    if recipe.slices is not None:
        return list(recipe.slices)
    models = [m.model for m in recipe.models or []]
    if recipe.base_model and recipe.base_model not in models:
        models.append(recipe.base_model)
    depth = {m: maps[m].num_layers for m in models}
    if len(set(depth.values())) > 1:
        raise CompatibilityError("parents are not compatible: num_layers differs: "
                                 + ", ".join(f"{m}={n}" for m, n in depth.items())
                                 + " (use slices to merge models of different depth)")
    srcs = [InputSlice(model=m, layer_range=(0, max(depth[m], 1))) for m in models]
    return [OutputSlice(sources=srcs)]


def _check_param_names(recipe: Recipe, spec: MethodSpec) -> None:
    reads = {p.name for p in spec.params} | _GLOBAL_ONLY

    def check(scope: dict[str, Any] | None, where: str) -> None:
        for key in scope or {}:
            check_parameter(key, spec, where, reads)

    check(recipe.parameters, "parameters")
    for i, m in enumerate(recipe.models or []):
        check(m.parameters, f"models[{i}] ({m.model}).parameters")
    for i, s in enumerate(recipe.slices or []):
        check(s.parameters, f"slices[{i}].parameters")
        for j, src in enumerate(s.sources):
            check(src.parameters, f"slices[{i}].sources[{j}].parameters")


def _coerce(spec: MethodSpec, name: str, value: Any, where: str) -> Any:
    p = spec.param(name)
    assert p is not None  # callers pass the names of spec's declared parameters
    try:
        if name == "rescale":
            return normalize_rescale(value) or "none"
        if name == "mask_rng":
            if value not in MASK_RNGS:
                raise RecipeError(f"{where}: parameter 'mask_rng' must be one of {', '.join(MASK_RNGS)}, "
                                  f"got {value!r}")
            return value
        if p.kind is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if p.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError
            return value
        if p.kind is float:
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError
            v = float(value)
        else:
            return str(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{where}: parameter {name!r} must be a finite {p.kind.__name__}, got {value!r}") from None
    if name in _FRACTIONS and not 0.0 <= v <= 1.0:
        raise RecipeError(f"{where}: parameter {name!r} must be in [0, 1], got {v}")
    return v


def _check_della(parent: dict[str, list[Any]], inputs: list[Source], out_name: str) -> None:
    """DELLA's keep probabilities ρ ± ε must stay in (0, 1] wherever ρ < 1 (arXiv 2406.11617)."""
    for src, rho, eps in zip(inputs, parent["density"], parent["epsilon"]):
        if rho < 1 and (rho - eps <= 0 or rho + eps > 1):
            raise RecipeError(f"{src.model}:{out_name}: DELLA needs 0 < density − epsilon and density + epsilon ≤ 1 "
                              f"(got density {rho}, epsilon {eps}); change density or epsilon")


_VISION_MARKERS = ("vision_tower", "vision_model", "multi_modal_projector", "visual.", "image_newline")


def refuse_multimodal(ck: Checkpoint) -> None:
    """Refuse a vision-language checkpoint (LLaVA-style ``language_model`` + ``vision_tower`` +
    projector): darwin merges language models, and a vision tower's layers would be mapped onto the
    language model's. (mergekit 0.1.5 silently drops the language model in its own LLaVA test.)

    Raises:
        CompatibilityError: naming the folder and a vision tensor.
    """
    vision = next((n for n in ck.tensor_names if any(m in n for m in _VISION_MARKERS)), None)
    if vision is not None or isinstance(ck.config.get("vision_config"), dict):
        what = f"tensor {vision!r}" if vision else "a vision_config in config.json"
        raise CompatibilityError(f"{ck.path}: a vision-language checkpoint ({what}); darwin merges language "
                                 "models only: merge the language model extracted on its own")


def build_plan(recipe: Recipe, checkpoints: dict[str, Checkpoint]) -> MergePlan:
    """Build the merge plan for ``recipe`` over already opened ``checkpoints``.

    Args:
        recipe: a validated recipe.
        checkpoints: every model the recipe references → its opened checkpoint.

    Returns:
        the plan, with its pre-flight report and checks filled in.

    Raises:
        RecipeError: unknown method or parameter, missing required parameter, bad base usage.
        CompatibilityError: a pre-flight check failed (the message lists the failures; the plan
            is attached as ``err.plan`` for printing the report).
    """
    try:
        spec = get_method(recipe.merge_method)
    except KeyError as e:
        raise RecipeError(str(e.args[0])) from None
    _check_param_names(recipe, spec)
    for ck in checkpoints.values():
        ck.require_config()
        refuse_multimodal(ck)
    ts = recipe.vocabulary_source
    if ts not in (None, "base", "union") and ts not in checkpoints and not Path(ts).is_dir():
        key = "tokenizer.source" if recipe.tokenizer is not None else "tokenizer_source"
        raise RecipeError(f"{key} {ts!r}: not a parent of this recipe and no such folder")
    maps = {ref: ArchMap.build(ck.config, ck.tensor_names) for ref, ck in checkpoints.items()}
    slices = _slices(recipe, maps)
    if spec.base == "required" and not (recipe.base_model or all(s.base_model for s in slices)):
        raise RecipeError(f"merge_method {spec.name!r} needs a base_model")
    builder = _PlanBuilder(recipe, spec, checkpoints, maps, slices, plan_vocabulary(recipe, checkpoints))
    builder.non_layer(slices[0], "pre")
    for j, lay in enumerate(builder.layers):
        builder.layer(j, lay)
    builder.non_layer(slices[-1], "post")
    return builder.finish()


def _child_layers(slices: list[OutputSlice], maps: dict[str, ArchMap]) -> list[_Layer]:
    """The child's layers, slice by slice, with their sources and gradient position ``t = i/(n−1)``.

    Raises:
        RecipeError: a slice's layer_range exceeds a source model's layers.
    """
    layers: list[_Layer] = []
    for si, sl in enumerate(slices):
        n = sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0]
        for src in sl.sources:
            if src.layer_range[1] > maps[src.model].num_layers and maps[src.model].num_layers > 0:
                raise RecipeError(f"slices[{si}]: layer_range {list(src.layer_range)} exceeds the "
                                  f"{maps[src.model].num_layers} layers of {src.model}")
        for i in range(n):
            t = i / (n - 1) if n > 1 else 1.0
            layers.append(_Layer(si, [(s.model, s.layer_range[0] + i) for s in sl.sources], t))
    return layers


def _first_prefix(amap: ArchMap, default: str | None) -> str | None:
    """The layer prefix (``model.layers``) of a model's mapped tensors, else ``default``."""
    return next((r.prefix for r in amap.roles.values() if r.prefix), default)


class _PlanBuilder:
    """The state of one :func:`build_plan` call: tasks and report rows are added tensor by tensor."""

    def __init__(self, recipe: Recipe, spec: MethodSpec, checkpoints: dict[str, Checkpoint],
                 maps: dict[str, ArchMap], slices: list[OutputSlice], vocab: ChildVocab | None):
        self.recipe, self.spec, self.checkpoints, self.maps, self.slices = recipe, spec, checkpoints, maps, slices
        self.vocab = vocab
        self.rows = {m: embedding_rows(ck) for m, ck in checkpoints.items()} if vocab is not None else {}
        self.model_params = {m.model: m.parameters for m in recipe.models or []}
        self.base_global = recipe.base_model
        self.models = recipe.referenced_models()
        self.reference = self.base_global or slices[0].sources[0].model
        self.labels = {m: chr(ord("A") + i) for i, m in enumerate(self.models)}
        self.layers = _child_layers(slices, maps)
        # a slice's base is included only when set
        self.participants = cast("list[str]", list(dict.fromkeys(
            m for sl in slices for m in [s.model for s in sl.sources] + ([self.slice_base(sl)] if self.slice_base(sl)
                                                                          else []))))
        self.out_tied = all(maps[m].tied for m in self.participants)
        self.tasks: list[TensorTask] = []
        self.report: list[ReportRow] = []

    def slice_base(self, sl: OutputSlice) -> str | None:
        """The base model of a slice, or None when the method takes none."""
        return (sl.base_model or self.base_global) if self.spec.base != "unused" else None

    # ---- one child tensor
    def add(self, out_name: str, role: TensorRole, sl: OutputSlice, entries: list[tuple[str, str | None]],
            t: float, out_layer: int | None) -> None:
        """entries: (model, stored name or None) for each slice source, base included."""
        shapes = {m: (tuple(self.checkpoints[m].meta[n].shape) if n else None) for m, n in entries}
        vocab = self._is_vocab(role, shapes)
        if vocab:
            assert self.vocab is not None  # _is_vocab is False without a child vocabulary
            shapes = {m: (self.vocab.rows, *s[1:]) if s else None for m, s in shapes.items()}
        action, detail = tensor_verdict(shapes, self.labels)
        if action not in ("blend", "transplant"):
            self.report.append(ReportRow(out_name, action, detail))
            return
        inputs, base_src = self._split_base(sl, cast("list[tuple[str, str]]", entries))
        n_in = len(inputs)
        spec = self.spec
        if n_in < spec.min_parents or (spec.max_parents is not None and n_in > spec.max_parents):
            want = (f"exactly {spec.min_parents}" if spec.max_parents == spec.min_parents else
                    f"at least {spec.min_parents}" if spec.max_parents is None else
                    f"{spec.min_parents} to {spec.max_parents}")
            base_note = " besides the base model" if spec.base != "unused" and base_src is not None else ""
            raise RecipeError(f"merge_method {spec.name!r} needs {want} parent(s){base_note}, got {n_in} "
                              f"(at {out_name}){_FEW_HINT.get(spec.name, '')}")
        shared, parent = self._parameters(sl, inputs, out_name, t)
        seeds = [tensor_seed(self.recipe.seed, out_name, i) for i in range(n_in)] if spec.random else None
        shape = next(s for s in shapes.values() if s is not None)
        task_action: TaskAction = ("transplant" if n_in + (base_src is not None) == 1 or spec.name == "passthrough"
                                   else "blend")
        self.tasks.append(TensorTask(out_name=out_name, shape=shape, method=spec.name, inputs=inputs, base=base_src,
                                     shared=shared, parent=parent, seeds=seeds, component=role.component,
                                     layer=out_layer, action=task_action, vocab=vocab,
                                     units=merge_units(out_name, shape, self.checkpoints[self.reference].config)))
        self.report.append(ReportRow(out_name, task_action, detail + (" rows mapped by token" if vocab else "")))

    def _is_vocab(self, role: TensorRole, shapes: dict[str, tuple[int, ...] | None]) -> bool:
        """A vocabulary tensor of a surgery plan: an embedding or head whose first dimension is each
        parent's embedding rows."""
        return self.vocab is not None and role.component in ("embed", "head") and all(
            s is None or (len(s) >= 1 and s[0] == self.rows[m]) for m, s in shapes.items())

    def _split_base(self, sl: OutputSlice, entries: list[tuple[str, str]]) -> tuple[list[Source], Source | None]:
        """(non-base inputs, base input) of a tensor whose entries all have it."""
        base_ref, base_src, inputs = self.slice_base(sl), None, []
        for m, n in entries:
            if base_ref is not None and m == base_ref and base_src is None:
                base_src = Source(m, n)
            else:
                inputs.append(Source(m, n))
        return inputs, base_src

    def _parameters(self, sl: OutputSlice, inputs: list[Source], out_name: str, t: float
                    ) -> tuple[dict[str, Any], dict[str, list[Any]]]:
        """Shared and per-parent parameter values of one tensor (precedence: see :mod:`darwin.plan.params`)."""
        shared: dict[str, Any] = {}
        parent: dict[str, list[Any]] = {}
        recipe, spec = self.recipe, self.spec
        for p in spec.params:
            if p.scope == "shared":
                v = P.resolve(p.name, [sl.parameters, recipe.parameters], out_name, t)
                v = p.default if v is None else v
                if v is None and p.required:
                    raise RecipeError(f"missing required parameter {p.name!r} for {out_name}")
                shared[p.name] = _coerce(spec, p.name, v, out_name)
                continue
            vals = []
            for src in inputs:
                sl_src = next((s for s in sl.sources if s.model == src.model), None)
                v = P.resolve(p.name, [sl_src.parameters if sl_src else None, sl.parameters,
                                       self.model_params.get(src.model), recipe.parameters], src.tensor, t)
                v = p.default if v is None else v
                if v is None:
                    raise RecipeError(f"missing required parameter {p.name!r} for model {src.model} at {out_name}")
                vals.append(_coerce(spec, p.name, v, f"{src.model}:{out_name}"))
            parent[p.name] = vals
        if spec.name in ("della", "della_linear"):
            _check_della(parent, inputs, out_name)
        return shared, parent

    def entries_for(self, sl: OutputSlice, pairs: list[tuple[str, str]], base_name: str
                    ) -> list[tuple[str, str | None]]:
        """Resolve stored names; add the base (at ``base_name``) when it is not a slice source."""
        base_ref = self.slice_base(sl)
        if base_ref is not None and base_ref not in [m for m, _ in pairs]:
            pairs = pairs + [(base_ref, base_name)]
        return [(m, self.maps[m].stored_name(name, self.checkpoints[m], self.out_tied)) for m, name in pairs]

    # ---- groups of tensors
    def non_layer(self, sl: OutputSlice, which: str) -> None:
        """Tensors outside the layers: ``pre`` (embeddings, other) or ``post`` (final norm, head)."""
        maps, ref_map = self.maps, self.maps[self.reference]
        models_here = [s.model for s in sl.sources]
        names: list[str] = []
        for m in models_here:
            for n, r in maps[m].roles.items():
                if r.layer is None and n not in names and \
                        ((which == "pre") == (r.component in ("embed", "other"))):
                    names.append(n)
        if which == "post" and not self.out_tied and \
                not any(maps[m].head_name in self.checkpoints[m] for m in models_here):
            names.append(ref_map.head_name)
        for n in names:
            role = ref_map.roles.get(n) or next((maps[m].roles[n] for m in models_here if n in maps[m].roles),
                                                TensorRole(n, "head", None, None, n))
            self.add(n, role, sl, self.entries_for(sl, [(m, n) for m in models_here], n), 0.0, None)

    def layer(self, j: int, lay: _Layer) -> None:
        """Child layer ``j``: one task per tensor of the reference's source layer; rows for tensors only
        another source layer has."""
        maps, sl = self.maps, self.slices[lay.slice_index]
        ref_model, ref_layer = next(((m, i) for m, i in lay.sources if m == self.reference), lay.sources[0])
        templates = list(maps[ref_model].layer_tensors(ref_layer))
        seen_rest = {r.rest for r in templates}
        out_prefix = _first_prefix(maps[self.reference], templates[0].prefix if templates else "")
        for r in templates:
            pairs = [(m, f"{_first_prefix(maps[m], r.prefix)}.{i}.{r.rest}") for m, i in lay.sources]
            base_ref = sl.base_model or self.base_global
            base_name = f"{_first_prefix(maps[base_ref], r.prefix)}.{lay.sources[0][1]}.{r.rest}" if base_ref else ""
            self.add(f"{out_prefix}.{j}.{r.rest}", r, sl, self.entries_for(sl, pairs, base_name), lay.t, j)
        for m, i in lay.sources:
            for r in maps[m].layer_tensors(i):
                if r.rest not in seen_rest:
                    seen_rest.add(r.rest)
                    self.report.append(ReportRow(f"{out_prefix}.{j}.{r.rest}", f"only-in-{self.labels[m]}",
                                                 f"layer {i} of {self.labels[m]} has it, layer {ref_layer} of the "
                                                 "reference does not"))

    # ---- the plan
    def finish(self) -> MergePlan:
        """Config-level checks, the child config and dtype; the plan, or the CompatibilityError listing
        every problem (with the plan attached)."""
        recipe, ck, ref = self.recipe, self.checkpoints, self.reference
        checks = config_checks({m: ck[m].config for m in self.participants},
                               {m: ck[m].path for m in self.participants}, self.labels,
                               same_depth=recipe.slices is None, check_tokenizer=recipe.vocabulary_source is None)
        if self.vocab is not None:  # the rows are mapped by token, so the parents' sizes may differ
            checks = [c for c in checks if c[0] != "vocab_size"]
            checks.append(("tokenizer", True, describe(self.vocab, self.labels, str(recipe.vocabulary_source))))
        out_dtype = (parse_dtype(recipe.out_dtype, "out_dtype") or parse_dtype(recipe.dtype)
                     or parse_dtype(ck[ref].config.get("torch_dtype") or ck[ref].config.get("dtype")) or torch.float32)
        layer_sources = [next((i for m, i in lay.sources if m == ref), lay.sources[0][1]) for lay in self.layers] \
            if recipe.slices is not None else None
        config = child_config(ck[ref].config, dtype=out_dtype, tied=self.out_tied, layer_sources=layer_sources)
        text = config["text_config"] if isinstance(config.get("text_config"), dict) else config
        if self.vocab is not None:
            text["vocab_size"] = self.vocab.rows
        src = as_parent(str(recipe.vocabulary_source), self.models) if recipe.vocabulary_source else None
        if src in ck and src != ref:  # the special-token ids follow the tokenizer
            src_text = ck[src].config.get("text_config") or ck[src].config
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                if key in src_text:
                    text[key] = src_text[key]
        plan = MergePlan(tasks=self.tasks, models=self.models, reference=ref, config=config, out_dtype=out_dtype,
                         tied=self.out_tied, tokenizer_source=_tokenizer_source(recipe, ref),
                         chat_template=resolve_chat_template(recipe.chat_template, {m: c.path for m, c in ck.items()}),
                         report=self.report, checks=checks,
                         method=self.spec.name, recipe=recipe.model_dump(exclude_none=True), vocab=self.vocab)
        problems = [f"{r.tensor}: {r.action} ({r.detail})" for r in self.report
                    if r.action not in ("blend", "transplant")]
        problems += [f"{name} differs: {detail}" for name, ok, detail in checks if not ok]
        if recipe.vocabulary_source is None and any(not ok and name in ("tokenizer", "vocab_size")
                                                    for name, ok, _ in checks):
            problems.insert(0, "the parents' vocabularies differ: set tokenizer_source (union, base or a parent) "
                               "to map their rows by token")
        if any(".experts." in r.tensor and r.action.startswith("only-in") for r in self.report):
            problems.insert(0, "expert tensors are missing in some parents: they may store experts in different "
                               "layouts (per expert or fused); save every parent with the same transformers version")
        if problems:
            err = CompatibilityError("parents are not compatible: " + "; ".join(problems[:6])
                                     + (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""))
            err.plan = plan
            raise err
        return plan


def _tokenizer_source(recipe: Recipe, reference: str) -> str:
    ts = recipe.vocabulary_source
    if ts is None or ts in ("base", "union"):
        return recipe.base_model or reference
    return ts
