"""The child's vocabulary when parents' tokenizers differ (mergekit's ``tokenizer_source`` / ``tokenizer:``).

The child's tokenizer is built first; every parent's embedding and head rows are then mapped to it
by token string. This module builds the tokenizer and the maps; :mod:`darwin.plan.vocab_rows` merges
the rows.

* ``base``: the base model's tokenizer (the first model's when there is no base);
* a parent reference or folder: that tokenizer;
* ``union``: the base tokenizer, then every other parent's regular tokens it lacks, then every
  parent's added tokens it lacks, in model order, appended as added tokens (the order
  mergekit's ``build_union_tokenizer`` uses, so the ids agree with ``mergekit-yaml``);
* ``tokens:`` names tokens the child must have (added when missing) and where their rows come from.

Ghost tokens, ids a tokenizer lists at or beyond its model's embedding rows, have no row: they are
dropped from the parent's map (and from a base or named tokenizer the child uses) with a warning
naming them. The child has ``max id + 1`` rows, rounded up to ``pad_to_multiple_of``; the config's
``vocab_size`` is set to that, so every id of the written tokenizer has a row.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from darwin.errors import CompatibilityError, DarwinWarning

#: ``eff_model`` codes: the row is absent (the parent lacks the token), or a zero vector
ABSENT, ZERO = -1, -2


@dataclass(frozen=True)
class TokenRule:
    """Where one ``tokens:`` entry's rows come from (mergekit's ``TokenEmbeddingConfig``).

    Attributes:
        model: the parent whose row is used (None: the default rule, or ``zero``).
        token: the token of ``model`` whose row is used (None: the same token).
        token_id: ``model``'s row id to use instead of ``token``.
        zero: a zero vector.
        force: every parent uses this row, not only the parents lacking the token.
    """

    model: str | None = None
    token: str | None = None
    token_id: int | None = None
    zero: bool = False
    force: bool = False


@dataclass
class ChildVocab:
    """The child's tokenizer and, per parent, where each child row comes from.

    Attributes:
        tokenizer: the child's ``transformers`` tokenizer (written with ``save_pretrained``).
        models: parent references, in recipe order; ``eff_model`` codes index this list.
        n_tokens: ``max id + 1`` of the child tokenizer.
        rows: embedding rows of the child (``n_tokens`` rounded up to ``pad_to_multiple_of``);
            rows at ``n_tokens`` and beyond are padding.
        eff_model: per parent, ``LongTensor[n_tokens]``: the index (into ``models``) of the parent
            whose row it uses for each child id, :data:`ABSENT` or :data:`ZERO`.
        eff_row: per parent, ``LongTensor[n_tokens]``: that parent's row id (0 where not used).
        source: the folder whose generation config and chat template the child takes.
        real: ``BoolTensor[n_tokens]``, True where a token has this id.
        notes: one report line per ``tokens:`` rule applied.
    """

    tokenizer: Any
    models: list[str]
    n_tokens: int
    rows: int
    eff_model: dict[str, torch.Tensor]
    eff_row: dict[str, torch.Tensor]
    source: Path
    real: torch.Tensor
    notes: list[str] = field(default_factory=list)

    def present(self, model: str) -> torch.Tensor:
        """``BoolTensor[n_tokens]``: the child ids ``model`` has a row for (its own or a substitute)."""
        return self.eff_model[model] != ABSENT


def load_tokenizer(folder: Path) -> Any:
    """A folder's fast tokenizer (``transformers.AutoTokenizer``, ``trust_remote_code`` off).

    Raises:
        CompatibilityError: the folder has no tokenizer transformers can load.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), use_fast=True, trust_remote_code=False)
    except Exception as e:  # transformers raises many types for a missing or broken tokenizer
        raise CompatibilityError(f"{folder}: no tokenizer transformers can load ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None


def ghost_tokens(tok: Any, rows: int) -> list[str]:
    """Tokens of ``tok`` whose id is ``>= rows`` (they have no embedding row), in id order."""
    return [t for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if i >= rows]


def _warn_ghosts(where: str, ghosts: list[str], rows: int) -> None:
    shown = ", ".join(repr(g) for g in ghosts[:8]) + (f" and {len(ghosts) - 8} more" if len(ghosts) > 8 else "")
    warnings.warn(f"{where}: {len(ghosts)} tokenizer token(s) have ids at or beyond the model's {rows} embedding "
                  f"rows and are dropped: {shown}", DarwinWarning, stacklevel=3)


def strip_ghosts(tok: Any, rows: int, where: str) -> Any:
    """``tok`` without the tokens whose id is ``>= rows``, saved and reloaded (``tok`` is unchanged).

    Raises:
        CompatibilityError: ghost tokens in a tokenizer that is not a ``tokenizer.json`` BPE one.
    """
    ghosts = ghost_tokens(tok, rows)
    if not ghosts:
        return tok
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        tj_path = Path(tmp) / "tokenizer.json"
        if not tj_path.is_file():
            raise CompatibilityError(f"{where}: ghost tokens in a tokenizer without tokenizer.json; cannot strip them")
        tj = json.loads(tj_path.read_text())
        drop = set(ghosts)
        tj["added_tokens"] = [a for a in tj.get("added_tokens", []) if a["id"] < rows]
        model = tj.get("model", {})
        if isinstance(model.get("vocab"), dict):
            model["vocab"] = {t: i for t, i in model["vocab"].items() if i < rows}
            model["merges"] = [m for m in model.get("merges", [])
                               if not set(m.split(" ") if isinstance(m, str) else m) & drop]
        tj_path.write_text(json.dumps(tj, ensure_ascii=False))
        cfg_path = Path(tmp) / "tokenizer_config.json"
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text())
            dec = cfg.get("added_tokens_decoder")
            if isinstance(dec, dict):
                cfg["added_tokens_decoder"] = {k: v for k, v in dec.items() if int(k) < rows}
            cfg_path.write_text(json.dumps(cfg, ensure_ascii=False))
        return load_tokenizer(Path(tmp))


