"""The three data roles of a run: ``fitness`` (CMA-ES optimises it), ``selection`` (picks the final
child, stops the search early), ``test`` (reported only; no decision reads it).

* **Hold-out.** Without a ``selection:`` list, every document-level text entry of ``fitness``
  (``documents: true``) is split by a hash of each document's text: ``search.holdout_share`` of
  its documents (default 30 %) become the selection data, the rest stay the fitness
  (:func:`darwin.io.documents.split_documents`; the same split on every machine). The run says so.
  Without any document-level entry there is nothing to hold out: the final pick then reads the
  fitness, and the run says that too.
* **Overlap.** Text shared between the fitness and the selection or test data makes those roles
  leak (the benchmark-contamination guard of mergekit-evolve): every selection and test document
  that shares a 13-word window with the fitness text is counted, and a warning names the files.
"""

from __future__ import annotations

from pathlib import Path

from darwin.io.documents import Document, load_documents, overlapping, split_documents, word_windows
from darwin.search.config import FitnessEntry, ParentsConfig

#: fitness words read for the overlap check at most (beyond it the check says it was partial)
MAX_OVERLAP_WORDS = 5_000_000


def _doc_entry(e: FitnessEntry):
    p = e.perplexity or e.bits_per_byte
    return p if p is not None and p.documents else None


def with_holdout(cfg: ParentsConfig) -> tuple[ParentsConfig, str | None]:
    """``cfg`` with the selection data derived from the fitness documents when it has none (see the
    module doc), and the sentence that says what was done (None when ``selection:`` is given)."""
    if cfg.selection:
        return cfg, None
    share = cfg.search.holdout_share
    held = [e for e in cfg.fitness if (d := _doc_entry(e)) is not None and d.part is None]
    if not held:
        return cfg, ("no selection data and no document-level fitness (documents: true) to hold out: the final "
                     "pick reads the fitness, which the search optimised; give selection: for an honest pick")

    def part(e: FitnessEntry, name: str) -> FitnessEntry:
        kind = e.kind
        spec = getattr(e, kind).model_copy(update={"part": name, "part_share": share})
        return e.model_copy(update={kind: spec})

    fitness = [part(e, "fitness") if e in held else e for e in cfg.fitness]
    selection = [part(e, "selection") for e in held]
    files = sorted({f for e in held for f in getattr(e, e.kind).files})
    note = (f"no selection data: holding out {share:.0%} of the fitness documents (by a hash of their text) as "
            f"the selection data, from {', '.join(Path(f).name for f in files)}")
    return cfg.model_copy(update={"fitness": fitness, "selection": selection}), note


def _entry_docs(e: FitnessEntry) -> list[Document]:
    p = e.perplexity or e.bits_per_byte
    if p is None:
        return []
    if not p.documents:
        return load_documents(list(p.files))
    docs = load_documents(list(p.files), separator=p.separator, text_field=p.text_field)
    return split_documents(docs, p.part_share, p.part) if p.part else docs


def overlap_warnings(cfg: ParentsConfig) -> list[str]:
    """One warning per selection or test entry whose documents share 13-word windows with the
    fitness text (see the module doc); ``[]`` when none do or there is no text to compare."""
    fit_docs = [d for e in cfg.fitness for d in _entry_docs(e)]
    if not fit_docs:
        return []
    reference: set[bytes] = set()
    words = 0
    for d in fit_docs:
        if words > MAX_OVERLAP_WORDS:
            break
        reference |= word_windows(d.text)
        words += len(d.text.split())
    out = []
    for role in ("selection", "test"):
        for e in getattr(cfg, role):
            docs = _entry_docs(e)
            hits = overlapping(docs, reference)
            if hits:
                files = sorted({h.split("#")[0] for h in hits})
                out.append(f"{role} data overlaps the fitness data: {len(hits)} of {len(docs)} documents share "
                           f"13-word windows with it ({', '.join(files[:4])}{' …' if len(files) > 4 else ''}); "
                           f"{role} scores of those documents are not independent of the search")
    return out
