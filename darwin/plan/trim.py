"""``darwin trim-vocab``: a child whose vocabulary keeps only the tokens a reference corpus uses.

The width operator of model golf (docs/golf.md): the embedding rows (and the rows of an untied
head) of the dropped tokens are removed and the tokenizer is rewritten consistently
(:mod:`darwin.arch.vocab`); every other tensor is copied unchanged. Text the corpus does not cover
still encodes, in shorter pieces, so compare such models by bits per byte, not perplexity.
The child is written atomically; its card and ``lineage.json`` record the corpus and the sizes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from darwin.arch.mapper import ArchMap
from darwin.arch.vocab import trim_bpe_tokenizer
from darwin.errors import CheckpointError, CompatibilityError, DarwinError
from darwin.io.card import write_model_card
from darwin.io.checkpoint import Checkpoint
from darwin.io.extras import require_tokenizer
from darwin.io.writer import ShardedWriter, atomic_output_dir, check_output_dir, refuse_input_overlap

_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id")
_COPY = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json")


@dataclass
class TrimResult:
    """Outcome of :func:`trim_vocab`.

    Attributes:
        out_dir: the child folder.
        old_vocab, new_vocab: vocabulary sizes (rows of the embedding).
        parameters_before, parameters_after: stored parameter counts (tied head once).
        corpus_tokens: tokens in the reference corpus.
    """

    out_dir: Path
    old_vocab: int
    new_vocab: int
    parameters_before: int
    parameters_after: int
    corpus_tokens: int


def _remap(value, new_id: dict[int, int]):
    if isinstance(value, list):
        return [new_id[v] for v in value if v in new_id]
    return new_id.get(value, value) if isinstance(value, int) else value


def _corpus_tokens(tok: Any, corpus: list[str | os.PathLike]) -> tuple[set[int], int]:
    """(ids the corpus uses, tokens in the corpus) under ``tok``.

    Raises:
        DarwinError: the corpus is missing or has no tokens.
    """
    from darwin.io.textfiles import collect_files

    used: set[int] = set()
    n_tokens = 0
    for f in collect_files(corpus, "trim-vocab corpus"):
        ids = tok(f.read_text(errors="replace"), add_special_tokens=False).input_ids
        used.update(ids)
        n_tokens += len(ids)
    if not used:
        raise DarwinError(f"trim-vocab corpus {[str(c) for c in corpus]}: no tokens (empty text); refusing to cut "
                          "the vocabulary to the byte alphabet")
    return used, n_tokens


def _copy_side_files(src: Path, dst: Path, new_id: dict[int, int]) -> None:
    """Tokenizer side files as they are; ``generation_config.json`` with its token ids renumbered."""
    for name in _COPY:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    gen = src / "generation_config.json"
    if gen.exists():
        g = json.loads(gen.read_text())
        for k in _ID_KEYS:
            if k in g:
                g[k] = _remap(g[k], new_id)
        (dst / "generation_config.json").write_text(json.dumps(g, indent=2))


def _write_card_and_lineage(folder: Path, model: str, config: dict[str, Any], details: dict[str, Any]) -> None:
    write_model_card(folder, parents=[model], method="vocab-trim", parameters=details,
                     num_parameters=details["parameters_after"],
                     dtype=str(config.get("dtype") or config.get("torch_dtype") or "float32"),
                     extra_sections=["## Vocabulary trimming\n\nOnly tokens the corpus uses are kept (plus the "
                                     "byte alphabet, special tokens and the merge inputs that build kept "
                                     "tokens); other text still encodes in shorter pieces. Compare by bits "
                                     "per byte."])
    (folder / "lineage.json").write_text(json.dumps({"model": "child", "method": "vocab-trim", **details,
                                                     "parents": [{"model": model}]}, indent=1))


def trim_vocab(model: str | os.PathLike, corpus: list[str | os.PathLike] | str | os.PathLike,
               out_dir: str | os.PathLike, *,
               force: bool = False) -> TrimResult:
    """Write ``model`` with its vocabulary trimmed to the tokens ``corpus`` uses.

    Args:
        model: a folder (or hub id) with ``tokenizer.json`` (byte-level BPE).
        corpus: text files or folders (sorted, read as UTF-8) that define the kept tokens (one path
            is one file or folder).
        out_dir: child folder (refused if it exists unless ``force``).

    Returns:
        a :class:`TrimResult`.

    Raises:
        CheckpointError: no ``tokenizer.json``.
        CompatibilityError: a tokenizer trimming does not support, or vocabulary-sized tensors
            that are not the embedding or head.
        OutputExistsError: ``out_dir`` exists and ``force`` is False.
    """
    from transformers import AutoTokenizer

    if isinstance(corpus, (str, os.PathLike)):  # one file or folder
        corpus = [corpus]
    check_output_dir(out_dir, force=force)
    ck = Checkpoint(model)
    refuse_input_overlap(out_dir, {"the model being trimmed": ck.path})
    config = dict(ck.require_config())
    tj_path = ck.path / "tokenizer.json"
    if not tj_path.exists():
        raise CheckpointError(f"{ck.path}: no tokenizer.json (vocabulary trimming rewrites it)")
    require_tokenizer(ck.path, "trimming the vocabulary needs one")
    used, n_tokens = _corpus_tokens(AutoTokenizer.from_pretrained(ck.path), corpus)
    for k in _ID_KEYS:
        v = config.get(k)
        used.update(v if isinstance(v, list) else [v] if isinstance(v, int) else [])
    new_tj, kept = trim_bpe_tokenizer(json.loads(tj_path.read_text()), used)
    new_id = {old: k for k, old in enumerate(kept)}
    vocab = int(config.get("vocab_size") or len(kept))
    if kept[-1] >= vocab:
        raise CompatibilityError(f"{ck.path}: the tokenizer has id {kept[-1]} but the model only {vocab} rows")
    amap = ArchMap.build(config, ck.tensor_names)
    rows = torch.tensor(kept, dtype=torch.long)
    vocab_tensors = [n for n in ck.tensor_names if ck.meta[n].shape and ck.meta[n].shape[0] == vocab]
    bad = [n for n in vocab_tensors if amap.roles[n].component not in ("embed", "head")]
    if bad:
        raise CompatibilityError(f"{ck.path}: tensors {bad} have vocabulary-sized rows but are not the embedding or "
                                 "head; trimming them is not supported")
    numel = lambda n: int(torch.Size(ck.meta[n].shape).numel())
    before = sum(numel(n) for n in ck.tensor_names)
    after = before - sum(numel(n) // vocab * (vocab - len(kept)) for n in vocab_tensors)
    config["vocab_size"] = len(kept)
    for k in _ID_KEYS:
        if k in config:
            config[k] = _remap(config[k], new_id)
    details = {"vocab_before": vocab, "vocab_after": len(kept), "corpus": [str(c) for c in corpus],
               "corpus_tokens": n_tokens, "parameters_before": before, "parameters_after": after}
    with atomic_output_dir(out_dir, force=force) as tmp:
        tmp = Path(tmp)
        writer = ShardedWriter(tmp, 5 * 10**9)
        for n in ck.tensor_names:
            t = ck.get(n)
            writer.add(n, t.index_select(0, rows).contiguous() if n in vocab_tensors else t)
        writer.finish()
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (tmp / "tokenizer.json").write_text(json.dumps(new_tj, ensure_ascii=False))
        _copy_side_files(ck.path, tmp, new_id)
        _write_card_and_lineage(tmp, str(model), config, details)
    ck.close()
    return TrimResult(Path(out_dir).expanduser().resolve(), vocab, len(kept), before, after, n_tokens)
