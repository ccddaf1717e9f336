"""Decide a recipe's child vocabulary: none (the parents share a tokenizer) or a surgery plan.

With ``tokenizer_source`` or a ``tokenizer:`` block, mergekit maps every parent's vocabulary rows
to the child's tokenizer by token string. When every parent already has the same token → id map
and the same rows, that map is the identity, so darwin skips it: the tokenizer source's files are
copied and every embedding row is kept, padding rows included. Otherwise
:func:`darwin.arch.tokenizers.build_child_vocab` builds the child's tokenizer and row maps.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from darwin.arch.tokenizers import ChildVocab, TokenRule, build_child_vocab, load_tokenizer, vocabularies_agree
from darwin.errors import CompatibilityError, DarwinWarning
from darwin.io.checkpoint import Checkpoint
from darwin.io.extras import TOKENIZER_MARKERS, has_tokenizer
from darwin.plan.recipe import ModelTokenEmbedding, Recipe, TokenEmbedding, ZeroEmbedding


def embedding_rows(ck: Checkpoint) -> int:
    """A parent's embedding rows: its config's ``vocab_size`` (``text_config`` for multimodal configs).

    Raises:
        CompatibilityError: the config has no integer ``vocab_size``.
    """
    text = ck.config.get("text_config")
    rows = (text if isinstance(text, dict) else ck.config).get("vocab_size")
    if not isinstance(rows, int) or rows < 1:
        raise CompatibilityError(f"{ck.path}/config.json: no vocab_size, which vocabulary surgery needs")
    return rows


def as_parent(ref: str, models: list[str]) -> str:
    """The recipe's own reference for ``ref`` when both name the same local folder (``m/b``,
    ``./m/b/``, an absolute path), else ``ref`` unchanged."""
    if ref in models:
        return ref
    p = Path(ref).expanduser()
    if p.exists():
        for m in models:
            q = Path(m).expanduser()
            if q.exists() and q.resolve() == p.resolve():
                return m
    return ref


def _rule(entry: TokenEmbedding, models: list[str]) -> TokenRule:
    src = entry.source
    if isinstance(src, ZeroEmbedding):
        return TokenRule(zero=True, force=entry.force)
    if isinstance(src, ModelTokenEmbedding):
        return TokenRule(model=as_parent(src.model, models), token=src.token, token_id=src.token_id,
                         force=entry.force)
    return TokenRule(model=as_parent(src, models) if src is not None else None, force=entry.force)


def plan_vocabulary(recipe: Recipe, checkpoints: dict[str, Checkpoint]) -> ChildVocab | None:
    """The child vocabulary a recipe asks for, or None when there is nothing to map.

    Parents without tokenizer files are taken to share the base model's (as mergekit does), with a
    warning.

    Raises:
        CompatibilityError: a tokenizer cannot be loaded, a config lacks ``vocab_size``, or a
            ``tokens:`` rule names a missing model or token.
    """
    source = recipe.vocabulary_source
    if source is None:
        return None
    models = recipe.referenced_models()
    source = as_parent(source, models)
    folders = {m: checkpoints[m].path for m in models}
    donor = next((m for m in models if has_tokenizer(folders[m])), None)
    if donor is None:
        return None  # no parent has a tokenizer: the tokenizer source's files (if any) are copied
    rows = {m: embedding_rows(checkpoints[m]) for m in models}
    for m in models:
        if not has_tokenizer(folders[m]):
            if rows[m] != rows[donor]:
                raise CompatibilityError(f"{folders[m]}: no tokenizer files ({', '.join(TOKENIZER_MARKERS)}), and its "
                                         f"{rows[m]} embedding rows differ from the {rows[donor]} of {donor}, so its "
                                         "rows cannot be mapped to tokens; add its tokenizer")
            warnings.warn(f"{m}: no tokenizer files; taken to share the tokenizer of {donor} (same {rows[m]} rows)",
                          DarwinWarning, stacklevel=2)
            folders[m] = folders[donor]
    spec = recipe.tokenizer
    tokens = {t: _rule(e, models) for t, e in (spec.tokens or {}).items()} if spec is not None else {}
    pad = spec.pad_to_multiple_of if spec is not None else None
    toks = {m: load_tokenizer(folders[m]) for m in models}
    if not tokens and pad is None:
        external = source not in ("base", "union") and source not in checkpoints
        extra = {"<tokenizer_source>": load_tokenizer(Path(source))} if external else {}
        if vocabularies_agree({**toks, **extra}, {**rows, **({k: rows[donor] for k in extra})}):
            return None
    return build_child_vocab(models, folders, rows, toks, base=recipe.base_model, source=source, tokens=tokens,
                             pad_to_multiple_of=pad)


def describe(vocab: ChildVocab, labels: dict[str, str], source: str) -> str:
    """One line for the pre-flight report: the child vocabulary and what each parent lacks."""
    lacks = ", ".join(f"{labels[m]} lacks {int((~vocab.present(m) & vocab.real).sum())}" for m in vocab.models)
    return (f"mapped by token ({source}): {int(vocab.real.sum())} tokens, {vocab.rows} rows; {lacks}"
            + (f"; tokens: {'; '.join(vocab.notes)}" if vocab.notes else ""))