def _copy(tok: Any) -> Any:
    """An independent copy of a tokenizer (saved and reloaded), so adding tokens leaves ``tok`` alone."""
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return load_tokenizer(Path(tmp))


def union_tokenizer(base: Any, others: list[tuple[Any, int]]) -> Any:
    """The base tokenizer plus the tokens other parents have and it lacks.

    Regular tokens come first (model order, then id order), then added tokens with their settings
    (special, strip, normalisation), each appended with ``add_tokens``.

    Args:
        base: the (ghost-stripped) base tokenizer; not modified.
        others: ``(tokenizer, embedding rows)`` of the other parents, in recipe order.
    """
    out = _copy(base)
    have = set(out.get_vocab())
    regular: list[str] = []
    added: dict[str, Any] = {}
    for tok, rows in [(base, 1 << 62), *others]:
        dec = tok.added_tokens_decoder
        added_names = {a.content for a in dec.values()}
        for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if i < rows and t not in added_names and t not in have and t not in regular:
                regular.append(t)
        for i, info in sorted(dec.items()):
            if i < rows and info.content not in added:
                added[info.content] = info
    if regular:
        out.add_tokens(regular)
    new_added = [info for name, info in added.items() if name not in set(out.get_vocab())]
    for info in new_added:
        out.add_tokens([info], special_tokens=bool(getattr(info, "special", False)))
    return out


def build_child_vocab(models: list[str], folders: dict[str, Path], rows: dict[str, int], toks: dict[str, Any], *,
                      base: str | None,
                      source: str, tokens: dict[str, TokenRule], pad_to_multiple_of: int | None) -> ChildVocab:
    """Build the child's tokenizer and every parent's row map.

    Args:
        models: parent references (recipe order; the base first when there is one).
        folders: parent → checkpoint folder.
        rows: parent → embedding rows (its config's ``vocab_size``).
        toks: parent → its loaded tokenizer (:func:`load_tokenizer`; not modified).
        base: the base model, or None (then the first model plays its part).
        source: ``union``, ``base``, a parent reference or a folder with a tokenizer.
        tokens: the recipe's ``tokens:`` rules.
        pad_to_multiple_of: round the child's rows up to a multiple of this.

    Raises:
        CompatibilityError: a tokenizer cannot be loaded, or a ``tokens:`` rule names a model or
            token that does not exist (the message names it).
    """
    first = base or models[0]
    for m in models:
        ghosts = ghost_tokens(toks[m], rows[m])
        if ghosts:
            _warn_ghosts(str(m), ghosts, rows[m])
    base_tok = strip_ghosts(toks[first], rows[first], str(first))
    if source == "base":
        child, src_folder = _copy(base_tok), folders[first]
    elif source == "union":
        child = union_tokenizer(base_tok, [(toks[m], rows[m]) for m in models if m != first])
        src_folder = folders[first]
    elif source in toks:
        child, src_folder = _copy(strip_ghosts(toks[source], rows[source], str(source))), folders[source]
    else:
        child, src_folder = load_tokenizer(Path(source)), Path(source)
    missing = [t for t in tokens if t not in child.get_vocab()]
    if missing:
        child.add_tokens(missing)
    return _row_maps(child, models, toks, rows, tokens, pad_to_multiple_of, src_folder)


