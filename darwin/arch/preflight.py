"""Pre-flight compatibility checks across parents, run before any weight is read.

Config-level checks (architecture, hidden size, vocabulary size, layer count, rope settings,
tokenizer equality) and a per-tensor verdict (``blend``, ``transplant``, ``only-in-<parents>``,
``shape-mismatch``). darwin refuses to merge rather than drop or truncate anything silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "rotary_pct",
              "max_position_embeddings")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")


def _text_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["text_config"] if isinstance(cfg.get("text_config"), dict) else cfg


def tokenizer_fingerprint(folder: Path) -> str | None:
    """A hash of the vocabulary-defining tokenizer content of a folder, or None if it has none.

    For ``tokenizer.json`` only the model (vocab, merges) and added tokens count, so two
    tokenizers that differ only in padding or truncation settings compare equal.
    """
    h = hashlib.sha256()
    found = False
    for name in _TOKENIZER_FILES:
        p = folder / name
        if not p.exists():
            continue
        found = True
        if name == "tokenizer.json":
            try:
                tj = json.loads(p.read_text())
                payload = json.dumps([tj.get("model"), tj.get("added_tokens")], sort_keys=True).encode()
            except (json.JSONDecodeError, UnicodeDecodeError):
                payload = p.read_bytes()
        else:
            payload = p.read_bytes()
        h.update(name.encode() + b"\0" + payload)
    return h.hexdigest() if found else None


def config_checks(configs: dict[str, dict[str, Any]], folders: dict[str, Path], labels: dict[str, str],
                  *, same_depth: bool, check_tokenizer: bool) -> list[tuple[str, bool, str]]:
    """Compare parent configs and tokenizers.

    Args:
        configs: parent reference → config dict.
        folders: parent reference → checkpoint folder (for tokenizer files).
        labels: parent reference → report letter.
        same_depth: require equal layer counts (not needed for slice recipes).
        check_tokenizer: require identical tokenizers.

    Returns:
        ``(check name, ok, detail)`` rows.
    """
    from darwin.arch.mapper import num_layers

    def show(values: dict[str, Any]) -> str:
        return ", ".join(f"{labels[m]}={v}" for m, v in values.items())

    rows: list[tuple[str, bool, str]] = []

    def compare(name: str, values: dict[str, Any]) -> None:
        ok = len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) <= 1
        rows.append((name, ok, show(values)))

    compare("model_type", {m: c.get("model_type") for m, c in configs.items()})
    compare("hidden_size", {m: _text_cfg(c).get("hidden_size", _text_cfg(c).get("n_embd", _text_cfg(c).get("d_model")))
                            for m, c in configs.items()})
    compare("vocab_size", {m: _text_cfg(c).get("vocab_size") for m, c in configs.items()})
    if same_depth:
        compare("num_layers", {m: num_layers(c) for m, c in configs.items()})
    for key in _ROPE_KEYS:
        vals = {m: _text_cfg(c).get(key) for m, c in configs.items()}
        if any(v is not None for v in vals.values()):
            compare(key, vals)
    if check_tokenizer:
        fps = {m: tokenizer_fingerprint(f) for m, f in folders.items()}
        present = {m: v for m, v in fps.items() if v is not None}
        if present:
            ok = len(set(present.values())) == 1  # a parent without tokenizer files is taken to share it
            rows.append(("tokenizer", ok, "identical" if ok else
                         show({m: (v[:8] if v else "none") for m, v in fps.items()})))
    return rows


def tensor_verdict(shapes: dict[str, tuple[int, ...] | None], labels: dict[str, str]) -> tuple[str, str]:
    """Action for one child tensor from its inputs' shapes (None = the parent lacks it).

    Returns:
        ``(action, detail)`` with action ``blend`` (several inputs, equal shapes), ``transplant``
        (a single input), ``only-in-<letters>`` or ``shape-mismatch``.
    """
    have = {m: s for m, s in shapes.items() if s is not None}
    if len(have) < len(shapes):
        letters = "".join(labels[m] for m in have) or "none"
        return f"only-in-{letters}", "missing in " + ", ".join(labels[m] for m in shapes if shapes[m] is None)
    distinct = set(have.values())
    if len(distinct) > 1:
        return "shape-mismatch", ", ".join(f"{labels[m]}={list(s)}" for m, s in have.items())
    shape = next(iter(distinct))
    return ("transplant" if len(have) == 1 else "blend"), str(list(shape))
