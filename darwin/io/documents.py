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


#: words per window of the overlap check (13-grams: the contamination unit of GPT-3, arXiv 2005.14165 App. C)
OVERLAP_WORDS = 13


def word_windows(text: str, n: int = OVERLAP_WORDS) -> set[bytes]:
    """BLAKE2b hashes of every window of ``n`` consecutive words of ``text`` (lower-cased,
    whitespace-split): the unit of the overlap check. A text shorter than ``n`` words is one window."""
    words = text.lower().split()
    return {hashlib.blake2b(" ".join(words[i:i + n]).encode(), digest_size=12).digest()
            for i in range(max(1, len(words) - n + 1))} if words else set()


def overlapping(docs: list[Document], reference: set[bytes], n: int = OVERLAP_WORDS) -> list[str]:
    """Names of the ``docs`` that share at least one ``n``-word window with ``reference``
    (:func:`word_windows` of the other texts)."""
    return [d.name for d in docs if not word_windows(d.text, n).isdisjoint(reference)]


def holdout_fraction(doc: Document) -> float:
    """A document's place in [0, 1) for a deterministic hold-out split: the first 8 bytes of the
    BLAKE2b hash of its *text* (not its path, so the split is the same on every machine)."""
    return int.from_bytes(hashlib.blake2b(doc.text.encode(), digest_size=8).digest(), "big") / 2.0 ** 64


def split_documents(docs: list[Document], share: float, part: str) -> list[Document]:
    """The ``"selection"`` part (documents with :func:`holdout_fraction` < ``share``) or the
    ``"fitness"`` part (the rest) of ``docs``, in their order.

    Raises:
        DarwinError: ``part`` is neither, or the part is empty (naming the share and the count).
    """
    if part not in ("fitness", "selection"):
        raise DarwinError(f"document split: part must be 'fitness' or 'selection', got {part!r}")
    held = [d for d in docs if (holdout_fraction(d) < share) == (part == "selection")]
    if not held:
        raise DarwinError(f"holding out {share:.0%} of {len(docs)} fitness documents leaves the {part} part "
                          "empty: give more documents or a selection: list")
    return held
