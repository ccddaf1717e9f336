"""``search.constraints``: rank candidates that violate them, and check the written child from its files.

Candidates: :func:`constraint_violation` measures how far a plan is outside the constraints (a
candidate with a violation is never evaluated); :func:`check_context` refuses, before the search,
a ``min_context`` that no candidate can reach. The written child:

* parameters: the child is loaded with ``AutoModelForCausalLM`` and ``sum(p.numel() for p in
  model.parameters())`` counted (parameters shared by tied embeddings count once, as a published
  checkpoint counts them);
* context: the config's declared window (``max_position_embeddings``) must reach ``min_context``,
  and one window of exactly ``min_context`` tokens is scored: its perplexity must be finite (a
  child that cannot attend over the window fails here, not in a user's hands).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from darwin.arch.config import context_length
from darwin.errors import DarwinError, RecipeError
from darwin.io.extras import require_tokenizer
from darwin.plan.plan import MergePlan


def window_text(cfg) -> str:
    """Text for the context check of an evolve run: its perplexity / bits-per-byte fitness files,
    else the probes."""
    from darwin.diagnosis.probe import load_probes
    from darwin.io.textfiles import collect_files

    files = [f for e in cfg.fitness for kind in ("perplexity", "bits_per_byte") if getattr(e, kind) is not None
             for f in getattr(e, kind).files]
    if files:
        return "\n\n".join(p.read_text(errors="replace") for p in collect_files(files))
    return "\n\n".join(p for ps in load_probes().values() for p in ps)


@torch.no_grad()
def verify_child(folder: Path, constraints, text: str) -> dict[str, Any]:
    """Measure the saved child against the constraints.

    Args:
        folder: the written child.
        constraints: ``max_params`` / ``min_context`` (:class:`darwin.search.config.Constraints`).
        text: the text of the context check (repeated to fill ``min_context`` tokens; see
            :func:`window_text`).

    Returns:
        ``{"parameters", "max_params", "params_ok", "context", "min_context", "context_ok",
        "window_tokens", "window_perplexity"}``.

    Raises:
        DarwinError: the child violates a constraint (it is not put in place).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if constraints.min_context is not None:
        require_tokenizer(folder, "the min_context check scores a text window and needs one")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    n = sum(p.numel() for p in model.parameters())
    config = json.loads((folder / "config.json").read_text())
    ctx = context_length(config)
    rep: dict[str, Any] = {"parameters": n, "max_params": constraints.max_params,
                           "params_ok": constraints.max_params is None or n <= constraints.max_params,
                           "context": ctx, "min_context": constraints.min_context, "context_ok": True}
    if constraints.min_context is not None:
        L = constraints.min_context
        tok = AutoTokenizer.from_pretrained(folder)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
        while ids.numel() < L:  # short texts are repeated to fill the window
            ids = torch.cat([ids, ids])
        window = ids[:L].unsqueeze(0)
        loss = float(model(input_ids=window, labels=window).loss)
        rep.update(window_tokens=L, window_perplexity=math.exp(loss) if math.isfinite(loss) else None)
        rep["context_ok"] = (ctx is None or ctx >= L) and math.isfinite(loss)
    if not (rep["params_ok"] and rep["context_ok"]):
        why = [f"{n:,} parameters > max_params {constraints.max_params:,}"] if not rep["params_ok"] else []
        if not rep["context_ok"]:
            ppl = rep.get("window_perplexity")
            why.append(f"context {ctx} < min_context {constraints.min_context}" if ctx is not None and
                       ctx < (constraints.min_context or 0) else
                       f"a {rep.get('window_tokens')}-token window scores perplexity {ppl} (not finite)")
        raise DarwinError(f"the child violates the constraints: {'; '.join(why)}")
    return rep


def parent_licence(folder: Path, _depth: int = 0) -> str | None:
    """The parent's licence: darwin zoo metadata, else the model card's ``license:`` field, else
    (for a darwin child, e.g. a vocabulary-trimmed parent) its own parents' licence via ``lineage.json``."""
    zoo = folder / "ZOO.json"
    if zoo.exists():
        lic = json.loads(zoo.read_text()).get("licence")
        if lic:
            return str(lic)
    card = folder / "README.md"
    if card.exists():
        for line in card.read_text(errors="replace").splitlines()[:40]:
            if line.strip().lower().startswith("license:"):
                return line.split(":", 1)[1].strip()
    lineage = folder / "lineage.json"
    if lineage.exists() and _depth < 8:
        for parent in json.loads(lineage.read_text()).get("parents", []):
            p = Path(str(parent.get("model", "")))
            if p.is_dir():
                lic = parent_licence(p, _depth + 1)
                if lic:
                    return lic
    return None


def constraint_card(rep: dict[str, Any], parent: Path) -> str:
    """Model-card section: exact parameter count, context length, how both were checked, licence."""
    lines = ["## Size, context and licence", "",
             f"- parameters: **{rep['parameters']:,}** (`sum(p.numel() for p in model.parameters())` of the saved "
             "model; tied embeddings counted once)" + (f", budget {rep['max_params']:,}" if rep["max_params"] else "")]
    if rep.get("min_context") is not None:
        lines.append(f"- context: {rep['context']} positions declared; a {rep['window_tokens']}-token window scores "
                     f"perplexity {rep['window_perplexity']:.3f} (required: {rep['min_context']})")
    lic = parent_licence(parent)
    lines.append(f"- licence: {lic} (inherited from the parent)" if lic else
                 "- licence: see the parents' licences")
    return "\n".join(lines)


def check_context(plan: MergePlan, constraints) -> None:
    """No genome changes the context window: refuse a ``min_context`` the parents cannot reach.

    Raises:
        RecipeError: the child's declared window is shorter than ``min_context``.
    """
    need, ctx = constraints.min_context, context_length(plan.config)
    if need is not None and ctx is not None and ctx < need:
        raise RecipeError(f"search.constraints.min_context = {need}, but the child's context window is {ctx} "
                          f"(max_position_embeddings of {plan.reference}); no candidate can meet it")


def constraint_violation(plan: MergePlan, constraints) -> tuple[float, str | None]:
    """How far ``plan`` is outside the constraints (0 if inside) and why.

    The violation is the relative excess ``params / max_params − 1`` plus the relative context
    shortfall ``1 − context / min_context``; CMA-ES ranks infeasible candidates by it, below every
    feasible one.
    """
    v, why = 0.0, []
    n = plan.num_parameters
    if constraints.max_params is not None and n > constraints.max_params:
        v += n / constraints.max_params - 1
        why.append(f"{n:,} parameters > max_params {constraints.max_params:,}")
    ctx = context_length(plan.config)
    if constraints.min_context is not None and ctx is not None and ctx < constraints.min_context:
        v += 1 - ctx / constraints.min_context
        why.append(f"context {ctx} < min_context {constraints.min_context}")
    return v, ("constraint violated: " + "; ".join(why)) if why else None
