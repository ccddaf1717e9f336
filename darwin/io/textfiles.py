"""Text inputs given as files or folders (fitness data, vocabulary-trimming corpora)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from darwin.errors import DarwinError

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json", ".jsonl", ".csv", ".tex", ".html")


def collect_files(paths: Sequence[str | os.PathLike], what: str = "perplexity fitness") -> list[Path]:
    """Expand files and folders (recursively, text suffixes only), sorted, deduplicated.

    Args:
        paths: files or folders.
        what: what the files are for, used in error messages.

    Raises:
        DarwinError: a path does not exist, or nothing readable was found.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise DarwinError(f"{what}: {p}: no such file or folder")
    out = list(dict.fromkeys(out))
    if not out:
        raise DarwinError(f"{what}: no text files in {[str(p) for p in paths]}")
    return out
