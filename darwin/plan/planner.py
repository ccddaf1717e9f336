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
from darwin.arch.mapper import ArchMap, TensorRole
from darwin.arch.preflight import config_checks, tensor_verdict
from darwin.errors import CompatibilityError, RecipeError
from darwin.io.checkpoint import Checkpoint
from darwin.kernels.methods import MethodSpec, get_method, normalize_rescale
from darwin.kernels.seeds import tensor_seed
from darwin.plan import params as P
from darwin.plan.plan import MergePlan, ReportRow, Source, TaskAction, TensorTask
from darwin.plan.recipe import InputSlice, OutputSlice, Recipe

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
           "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float64": torch.float64}
_GLOBAL_ONLY = {"int8_mask"}
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
    known = {p.name for p in spec.params} | _GLOBAL_ONLY

    def check(scope: dict[str, Any] | None, where: str) -> None:
        for key in scope or {}:
            if key not in known:
                raise RecipeError(f"{where}: unknown parameter {key!r} for merge_method "
                                  f"{spec.name!r} (known: {', '.join(sorted(known))})")

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
        if p.kind is bool:
            if not isinstance(value, bool):
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
    ts = recipe.tokenizer_source
    if ts not in (None, "base") and ts not in checkpoints and not Path(ts).is_dir():
        raise RecipeError(f"tokenizer_source {ts!r}: not a parent of this recipe and no such folder")
    maps = {ref: ArchMap.build(ck.config, ck.tensor_names) for ref, ck in checkpoints.items()}
    slices = _slices(recipe, maps)
    model_params = {m.model: m.parameters for m in recipe.models or []}
    base_global = recipe.base_model
    if spec.base == "required" and not (base_global or all(s.base_model for s in slices)):
        raise RecipeError(f"merge_method {spec.name!r} needs a base_model")

    models = recipe.referenced_models()
    reference = base_global or slices[0].sources[0].model
    labels = {m: chr(ord("A") + i) for i, m in enumerate(models)}

    # ---- child layers
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

    # a slice's base is included only when set
    participants = cast("list[str]", list(dict.fromkeys(m for sl in slices for m in [s.model for s in sl.sources]
                                                        + ([sl.base_model or base_global] if spec.base != "unused" and
                                                           (sl.base_model or base_global) else []))))
    out_tied = all(maps[m].tied for m in participants)

    tasks: list[TensorTask] = []
    report: list[ReportRow] = []

    def add(out_name: str, role: TensorRole, sl: OutputSlice, entries: list[tuple[str, str | None]],
            t: float, out_layer: int | None) -> None:
        """entries: (model, stored name or None) for each slice source, base included."""
        base_ref = (sl.base_model or base_global) if spec.base != "unused" else None
        shapes = {m: (tuple(checkpoints[m].meta[n].shape) if n else None) for m, n in entries}
        action, detail = tensor_verdict(shapes, labels)
        if action not in ("blend", "transplant"):
            report.append(ReportRow(out_name, action, detail))
            return
        base_src = None
        inputs: list[Source] = []
        # blend / transplant verdict: the inputs have the tensor (stored name set)
        for m, n in cast("list[tuple[str, str]]", entries):
            if base_ref is not None and m == base_ref and base_src is None:
                base_src = Source(m, n)
            else:
                inputs.append(Source(m, n))
        n_in = len(inputs)
        if n_in < spec.min_parents or (spec.max_parents is not None and n_in > spec.max_parents):
            raise RecipeError(f"merge_method {spec.name!r} takes {spec.min_parents}"
                              f"{'' if spec.max_parents == spec.min_parents else '+'} non-base parent(s), "
                              f"got {n_in} for {out_name}")
        shared, parent = {}, {}
        for p in spec.params:
            if p.scope == "shared":
                v = P.resolve(p.name, [sl.parameters, recipe.parameters], out_name, t)
                v = p.default if v is None else v
                if v is None and p.required:
                    raise RecipeError(f"missing required parameter {p.name!r} for {out_name}")
                shared[p.name] = _coerce(spec, p.name, v, out_name)
            else:
                vals = []
                for src in inputs:
                    sl_src = next((s for s in sl.sources if s.model == src.model), None)
                    v = P.resolve(p.name, [sl_src.parameters if sl_src else None, sl.parameters,
                                           model_params.get(src.model), recipe.parameters], src.tensor, t)
                    v = p.default if v is None else v
                    if v is None:
                        raise RecipeError(f"missing required parameter {p.name!r} for model "
                                          f"{src.model} at {out_name}")
                    vals.append(_coerce(spec, p.name, v, f"{src.model}:{out_name}"))
                parent[p.name] = vals
        seeds = None
        if spec.random:
            seeds = [tensor_seed(recipe.seed, out_name, i) for i in range(n_in)]
        shape = next(s for s in shapes.values() if s is not None)
        task_action: TaskAction = ("transplant" if n_in + (base_src is not None) == 1 or spec.name == "passthrough"
                                   else "blend")
        tasks.append(TensorTask(out_name=out_name, shape=shape, method=spec.name, inputs=inputs, base=base_src,
                                shared=shared, parent=parent, seeds=seeds, component=role.component,
                                layer=out_layer, action=task_action))
        report.append(ReportRow(out_name, task_action, detail))

    def entries_for(sl: OutputSlice, pairs: list[tuple[str, str]], base_name: str) -> list[tuple[str, str | None]]:
        """Resolve stored names; add the base (at ``base_name``) when it is not a slice source."""
        base_ref = (sl.base_model or base_global) if spec.base != "unused" else None
        if base_ref is not None and base_ref not in [m for m, _ in pairs]:
            pairs = pairs + [(base_ref, base_name)]
        return [(m, maps[m].stored_name(name, checkpoints[m], out_tied)) for m, name in pairs]

    ref_map = maps[reference]

    def non_layer(sl: OutputSlice, which: str) -> None:
        models_here = [s.model for s in sl.sources]
        names: list[str] = []
        for m in models_here:
            for n, r in maps[m].roles.items():
                if r.layer is None and n not in names and \
                        ((which == "pre") == (r.component in ("embed", "other"))):
                    names.append(n)
        if which == "post" and not out_tied and not any(maps[m].head_name in checkpoints[m] for m in models_here):
            names.append(ref_map.head_name)
        for n in names:
            role = ref_map.roles.get(n) or next((maps[m].roles[n] for m in models_here if n in maps[m].roles),
                                                TensorRole(n, "head", None, None, n))
            add(n, role, sl, entries_for(sl, [(m, n) for m in models_here], n), 0.0, None)

    non_layer(slices[0], "pre")
    for j, lay in enumerate(layers):
        sl = slices[lay.slice_index]
        ref_model, ref_layer = next(((m, i) for m, i in lay.sources if m == reference), lay.sources[0])
        rmap = maps[ref_model]
        templates = [r for r in rmap.layer_tensors(ref_layer)]
        seen_rest = {r.rest for r in templates}
        out_prefix = next((r.prefix for r in ref_map.roles.values() if r.prefix), templates[0].prefix if templates else "")
        for r in templates:
            out_name = f"{out_prefix}.{j}.{r.rest}"
            pairs = []
            for m, i in lay.sources:
                pre = next((x.prefix for x in maps[m].roles.values() if x.prefix), r.prefix)
                pairs.append((m, f"{pre}.{i}.{r.rest}"))
            base_ref = sl.base_model or base_global
            base_name = f"{next((x.prefix for x in maps[base_ref].roles.values() if x.prefix), r.prefix)}" \
                        f".{lay.sources[0][1]}.{r.rest}" if base_ref else ""
            add(out_name, r, sl, entries_for(sl, pairs, base_name), lay.t, j)
        for m, i in lay.sources:
            for r in maps[m].layer_tensors(i):
                if r.rest not in seen_rest:
                    seen_rest.add(r.rest)
                    report.append(ReportRow(f"{out_prefix}.{j}.{r.rest}", f"only-in-{labels[m]}",
                                            f"layer {i} of {labels[m]} has it, layer {ref_layer} of the reference does not"))
    non_layer(slices[-1], "post")

    # ---- config-level checks
    configs = {m: checkpoints[m].config for m in participants}
    folders = {m: checkpoints[m].path for m in participants}
    tok_src = _tokenizer_source(recipe, reference)
    checks = config_checks(configs, folders, labels, same_depth=recipe.slices is None,
                           check_tokenizer=recipe.tokenizer_source is None)

    out_dtype = (parse_dtype(recipe.out_dtype, "out_dtype") or parse_dtype(recipe.dtype)
                 or parse_dtype(checkpoints[reference].config.get("torch_dtype")
                                or checkpoints[reference].config.get("dtype")) or torch.float32)
    layer_sources = [next((i for m, i in lay.sources if m == reference), lay.sources[0][1]) for lay in layers] \
        if recipe.slices is not None else None
    config = child_config(checkpoints[reference].config, dtype=out_dtype, tied=out_tied,
                          layer_sources=layer_sources)
    plan = MergePlan(tasks=tasks, models=models, reference=reference, config=config, out_dtype=out_dtype,
                     tied=out_tied, tokenizer_source=tok_src, chat_template=recipe.chat_template, report=report,
                     checks=checks, method=spec.name, recipe=recipe.model_dump(exclude_none=True))
    problems = [f"{r.tensor}: {r.action} ({r.detail})" for r in report if r.action not in ("blend", "transplant")]
    problems += [f"{name} differs: {detail}" for name, ok, detail in checks if not ok]
    if problems:
        err = CompatibilityError("parents are not compatible: " + "; ".join(problems[:6])
                                 + (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""))
        err.plan = plan
        raise err
    return plan


def _tokenizer_source(recipe: Recipe, reference: str) -> str:
    ts = recipe.tokenizer_source
    if ts is None or ts == "base":
        return recipe.base_model or reference
    return ts
