"""The merge recipe: mergekit's YAML format, validated strictly.

Existing mergekit configs run unchanged: ``models`` or ``slices``, ``merge_method``,
``base_model``, ``parameters`` (scalars, gradients, ``filter`` conditionals; global, per model,
per slice and per slice source), ``dtype``, ``out_dtype``, ``tokenizer_source``, ``chat_template``.
A misspelt key is an error naming it, with a "did you mean" hint; keys of mergekit's formats that a
merge does not read (``name:``, a top-level ``normalize:``) warn and are dropped
(:mod:`darwin.plan.leniency`).

darwin extensions: ``seed`` (integer seeding DARE/DELLA masks, default 0).
Vocabulary surgery as mergekit documents it: ``tokenizer_source: union | base | <model>`` and the
``tokenizer:`` block (``source``, ``tokens:`` with ``source`` and ``force``, ``pad_to_multiple_of``).
``base+adapter`` references merge a PEFT LoRA adapter into its base as tensors are read.
Not supported (clear error): ``modules``, ``residual_weight``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, StrictInt, ValidationError, model_validator

from darwin.errors import RecipeError, describe_validation_error
from darwin.io.yamlfile import load_yaml_mapping
from darwin.plan.leniency import lenient_recipe

Scalar = Union[bool, float, int, str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Conditional(_Strict):
    """A parameter value applying to tensors whose name contains ``filter`` (all when omitted)."""

    filter: Optional[str] = None
    value: Setting


Setting = Union[Scalar, list[Scalar], list[Conditional], Conditional]
Conditional.model_rebuild()
Parameters = Optional[dict[str, Setting]]


def _check_ref(ref: str) -> str:
    if "+" in ref and not Path(ref).exists() and not all(part.strip() for part in ref.split("+", 1)):
        raise ValueError(f"{ref!r}: a LoRA reference is base+adapter, both parts given")
    return ref


class InputModel(_Strict):
    """An entry of ``models``: a parent and its parameters."""

    model: str
    parameters: Parameters = None

    @model_validator(mode="after")
    def _ref(self):
        _check_ref(self.model)
        return self


class InputSlice(_Strict):
    """A slice source: ``layer_range: [start, end)`` of one model."""

    model: str
    layer_range: tuple[int, int]
    parameters: Parameters = None

    @model_validator(mode="after")
    def _range(self):
        _check_ref(self.model)
        a, b = self.layer_range
        if not 0 <= a < b:
            raise ValueError(f"layer_range {list(self.layer_range)} of {self.model!r} must satisfy 0 <= start < end")
        return self


class OutputSlice(_Strict):
    """An output slice: its sources are merged layer by layer."""

    sources: list[InputSlice]
    base_model: Optional[str] = None
    parameters: Parameters = None
    residual_weight: Optional[float] = None

    @model_validator(mode="after")
    def _check(self):
        if self.residual_weight is not None:
            raise ValueError("residual_weight is not supported")
        if not self.sources:
            raise ValueError("a slice needs at least one source")
        lens = {s.layer_range[1] - s.layer_range[0] for s in self.sources}
        if len(lens) > 1:
            raise ValueError(f"all sources of a slice must span the same number of layers, got {sorted(lens)}")
        return self


class ModelTokenEmbedding(_Strict):
    """A ``tokens:`` source: the row of ``token`` (or ``token_id``) in ``model``."""

    kind: Literal["model_token"]
    model: str
    token: Optional[str] = None
    token_id: Optional[int] = None

    @model_validator(mode="after")
    def _one(self):
        if (self.token is None) == (self.token_id is None):
            raise ValueError("a model_token source needs exactly one of 'token' or 'token_id'")
        return self


class ZeroEmbedding(_Strict):
    """A ``tokens:`` source: a zero vector."""

    kind: Literal["zero"]


class TokenEmbedding(_Strict):
    """One ``tokens:`` entry: where the token's rows come from, and whether every parent uses it."""

    source: Union[ModelTokenEmbedding, ZeroEmbedding, str, None] = None
    force: bool = False


#: the largest ``pad_to_multiple_of`` accepted (GPU-friendly values are 8 to 256)
MAX_PAD = 1 << 16


class TokenizerSpec(_Strict):
    """The ``tokenizer:`` block (mergekit's ``TokenizerConfig``)."""

    source: str = "union"
    tokens: Optional[dict[str, TokenEmbedding]] = None
    pad_to_multiple_of: Optional[StrictInt] = None

    @model_validator(mode="after")
    def _pad(self):
        if self.pad_to_multiple_of is not None and not 1 <= self.pad_to_multiple_of <= MAX_PAD:
            raise ValueError(f"pad_to_multiple_of must be an integer from 1 to {MAX_PAD}, got {self.pad_to_multiple_of}")
        if not self.source.strip():
            raise ValueError("tokenizer.source is empty: give union, base or a model")
        return self