def _row_maps(child: Any, models: list[str], toks: dict[str, Any], rows: dict[str, int],
              tokens: dict[str, TokenRule], pad: int | None, src_folder: Path) -> ChildVocab:
    vocab = child.get_vocab()
    n_tokens = max(vocab.values()) + 1
    n_rows = -(-n_tokens // pad) * pad if pad else n_tokens
    real = torch.zeros(n_tokens, dtype=torch.bool)
    real[list(vocab.values())] = True
    eff_model, eff_row = {}, {}
    for k, m in enumerate(models):
        mv = toks[m].get_vocab()
        em = torch.full((n_tokens,), ABSENT, dtype=torch.long)
        er = torch.zeros(n_tokens, dtype=torch.long)
        for t, cid in vocab.items():
            pid = mv.get(t)
            if pid is not None and pid < rows[m]:
                em[cid], er[cid] = k, pid
        eff_model[m], eff_row[m] = em, er
    notes = _apply_rules(tokens, vocab, models, toks, rows, eff_model, eff_row)
    nowhere = [t for t, cid in vocab.items() if all(eff_model[m][cid] == ABSENT for m in models)]
    if nowhere:
        shown = ", ".join(repr(t) for t in nowhere[:8]) + (f" and {len(nowhere) - 8} more" if len(nowhere) > 8 else "")
        warnings.warn(f"{len(nowhere)} token(s) of the child's tokenizer are in no parent; their rows are zero: "
                      f"{shown}", DarwinWarning, stacklevel=3)
    return ChildVocab(tokenizer=child, models=models, n_tokens=n_tokens, rows=n_rows, eff_model=eff_model,
                      eff_row=eff_row, source=src_folder, real=real, notes=notes)


def _apply_rules(tokens: dict[str, TokenRule], vocab: dict[str, int], models: list[str], toks: dict[str, Any],
                 rows: dict[str, int], eff_model: dict[str, torch.Tensor], eff_row: dict[str, torch.Tensor]
                 ) -> list[str]:
    """Write each ``tokens:`` rule into the row maps (in place); returns report notes."""
    notes = []
    for t, rule in tokens.items():
        cid = vocab[t]
        if rule.zero:
            code, row = ZERO, 0
        elif rule.model is not None:
            if rule.model not in models:
                raise CompatibilityError(f"tokenizer.tokens[{t!r}]: source model {rule.model!r} is not a parent "
                                         f"of this recipe")
            mv = toks[rule.model].get_vocab()
            row = rule.token_id if rule.token_id is not None else mv.get(rule.token if rule.token is not None else t)
            if row is None or not 0 <= row < rows[rule.model]:
                what = f"token id {rule.token_id}" if rule.token_id is not None else f"token {rule.token or t!r}"
                raise CompatibilityError(f"tokenizer.tokens[{t!r}]: {what} has no row in {rule.model}")
            code = models.index(rule.model)
        else:
            continue
        for m in models:
            if rule.force or eff_model[m][cid] == ABSENT:
                eff_model[m][cid], eff_row[m][cid] = code, row
        notes.append(f"{t!r}: {'zero' if rule.zero else f'{rule.model} row {row}'}"
                     f"{' (forced for every parent)' if rule.force else ''}")
    return notes


def vocabularies_agree(toks: dict[str, Any], rows: dict[str, int]) -> bool:
    """True when every tokenizer has the same token → id map (below its model's rows) and the
    models the same rows."""
    if len(set(rows.values())) > 1:
        return False
    maps = [{t: i for t, i in tok.get_vocab().items() if i < rows[m]} for m, tok in toks.items()]
    return all(mp == maps[0] for mp in maps[1:])
