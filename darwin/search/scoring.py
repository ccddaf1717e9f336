"""Build the combined fitness from ``parents.yaml`` entries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from darwin.fitness.base import CombinedFitness, Component
from darwin.fitness.perplexity import BitsPerByteFitness, DocumentFitness, PerplexityFitness
from darwin.fitness.python import load_callable
from darwin.search.config import FitnessEntry


def build_component(entry: FitnessEntry) -> Component:
    """One fitness component from a config entry (named after its kind and data)."""
    if entry.kind in ("perplexity", "bits_per_byte"):
        p = getattr(entry, entry.kind)
        fn: Callable[[Any, Any], float]
        if p.documents:
            fn = DocumentFitness(p.files, p.window, p.batch_size, p.separator, p.text_field,
                                 "nats" if entry.kind == "perplexity" else "bits_per_byte", p.part, p.part_share)
        else:
            cls = PerplexityFitness if entry.kind == "perplexity" else BitsPerByteFitness
            fn = cls(p.files, p.max_tokens, p.window, p.batch_size)
        return Component(entry.kind, fn, entry.weight)
    if entry.kind == "lm_eval":
        from darwin.fitness.lm_eval import LmEvalFitness

        e = entry.lm_eval
        assert e is not None  # kind is the one entry that is set
        return Component("lm_eval:" + ",".join(e.tasks),
                         LmEvalFitness(e.tasks, e.include_path, e.limit, e.metric, e.batch_size), entry.weight)
    assert entry.python is not None  # the remaining kind: the validator requires exactly one set
    return Component(f"python:{entry.python}", load_callable(entry.python), entry.weight)


def build_fitness(entries: list[FitnessEntry], keep_documents: bool = False) -> CombinedFitness:
    """Weighted sum of all entries (``keep_documents``: per-document contributions too, see
    :class:`darwin.fitness.base.CombinedFitness`)."""
    return CombinedFitness([build_component(e) for e in entries], keep_documents)


def as_score_fn(fn: Any) -> Callable[[Any, Any], Any]:
    """A fitness as ``(model, tokenizer) -> Score``: a :class:`CombinedFitness` as is, any other
    callable returning a float (or a Score) wrapped as one ``custom`` component."""
    from darwin.fitness.base import Score

    if isinstance(fn, CombinedFitness):
        return fn

    def wrapped(model: Any, tok: Any) -> Any:
        v = fn(model, tok)
        return v if isinstance(v, Score) else CombinedFitness([Component("custom", lambda m, t: v)])(model, tok)
    return wrapped
