"""Resolve recipe parameter settings for one tensor: filters, gradients, precedence.

Semantics follow mergekit's recipe format so its configs give the same numbers:

* a scalar applies everywhere;
* a list of numbers is a gradient over the layers of a slice, sampled at
  ``t = i / (L − 1)`` for the slice's i-th layer (``t = 1`` for a one-layer slice; ``t = 0`` for
  embeddings, final norm and head) by piecewise-linear interpolation;
* a list of ``{filter, value}`` conditionals: the first whose ``filter`` is a substring of the
  tensor name (or is absent / ``"*"``) applies; none matching means "not set here";
* precedence: slice source > slice > model entry > global ``parameters`` > the method's default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from darwin.plan.recipe import Conditional


def evaluate(setting: Any, tensor_name: str, t: float) -> Any:
    """Value of one setting for ``tensor_name`` at gradient position ``t`` in [0, 1] (None if unset)."""
    if isinstance(setting, Conditional):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, Conditional) for e in setting):
            for cond in setting:
                if cond.filter in (None, "*") or cond.filter in tensor_name:
                    return evaluate(cond.value, tensor_name, t)
            return None
        if all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
            pos = t * (len(setting) - 1)
            i0 = int(pos)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = pos - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        return setting[int(t * (len(setting) - 1))]
    raise ValueError(f"unexpected parameter setting {setting!r}")


def resolve(name: str, scopes: Iterable[Mapping[str, Any] | None], tensor_name: str, t: float) -> Any:
    """First non-None value of parameter ``name`` across ``scopes`` (highest precedence first)."""
    for scope in scopes:
        if scope and name in scope:
            v = evaluate(scope[name], tensor_name, t)
            if v is not None:
                return v
    return None
