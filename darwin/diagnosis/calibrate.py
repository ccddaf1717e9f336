"""Calibration statistics for width pruning: Grams of the inputs of ``down_proj`` and ``o_proj``.

Forward passes only (``torch.no_grad``), with forward pre-hooks on every decoder layer's
``mlp.down_proj`` (the FFN activations ``h``) and ``self_attn.o_proj`` (the concatenated heads ``z``).
Each batch's ``XᵀX`` is computed in float32 and added to a float64 accumulator (:meth:`InputStats.of`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from darwin.plan.width import InputStats

#: the sub-modules whose inputs are collected, by role
TARGETS = {"ffn": ("mlp", "down_proj"), "attn": ("self_attn", "o_proj")}


def _layers(model: Any) -> list[Any]:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers at model.layers (a llama-family model is needed)")
    return list(layers)


def collect_stats(model: Any, windows: Iterable[torch.Tensor], *, roles: tuple[str, ...] = ("ffn", "attn"),
                  progress: Any = None) -> dict[str, list[InputStats]]:
    """Run ``model`` over token ``windows`` and gather each layer's input statistics per role.

    Args:
        model: a loaded causal LM with ``model.layers[i].mlp.down_proj`` / ``.self_attn.o_proj``.
        windows: ``[B, T]`` token id batches.
        roles: ``ffn`` (``down_proj`` inputs) and/or ``attn`` (``o_proj`` inputs).
        progress: called with no argument after each batch (a progress bar's advance).

    Returns:
        role → one :class:`InputStats` per layer.

    Raises:
        ValueError: the model has no ``model.layers`` or a layer lacks the module.
    """
    layers = _layers(model)
    stats: dict[str, list[InputStats | None]] = {r: [None] * len(layers) for r in roles}
    handles = []

    def hook(role: str, i: int):
        def fn(_module, args):
            batch, s = InputStats.of(args[0]), stats[role][i]
            stats[role][i] = batch if s is None else s.add(batch)
        return fn

    try:
        for role in roles:
            parent, child = TARGETS[role]
            for i, layer in enumerate(layers):
                mod = getattr(getattr(layer, parent, None), child, None)
                if mod is None:
                    raise ValueError(f"layer {i}: no {parent}.{child} (a llama-family model is needed)")
                handles.append(mod.register_forward_pre_hook(hook(role, i)))
        with torch.no_grad():
            for ids in windows:
                model(input_ids=ids.to(next(model.parameters()).device))
                if progress is not None:
                    progress()
    finally:
        for h in handles:
            h.remove()
    return {r: [s for s in v if s is not None] for r, v in stats.items()}
