"""Vocabulary trimming for byte-level BPE tokenizers (``tokenizer.json``), as pure functions.

Keeping only the tokens a reference corpus uses shrinks the embedding (and an untied head) by
``(V − V')·d`` parameters. The trimmed tokenizer must stay consistent:

* every single-character token (for byte-level BPE: the 256 byte symbols) and every added or
  special token is kept, so any text still encodes (rare words fall back to shorter pieces);
* the kept set is closed under merges: for a kept token produced by merge ``(a, b)``, ``a`` and
  ``b`` are kept too, so the merges that build it can still fire;
* a merge survives when its two inputs and its result are kept, in the original order (rank), so
  text made only of kept tokens tokenizes exactly as before.

Ids are renumbered in the original id order; :func:`trim_bpe_tokenizer` returns the kept old ids
so embedding rows can be selected with the same order.
"""

from __future__ import annotations

import copy
from typing import Any

from darwin.errors import CompatibilityError


def _merge_pair(m: Any) -> tuple[str, str]:
    if isinstance(m, str):
        a, _, b = m.partition(" ")
        return a, b
    return m[0], m[1]


def bpe_closure(vocab: dict[str, int], merges: list[Any], keep: set[str]) -> set[str]:
    """``keep`` plus, recursively, both inputs of every merge that produces a kept token."""
    producers: dict[str, list[tuple[str, str]]] = {}
    for m in merges:
        a, b = _merge_pair(m)
        producers.setdefault(a + b, []).append((a, b))
    out = set(keep)
    stack = list(keep)
    while stack:
        t = stack.pop()
        for a, b in producers.get(t, ()):
            for x in (a, b):
                if x in vocab and x not in out:
                    out.add(x)
                    stack.append(x)
    return out


def _remap_ids(node: Any, new_id: dict[int, int]) -> Any:
    """Rewrite ``"id"``/``"ids"`` integers in a post-processor's ``special_tokens`` mapping."""
    if isinstance(node, dict):
        out: dict[Any, Any] = {}
        for k, v in node.items():
            if k in ("sep", "cls") and isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                out[k] = [v[0], new_id[v[1]]]  # RobertaProcessing / BertProcessing
            elif k == "ids" and isinstance(v, list):
                out[k] = [new_id[i] for i in v]
            elif k == "id" and isinstance(v, int):
                out[k] = new_id[v]
            else:
                out[k] = _remap_ids(v, new_id)
        return out
    if isinstance(node, list):
        return [_remap_ids(v, new_id) for v in node]
    return node


def trim_bpe_tokenizer(tj: dict[str, Any], keep_ids: set[int]) -> tuple[dict[str, Any], list[int]]:
    """Trim a ``tokenizer.json`` document to ``keep_ids`` (plus what consistency requires).

    Args:
        tj: the parsed ``tokenizer.json`` of a BPE tokenizer.
        keep_ids: ids the reference corpus uses (and any the model config names).

    Returns:
        ``(new_document, kept_old_ids)``: new id ``k`` is old id ``kept_old_ids[k]``.

    Raises:
        CompatibilityError: not a BPE model, or byte fallback / unknown-token settings that
            trimming cannot keep consistent.
    """
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise CompatibilityError(f"vocabulary trimming supports BPE tokenizers, not {model.get('type')!r}")
    if model.get("byte_fallback"):
        raise CompatibilityError("vocabulary trimming does not support byte_fallback BPE (its <0x..> tokens)")
    vocab: dict[str, int] = model["vocab"]
    id_to_tok = {i: t for t, i in vocab.items()}
    added = {a["id"]: a["content"] for a in tj.get("added_tokens", [])}
    keep = {id_to_tok[i] for i in keep_ids if i in id_to_tok}
    keep |= {t for t in vocab if len(t) == 1}              # the byte alphabet: every text still encodes
    keep |= {t for i, t in added.items() if t in vocab}
    if model.get("unk_token") in vocab:
        keep.add(model["unk_token"])
    keep = bpe_closure(vocab, model.get("merges", []), keep)
    kept_old = sorted({vocab[t] for t in keep} | set(added))
    new_id = {old: k for k, old in enumerate(kept_old)}
    new = copy.deepcopy(tj)
    new["model"]["vocab"] = {t: new_id[i] for t, i in vocab.items() if t in keep}

    def _survives(pair: tuple[str, str]) -> bool:
        a, b = pair
        return a in keep and b in keep and a + b in keep

    new["model"]["merges"] = [m for m in model.get("merges", []) if _survives(_merge_pair(m))]
    for a in new.get("added_tokens", []):
        a["id"] = new_id[a["id"]]
    if new.get("post_processor") is not None:
        new["post_processor"] = _remap_ids(new["post_processor"], new_id)
    return new, kept_old
