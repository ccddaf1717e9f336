"""Derive a child's ``config.json`` from a parent's: dtype, tying, and layer slicing.

When a frankenmerge changes the layer count, every per-layer setting must follow: the layer-count
key itself, lists with one entry per layer (``layer_types``, ``block_types``, …), and lists of
layer indices (Bamba's ``attn_layer_indices``, Jamba-style ``*_layer_indices``). A list is taken
as per-layer when its length equals the layer count, except for the known fixed-length settings in
:data:`FIXED_LISTS` (a 2-layer Mamba2's ``time_step_limit`` is a ``(min, max)`` pair, not per-layer).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from darwin.arch.mapper import LAYER_COUNT_KEYS

# List-valued settings that never hold one entry per layer, whatever their length.
FIXED_LISTS = frozenset({"architectures", "time_step_limit", "bos_token_id", "eos_token_id", "pad_token_id"})

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                torch.float64: "float64"}


def dtype_name(dtype: torch.dtype) -> str:
    """The config.json spelling of a floating dtype (``torch.bfloat16`` → ``"bfloat16"``)."""
    return _DTYPE_NAMES[dtype]


def slice_config(config: dict[str, Any], layer_sources: list[int]) -> dict[str, Any]:
    """Rewrite per-layer settings for a child whose layer ``j`` comes from parent layer ``layer_sources[j]``.

    Args:
        config: the parent config dict (not modified).
        layer_sources: for each child layer, the index of the parent layer it was built from.

    Returns:
        a new config dict with the layer count, per-layer lists and layer-index lists remapped.
    """
    cfg = copy.deepcopy(config)
    target = cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg
    old = next((target[k] for k in LAYER_COUNT_KEYS if isinstance(target.get(k), int)), None)
    for k in LAYER_COUNT_KEYS:
        if isinstance(target.get(k), int):
            target[k] = len(layer_sources)
    if old is None:
        return cfg
    for key, value in list(target.items()):
        if key in FIXED_LISTS:
            continue
        if isinstance(value, list) and len(value) == old and not key.endswith("_indices"):
            target[key] = [value[i] for i in layer_sources]
        elif isinstance(value, list) and key.endswith("_indices") and all(isinstance(v, int) for v in value):
            chosen = set(value)
            target[key] = [j for j, i in enumerate(layer_sources) if i in chosen]
        elif isinstance(value, str) and len(value) == old and key.endswith("_pattern"):
            target[key] = "".join(value[i] for i in layer_sources)
    return cfg


def child_config(config: dict[str, Any], *, dtype: torch.dtype, tied: bool,
                 layer_sources: list[int] | None = None) -> dict[str, Any]:
    """A child config: the parent's, with dtype, tying and (optionally) sliced layers.

    Quantisation settings are removed (a merged child is plain floating point).
    """
    cfg = slice_config(config, layer_sources) if layer_sources is not None else copy.deepcopy(config)
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = dtype_name(dtype)
    cfg["dtype"] = dtype_name(dtype)
    cfg["tie_word_embeddings"] = tied
    return cfg


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


def context_length(config: dict[str, Any]) -> int | None:
    """The context window a config declares (``max_position_embeddings`` or its family alias).

    Returns None for families without a declared limit (pure SSMs such as Mamba-2).
    """
    cfg = config["text_config"] if isinstance(config.get("text_config"), dict) else config
    for k in CONTEXT_KEYS:
        if isinstance(cfg.get(k), int):
            return cfg[k]
    return None


_SPECIAL_FLOATS = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def decode_special_floats(obj: Any) -> Any:
    """Undo transformers' JSON tagging of non-finite floats (``{"__float__": "Infinity"}`` → ``inf``).

    transformers ≥ 5 writes ``inf``/``nan`` config values (e.g. Mamba-2's ``time_step_limit``) in
    this form; a config dict read with plain ``json`` must be decoded before it builds a config.
    """
    if isinstance(obj, dict):
        if set(obj) == {"__float__"} and obj["__float__"] in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[obj["__float__"]]
        return {k: decode_special_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_special_floats(v) for v in obj]
    return obj
