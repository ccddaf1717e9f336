"""Build the combined fitness from ``parents.yaml`` entries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from darwin.fitness.base import CombinedFitness, Component
from darwin.fitness.perplexity import BitsPerByteFitness, DocumentFitness, PerplexityFitness
from darwin.fitness.python import load_callable
from darwin.io.extras import require_tokenizer
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
        return Component("lm_eval:" + ",".join(e.tasks), LmEvalFitness(
            e.tasks, e.include_path, e.limit, e.metric, e.batch_size, score=e.score, num_fewshot=e.num_fewshot,
            apply_chat_template=e.apply_chat_template, fewshot_as_multiturn=e.fewshot_as_multiturn,
            system_instruction=e.system_instruction, gen_kwargs=e.gen_kwargs), entry.weight)
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


def _checked_components(fit: dict[str, Any]) -> list[Any]:
    """Every component function of the run's role fitnesses that has a ``preflight`` method."""
    return [c.fn for fn in fit.values() for c in getattr(fn, "components", []) if hasattr(c.fn, "preflight")]


def preflight(fit: dict[str, Any], model_dir: str, dtype: Any) -> None:
    """Score one item of every checked component (lm-eval tasks) on the model in ``model_dir``
    (parent A), before the run folder exists; nothing is loaded when no component needs it.

    Raises:
        DarwinError: from the component, naming its task.
    """
    text = [c.fn for fn in fit.values() for c in getattr(fn, "components", [])
            if isinstance(c.fn, (PerplexityFitness, DocumentFitness, BitsPerByteFitness)) or hasattr(c.fn, "preflight")]
    if text:
        require_tokenizer(Path(model_dir), "the fitness scores text and needs one (a python fitness does not)")
    checked = _checked_components(fit)
    if not checked:
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=False).eval()
    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    for fn in checked:
        fn.preflight(model, tok)


def route_logs(fit: dict[str, Any], path: Any) -> None:
    """Send the output of components that keep a log (lm-eval's) to ``path`` (the run folder's
    ``lm_eval.log``) instead of the console."""
    for fn in fit.values():
        for c in getattr(fn, "components", []):
            if hasattr(c.fn, "log_path"):
                c.fn.log_path = path


def entry_label(entry: FitnessEntry) -> str:
    """What one fitness entry measures, for tables and plots: the kind, its data (files and
    documents, or tasks, metric and limit) and the weight when it is not 1."""
    from pathlib import Path

    if entry.kind in ("perplexity", "bits_per_byte"):
        p = getattr(entry, entry.kind)
        names = [Path(f).name for f in p.files]
        files = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
        unit = "mean −NLL, nats/token" if entry.kind == "perplexity" else "−bits/byte"
        how = f"documents, first {p.window} tokens each" if p.documents else f"{p.max_tokens} tokens"
        text = f"{entry.kind} ({unit}) on {files} ({how})"
    elif entry.kind == "lm_eval":
        e = entry.lm_eval
        assert e is not None
        metric = e.metric if isinstance(e.metric, str) else ", ".join(f"{k}: {v}" for k, v in (e.metric or {}).items())
        how = {"auto": metric or "auto: choice margin if multiple choice, else first metric", "margin": "choice margin",
               "metric": metric or "first metric"}[e.score]
        limit = "" if e.limit is None else f", limit {e.limit:g}"
        shots = "" if e.num_fewshot is None else f", {e.num_fewshot}-shot"
        text = f"lm_eval {', '.join(e.tasks)} ({how}{limit}{shots})"
    else:
        text = f"python {entry.python}"
    return text if entry.weight == 1.0 else f"{entry.weight:g} × {text}"


def role_labels(entries: dict[str, list[FitnessEntry]]) -> dict[str, str]:
    """``{role: label}`` for the roles that have entries (a weighted sum joins its entries with +)."""
    return {role: " + ".join(entry_label(e) for e in es) for role, es in entries.items() if es}