class Recipe(_Strict):
    """A merge recipe (mergekit-compatible YAML)."""

    merge_method: str
    models: Optional[list[InputModel]] = None
    slices: Optional[list[OutputSlice]] = None
    modules: Optional[dict[str, Any]] = None
    base_model: Optional[str] = None
    parameters: Parameters = None
    dtype: Optional[str] = None
    out_dtype: Optional[str] = None
    tokenizer_source: Optional[str] = None
    tokenizer: Optional[TokenizerSpec] = None
    chat_template: Optional[str] = None
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        if self.modules is not None:
            raise ValueError("'modules' (multi-module merges) is not supported; use 'models' or 'slices'")
        if self.tokenizer is not None and self.tokenizer_source is not None:
            raise ValueError("give one of 'tokenizer_source' or 'tokenizer' (whose 'source' says the same), not both")
        for key in ("tokenizer_source", "chat_template"):
            value = getattr(self, key)
            if isinstance(value, str) and not value.strip():
                raise ValueError(f"'{key}' is empty: leave it out or give a value")
        if (self.models is None) == (self.slices is None):
            raise ValueError("give exactly one of 'models' or 'slices'")
        if self.models is not None and not self.models:
            raise ValueError("'models' is empty: give at least one model")
        seen: dict[str, int] = {}
        for i, m in enumerate(self.models or []):
            key = str(Path(m.model).expanduser().resolve()) if Path(m.model).expanduser().exists() else m.model
            if key in seen:
                raise ValueError(f"models[{i}] ({m.model}) is the same model as models[{seen[key]}]; list each "
                                 "parent once (give it a larger weight instead)")
            seen[key] = i
        if self.slices is not None and not self.slices:
            raise ValueError("'slices' is empty: give at least one slice")
        if self.base_model is not None:
            _check_ref(self.base_model)
        return self

    @property
    def vocabulary_source(self) -> str | None:
        """The child's tokenizer: the ``tokenizer:`` block's source, else ``tokenizer_source``
        (``union``, ``base`` or a model), else None (the parents must share a tokenizer)."""
        return self.tokenizer.source if self.tokenizer is not None else self.tokenizer_source

    def referenced_models(self) -> list[str]:
        """Every model the recipe names, base first, without duplicates, in order of mention."""
        refs = [self.base_model] if self.base_model else []
        for m in self.models or []:
            refs.append(m.model)
        for s in self.slices or []:
            refs.extend(src.model for src in s.sources)
            if s.base_model:
                refs.append(s.base_model)
        return list(dict.fromkeys(refs))


def load_recipe(recipe: Recipe | dict[str, Any] | str | os.PathLike) -> Recipe:
    """Load and validate a recipe from a YAML path, a YAML string, a dict or a Recipe.

    Relative model paths in a YAML file are resolved against the file's folder when they exist
    there.

    Raises:
        RecipeError: unreadable file, invalid YAML, unknown key or bad value (the message names
            the file and the key).
    """
    if isinstance(recipe, Recipe):
        return recipe
    source = "recipe"
    base_dir: Path | None = None
    if isinstance(recipe, (str, os.PathLike)) and (isinstance(recipe, os.PathLike) or "\n" not in recipe):
        path = Path(recipe)
        source, base_dir = str(path), path.resolve().parent
        data = load_yaml_mapping(path, "recipe")
    elif isinstance(recipe, str):
        try:
            data = yaml.safe_load(recipe)
        except yaml.YAMLError as e:
            raise RecipeError(f"recipe: invalid YAML ({e})") from e
    else:
        data = recipe
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping")
    data = lenient_recipe(data, source, {"recipe": Recipe.model_fields, "models": InputModel.model_fields,
                                         "slices": OutputSlice.model_fields, "sources": InputSlice.model_fields})
    try:
        parsed = Recipe.model_validate(data)
    except ValidationError as e:
        raise describe_validation_error(source, "recipe", e) from None
    if base_dir is not None:
        parsed = _resolve_paths(parsed, base_dir)
    return parsed


def _resolve_paths(recipe: Recipe, base_dir: Path) -> Recipe:
    def fix(ref: str | None) -> str | None:
        if ref is None or Path(ref).is_absolute() or Path(ref).exists():
            return ref
        if "+" in ref and not (base_dir / ref).exists():  # base+adapter: each part
            return "+".join(str(fix(part)) for part in ref.split("+", 1))
        cand = base_dir / ref
        return str(cand) if cand.exists() else ref

    data = recipe.model_dump()
    data["base_model"] = fix(data["base_model"])
    if data.get("tokenizer_source") not in (None, "base", "union"):
        data["tokenizer_source"] = fix(data["tokenizer_source"])
    tk = data.get("tokenizer")
    if tk is not None:
        if tk["source"] not in ("base", "union"):
            tk["source"] = fix(tk["source"])
        for entry in (tk.get("tokens") or {}).values():
            src = entry.get("source")
            if isinstance(src, str):
                entry["source"] = fix(src)
            elif isinstance(src, dict) and "model" in src:
                src["model"] = fix(src["model"])
    for m in data.get("models") or []:
        m["model"] = fix(m["model"])
    for s in data.get("slices") or []:
        s["base_model"] = fix(s["base_model"])
        for src in s["sources"]:
            src["model"] = fix(src["model"])
    return Recipe.model_validate(data)
