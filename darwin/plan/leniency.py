"""Lenient where mergekit is lenient, and loud about it.

mergekit ignores keys its format does not use and parameters a method does not read. darwin
keeps typos fatal but lets the keys and parameters that are part of mergekit's formats run, with a
:class:`~darwin.errors.DarwinWarning` that says they have no effect and what was probably meant:

* a structural key mergekit's formats use but a merge ignores (``name:`` of mergekit-multi stages
  and model cards) or a parameter written outside ``parameters:`` (a top-level ``normalize:``, a
  model entry's ``weight:``) warns and is dropped;
* a parameter some mergekit or darwin method reads, given to a method that does not read it (a
  per-model ``weight`` on ``slerp`` or ``model_stock``), warns and is ignored;
* a key or parameter nothing knows (``modelz``, ``merge_methd``, ``densty``) is a
  :class:`~darwin.errors.RecipeError` with a "did you mean" hint.

The parameter vocabulary below is the union of the parameter names mergekit 0.1.x documents for its
merge methods (docs/merge_methods.md of arcee-ai/mergekit) and darwin's own.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from darwin.errors import DarwinWarning, RecipeError
from darwin.kernels.methods import METHODS, MethodSpec

#: parameter names mergekit's merge methods read (linear, slerp, nuslerp, multislerp, task
#: arithmetic, TIES, DARE, breadcrumbs, DELLA, model_stock, karcher, SCE, nearswap, arcee_fusion,
#: passthrough), whichever method the recipe names
MERGEKIT_PARAMS = frozenset({
    "weight", "density", "gamma", "epsilon", "lambda", "normalize", "rescale", "int8_mask", "t",
    "filter_wise", "nuslerp_flatten", "nuslerp_row_wise", "normalize_weights", "eps", "max_iter",
    "tol", "select_topk", "scale", "alpha", "r",
})

#: structural keys of mergekit's formats that a merge does not read, per level
_FORMAT_KEYS = {
    "recipe": {"name": "the name of a mergekit-multi stage or model card; darwin merges one recipe"},
    "models": {"name": "a label; it names nothing in the merge"},
    "slices": {"name": "a label; it names nothing in the merge"},
    "sources": {"name": "a label; it names nothing in the merge"},
}

#: keys of the ``tokenizer:`` block, often written at the top level by mistake
_TOKENIZER_KEYS = ("pad_to_multiple_of", "tokens")

#: the levels of a recipe: the top, a ``models`` entry, a ``slices`` entry, a slice source
LEVELS = ("recipe", "models", "slices", "sources")


def _suggest(key: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _warn(msg: str) -> None:
    warnings.warn(msg, DarwinWarning, stacklevel=3)


def _lenient_level(data: dict[str, Any], level: str, where: str, fields: Collection[str]) -> dict[str, Any]:
    """``data`` without the harmless keys of ``level`` (each warned about); typos raise."""
    keep: dict[str, Any] = {}
    for key, value in data.items():
        at = f"{where}.{key}" if where else str(key)
        if key in fields:
            keep[key] = value
        elif key in _FORMAT_KEYS[level]:
            _warn(f"{at} has no effect ({_FORMAT_KEYS[level][key]}); ignored")
        elif key in MERGEKIT_PARAMS and "parameters" in fields:
            scope = f"{where}.parameters" if where else "parameters"
            _warn(f"{at} has no effect outside 'parameters' (mergekit ignores it too); ignored. "
                  f"Probably meant {scope}.{key}")
        elif level == "recipe" and key in _TOKENIZER_KEYS:
            raise RecipeError(f"{at}: unknown key {key!r}; did you mean tokenizer.{key} (inside a tokenizer: block)?")
        else:
            raise RecipeError(f"{at}: unknown key {key!r}" + _suggest(str(key), fields))
    return keep


def lenient_recipe(data: dict[str, Any], source: str, fields: Mapping[str, Collection[str]]) -> dict[str, Any]:
    """The raw recipe mapping with mergekit's harmless keys dropped, each with a warning.

    Args:
        data: the recipe as parsed from YAML (not modified).
        source: the file name (or "recipe"), for messages.
        fields: per level of :data:`LEVELS`, the keys darwin's recipe model accepts there.

    Returns:
        A new mapping that :class:`~darwin.plan.recipe.Recipe` validates strictly.

    Raises:
        RecipeError: a key nothing in mergekit or darwin knows, with a "did you mean" hint.
    """
    try:
        out = _lenient_level(data, "recipe", "", fields["recipe"])
        if isinstance(out.get("models"), list):
            out["models"] = [_lenient_level(m, "models", f"models[{i}]", fields["models"]) if isinstance(m, dict)
                             else m for i, m in enumerate(out["models"])]
        if isinstance(out.get("slices"), list):
            out["slices"] = [_lenient_slice(s, i, fields) if isinstance(s, dict) else s
                             for i, s in enumerate(out["slices"])]
    except RecipeError as e:
        raise RecipeError(f"{source}: invalid recipe: {e}") from None
    return out


def _lenient_slice(sl: dict[str, Any], i: int, fields: Mapping[str, Collection[str]]) -> dict[str, Any]:
    out = _lenient_level(sl, "slices", f"slices[{i}]", fields["slices"])
    if isinstance(out.get("sources"), list):
        out["sources"] = [_lenient_level(s, "sources", f"slices[{i}].sources[{j}]", fields["sources"])
                          if isinstance(s, dict) else s for j, s in enumerate(out["sources"])]
    return out


def known_parameters() -> frozenset[str]:
    """Every parameter name some mergekit or darwin method reads."""
    return MERGEKIT_PARAMS | {p.name for spec in METHODS.values() for p in spec.params}


def check_parameter(key: str, spec: MethodSpec, where: str, reads: set[str]) -> None:
    """Accept, warn about or refuse one parameter name of a recipe.

    Args:
        key: the parameter name as written.
        spec: the recipe's merge method.
        where: the recipe scope, e.g. ``models[1] (b).parameters``.
        reads: the names ``spec`` reads (its parameters and the global-only ones).

    Raises:
        RecipeError: ``key`` is a parameter of no method, with a "did you mean" hint.
    """
    if key in reads:
        return
    known = known_parameters()
    if key in known:
        takes = ", ".join(sorted(reads)) or "none"
        _warn(f"{where}.{key} has no effect with merge_method {spec.name!r} (it reads: {takes}); ignored")
        return
    raise RecipeError(f"{where}: unknown parameter {key!r} for merge_method {spec.name!r}"
                      + (_suggest(key, reads) or _suggest(key, known)) + f" (it reads: {', '.join(sorted(reads))})")
