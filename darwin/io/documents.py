"""Documents for document-level fitness: files, JSONL records, or separator-delimited chunks.

A *document* is the unit a text fitness averages over and the unit a paired comparison of two
models resamples (many short documents resolve small differences far better than a few long ones:
the variance of a mean falls with the number of independent documents, not tokens).

* a text file is one document;
* a ``.jsonl`` file holds one document per record: the record's ``text_field`` (default ``text``)
  or, for records without it, the concatenation of ``prompt`` and ``canonical_solution``
  (HumanEval's layout);
* with ``separator`` set, every file (JSONL records included) is cut at each occurrence of the
  separator, and each non-blank chunk is a document.

Documents are returned in a deterministic order (files sorted, records and chunks in file order),
each named ``file``, ``file#record`` or ``file#chunk``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from darwin.errors import DarwinError
from darwin.io.textfiles import collect_files


@dataclass(frozen=True)
class Document:
    """One document.

    Attributes:
        name: ``path``, ``path#i`` (the i-th JSONL record) or ``path#i`` (the i-th chunk).
        text: its text.
    """

    name: str
    text: str


def _jsonl_texts(path: Path, text_field: str, what: str) -> list[str]:
    texts = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DarwinError(f"{what}: {path}: line {i + 1} is not JSON ({e.msg})") from None
        if isinstance(rec, dict) and isinstance(rec.get(text_field), str):
            texts.append(rec[text_field])
        elif isinstance(rec, dict) and isinstance(rec.get("prompt"), str):
            texts.append(rec["prompt"] + str(rec.get("canonical_solution") or ""))
        else:
            raise DarwinError(f"{what}: {path}: line {i + 1} has no string field {text_field!r}")
    return texts


def load_documents(paths: list[str | os.PathLike], *, separator: str | None = None, text_field: str = "text",
                   what: str = "fitness") -> list[Document]:
    """The documents of ``paths`` (files or folders), see the module doc.

    Raises:
        DarwinError: a path is missing, a JSONL line is not JSON or lacks the text field, or no
            document has any text (naming the files).
    """
    if separator == "":
        raise DarwinError(f"{what}: separator must not be empty")
    docs: list[Document] = []
    for f in collect_files(paths, what):
        texts = _jsonl_texts(f, text_field, what) if f.suffix == ".jsonl" else [f.read_text(errors="replace")]
        named = [(f"{f}#{i}" if f.suffix == ".jsonl" else str(f), t) for i, t in enumerate(texts)]
        if separator is not None:
            named = [(f"{n}#{j}", c) for n, t in named for j, c in enumerate(t.split(separator))]
        docs += [Document(n, t) for n, t in named if t.strip()]
    if not docs:
        raise DarwinError(f"{what}: no document with text in {[str(p) for p in paths]}")
    return docs


def window_hashes(ids: list[int], window: int) -> set[str]:
    """BLAKE2b hashes of consecutive non-overlapping ``window``-token windows of ``ids`` (for overlap checks)."""
    return {hashlib.blake2b(repr(ids[i:i + window]).encode(), digest_size=12).hexdigest()
            for i in range(0, max(1, len(ids) - window + 1), window)}
