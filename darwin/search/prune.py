"""``darwin prune``: a llama-family model cut to uniform FFN and attention widths, re-fitted in closed form.

Calibration forward passes on the given texts (:func:`darwin.diagnosis.calibrate.collect_stats`)
give each layer's ``down_proj`` and ``o_proj`` input Grams; neurons and GQA groups are ranked by a
score and the projections after them re-fitted by least squares (:mod:`darwin.plan.width`). Every
layer gets the same widths, so the child's config is stock (``intermediate_size``,
``num_attention_heads``, ``num_key_value_heads``, ``head_dim``) and transformers loads it natively:
no llama-family architecture in transformers takes per-layer widths. With ``max_params`` and no
``ffn``, the widest FFN that keeps the child under the budget is chosen. The calibration text must
not be the text a report holds out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from darwin.arch.config import context_length
from darwin.diagnosis.calibrate import collect_stats
from darwin.errors import CompatibilityError, RecipeError
from darwin.io.card import write_model_card
from darwin.io.checkpoint import Checkpoint
from darwin.io.extras import copy_generation_config, copy_tokenizer_files, require_tokenizer
from darwin.io.textfiles import collect_files
from darwin.io.writer import ShardedWriter, atomic_output_dir, check_output_dir, refuse_input_overlap
from darwin.plan.width import (
    SCORES,
    InputStats,
    WidthPlan,
    group_scores,
    keep_top,
    llama_like_params,
    neuron_scores,
    prune_attention,
    prune_ffn,
    widest_ffn,
)


class PruneRequest(BaseModel):
    """What a prune run is asked for (unknown keys refused).

    Attributes:
        model: a llama-family folder (or hub id).
        calibration: text files or folders for the statistics (never the report's held-out text).
        ffn: kept FFN neurons per layer (None: the widest under ``max_params``).
        groups: kept GQA groups per layer (None: all).
        max_params: parameter budget (tied embeddings once) used when ``ffn`` is None.
        score: neuron score, one of :data:`darwin.plan.width.SCORES`.
        refit: re-fit ``down_proj`` and ``o_proj`` by least squares (False: plain pruning).
        ridge: the re-fit's ridge, a fraction of the Gram's mean diagonal.
        tokens, window: calibration tokens in all, and per forward window.
        multiple: round the FFN width down to a multiple of this.
        sequential: prune layer by layer, each layer scored and re-fitted on the inputs the
            already pruned layers produce (:func:`sequential_prune`).
        device: where the calibration forward passes run.
    """

    model_config = ConfigDict(extra="forbid")
    model: str
    calibration: list[str] = Field(min_length=1)
    ffn: Optional[int] = Field(default=None, ge=1)
    groups: Optional[int] = Field(default=None, ge=1)
    max_params: Optional[int] = Field(default=None, ge=1)
    score: str = "second_moment"
    refit: bool = True
    ridge: float = Field(default=1e-2, ge=0, allow_inf_nan=False)
    tokens: int = Field(default=32768, ge=64)
    window: int = Field(default=512, ge=8)
    multiple: int = Field(default=1, ge=1)
    sequential: bool = False
    device: str = "auto"


@dataclass
class PruneResult:
    """Where the child went and what it is."""

    out_dir: Path
    plan: WidthPlan
    parameters_before: int
    parameters_after: int
    calibration_tokens: int


@dataclass(frozen=True)
class Layout:
    """A llama-family model's layer shape: layers, query heads per GQA group, head size, groups."""

    layers: int
    q_per_group: int
    head_dim: int
    groups: int


def check_prunable(config: dict[str, Any], ck: Checkpoint) -> Layout:
    """The layout of a llama-family checkpoint (what width pruning needs).

    Raises:
        CompatibilityError: a config or tensor layout this operator does not handle.
    """
    need = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
    missing = [k for k in need if not isinstance(config.get(k), int)]
    if missing or config.get("mlp_bias"):
        raise CompatibilityError(f"{ck.path}: width pruning handles llama-family configs without FFN biases "
                                 f"(missing: {', '.join(missing) or 'none'}; mlp_bias: {config.get('mlp_bias')})")
    n_heads = config["num_attention_heads"]
    n_kv = int(config.get("num_key_value_heads") or n_heads)
    hd = int(config.get("head_dim") or config["hidden_size"] // n_heads)
    for i in range(config["num_hidden_layers"]):
        for n in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "self_attn.q_proj", "self_attn.k_proj",
                  "self_attn.v_proj", "self_attn.o_proj"):
            if f"model.layers.{i}.{n}.weight" not in ck:
                raise CompatibilityError(f"{ck.path}: no tensor model.layers.{i}.{n}.weight (a llama-family layout "
                                         "is needed)")
    return Layout(config["num_hidden_layers"], n_heads // n_kv, hd, n_kv)


def calibration_windows(tok: Any, files: list[str], tokens: int, window: int) -> list[torch.Tensor]:
    """``[1, window]`` token batches from the texts, ``tokens`` in all, shared equally among the
    files (each tokenized whole and cut into windows; a short file leaves its share to the others).

    Raises:
        RecipeError: a missing or unreadable file, or too little text for one window.
    """
    paths = collect_files(files, "calibration")
    per_file: list[list[torch.Tensor]] = []
    for p in paths:
        try:
            ids = tok(p.read_text(encoding="utf-8"), add_special_tokens=False, return_tensors="pt").input_ids[0]
        except (OSError, UnicodeDecodeError) as e:
            raise RecipeError(f"{p}: cannot read calibration text ({e})") from e
        per_file.append([ids[s:s + window].unsqueeze(0) for s in range(0, ids.numel() - window + 1, window)])
    out: list[torch.Tensor] = []
    want = max(1, tokens // window)
    while len(out) < want and any(per_file):  # round robin over the files
        for chunks in per_file:
            if chunks and len(out) < want:
                out.append(chunks.pop(0))
    if not out:
        raise RecipeError(f"calibration text {files}: fewer than {window} tokens (one calibration window); give more "
                          "text")
    return out


def _width_plan(req: PruneRequest, config: dict[str, Any], lay: Layout) -> WidthPlan:
    """The uniform widths a request asks for (``ffn`` given, or the widest under ``max_params``).

    Raises:
        RecipeError: an unknown score, more groups than the model has, no width, or none that fits.
    """
    if req.score not in SCORES:
        raise RecipeError(f"score {req.score!r}: one of {', '.join(SCORES)}")
    groups = req.groups or lay.groups
    if groups > lay.groups:
        raise RecipeError(f"groups {groups}: the model has {lay.groups} key/value groups per layer")
    ffn = req.ffn or (widest_ffn(config, groups, req.max_params, multiple=req.multiple) if req.max_params else None)
    if ffn is None:
        raise RecipeError("give ffn (--ffn: kept neurons per layer) or max_params (--max-params: a budget to fill)")
    if ffn < 1:
        raise RecipeError(f"max_params {req.max_params}: no FFN width fits (with {groups} groups per layer)")
    if ffn > config["intermediate_size"]:
        raise RecipeError(f"ffn {ffn}: the model has {config['intermediate_size']} neurons per layer")
    plan = WidthPlan(ffn, groups)
    if req.max_params is not None and (n := llama_like_params(config, plan)) > req.max_params:
        raise RecipeError(f"ffn {ffn} with {groups} groups gives {n:,} parameters, over max_params {req.max_params:,}; "
                          "drop ffn to get the widest that fits")
    return plan


def _windows(req: PruneRequest, ck: Checkpoint) -> list[torch.Tensor]:
    from transformers import AutoTokenizer

    require_tokenizer(ck.path, "calibration tokenizes text and needs one")
    return calibration_windows(AutoTokenizer.from_pretrained(ck.path), req.calibration, req.tokens, req.window)


def _load_model(req: PruneRequest, ck: Checkpoint) -> Any:
    from transformers import AutoModelForCausalLM

    from darwin.plan.execute import resolve_device

    dev = resolve_device(req.device)
    return AutoModelForCausalLM.from_pretrained(ck.path, dtype=torch.float32).to(dev).eval()  # type: ignore[arg-type]


def _pruned_tensors(req: PruneRequest, ck: Checkpoint, plan: WidthPlan, lay: Layout, progress: bool
                    ) -> tuple[dict[str, torch.Tensor], int]:
    """(the new projection tensors by name, calibration tokens): one-shot from the dense model's
    statistics, or layer by layer with ``req.sequential``."""
    windows = _windows(req, ck)
    if req.sequential:
        return sequential_prune(_load_model(req, ck), windows, req, plan, lay), len(windows) * req.window
    roles = tuple(r for r, on in (("ffn", req.refit or req.score != "magnitude"), ("attn", plan.groups < lay.groups))
                  if on)
    stats: dict[str, list[InputStats]] = {}
    if roles:
        model = _load_model(req, ck)
        with Progress(TextColumn("[bold]calibrating"), BarColumn(), MofNCompleteColumn(), disable=not progress,
                      transient=True) as bar:
            job = bar.add_task("calibrate", total=len(windows))
            stats = collect_stats(model, windows, roles=roles, progress=lambda: bar.advance(job))
    return _oneshot(ck, stats, req, plan, lay), len(windows) * req.window


def prune(req: PruneRequest, out_dir: str | os.PathLike, *, force: bool = False, progress: bool = True,
          check: Callable[[Path], list[str]] | None = None, method: str = "width-prune") -> PruneResult:
    """Cut ``req.model`` to uniform widths and write the child into ``out_dir`` (atomically).

    Args:
        req: the request; out_dir: the child folder; force: replace an existing one.
        progress: show a progress bar for the calibration passes.
        check: called with the complete temporary child folder (weights, config, tokenizer) before
            the card is written and the folder put in place; returns further card sections, or
            raises to keep the child from being put in place (``darwin golf``'s constraint check).
        method: the method name on the card and in ``lineage.json``.

    Raises:
        RecipeError, CheckpointError, CompatibilityError, OutputExistsError: bad input, named.
    """
    check_output_dir(out_dir, force=force)
    ck = Checkpoint(req.model)
    refuse_input_overlap(out_dir, {"the model being pruned": ck.path,
                                   **{f"the calibration text {c}": c for c in req.calibration}})
    config = dict(ck.require_config())
    lay = check_prunable(config, ck)
    plan = _width_plan(req, config, lay)
    req = req.model_copy(update={"window": min(req.window, context_length(config) or req.window)})
    uncut = plan.ffn == config["intermediate_size"] and plan.groups == lay.groups
    tensors, n_tokens = ({}, 0) if uncut else _pruned_tensors(req, ck, plan, lay, progress)
    before, after = ck.num_parameters, llama_like_params(config, plan)
    new_cfg = {**config, "intermediate_size": plan.ffn, "num_attention_heads": plan.groups * lay.q_per_group,
               "num_key_value_heads": plan.groups, "head_dim": lay.head_dim}
    details = {"ffn": plan.ffn, "groups": plan.groups, "score": req.score, "refit": req.refit, "ridge": req.ridge,
               "sequential": req.sequential,
               "calibration": [str(c) for c in req.calibration], "calibration_tokens": n_tokens,
               "parameters_before": before, "parameters_after": after}
    with atomic_output_dir(out_dir, force=force) as tmp:
        tmp = Path(tmp)
        _write_tensors(ck, tmp, tensors)
        (tmp / "config.json").write_text(json.dumps(new_cfg, indent=2, sort_keys=True))
        copy_tokenizer_files(ck.path, tmp)
        copy_generation_config(ck.path, tmp)
        sections = [_calibration_card(req, n_tokens), *(check(tmp) if check else [])]
        write_model_card(tmp, parents=[req.model], method=method, parameters=details, num_parameters=after,
                         dtype=str(config.get("torch_dtype") or config.get("dtype") or "float32"),
                         extra_sections=sections, title="Pruned model")
        (tmp / "lineage.json").write_text(json.dumps({"model": "child", "method": method, **details,
                                                      "parents": [{"model": str(req.model)}]}, indent=1))
    ck.close()
    return PruneResult(Path(out_dir).expanduser().resolve(), plan, before, after, n_tokens)


def _calibration_card(req: PruneRequest, n_tokens: int) -> str:
    """Model-card section: how the widths were chosen and what text calibrated them."""
    if not n_tokens:
        return ("## Width pruning (no training)\n\n- nothing to cut: the model already has these widths (it fits "
                "the budget), so its weights are copied unchanged")
    files = ", ".join(f"`{Path(c).name}`" for c in req.calibration)
    how = "layer by layer on the pruned prefix's inputs" if req.sequential else "from the dense model's statistics"
    return "\n".join(["## Width pruning (no training)", "",
                      f"- score: {req.score}; least-squares re-fit of down_proj / o_proj: "
                      f"{'yes' if req.refit else 'no'} (ridge {req.ridge:g}), {how}",
                      f"- calibration data: {n_tokens:,} tokens in {req.window}-token windows from {files}"])


def _oneshot(ck: Checkpoint, stats: dict[str, list[InputStats]], req: PruneRequest, plan: WidthPlan, lay: Layout
             ) -> dict[str, torch.Tensor]:
    """Every layer's projections cut to ``plan`` from the dense model's statistics (biases of q/k/v
    follow their rows)."""
    out: dict[str, torch.Tensor] = {}
    for i in range(lay.layers):
        p = f"model.layers.{i}"
        g, u, d = (ck.get(f"{p}.mlp.{n}_proj.weight") for n in ("gate", "up", "down"))
        ffn_stats = stats["ffn"][i] if "ffn" in stats else None
        keep = keep_top(neuron_scores(req.score, ffn_stats, d, g, u, req.ridge), plan.ffn)
        out.update(zip((f"{p}.mlp.{n}_proj.weight" for n in ("gate", "up", "down")),
                       prune_ffn(g, u, d, keep, ffn_stats, refit_down=req.refit, ridge=req.ridge)))
        if plan.groups < lay.groups:
            out.update(_attention(ck, p, stats["attn"][i], req, plan, lay))
    return out


def _attention(ck: Checkpoint, p: str, a: InputStats, req: PruneRequest, plan: WidthPlan, lay: Layout
               ) -> dict[str, torch.Tensor]:
    """Layer ``p``'s attention tensors with only the best ``plan.groups`` GQA groups."""
    q, k, v, o = (ck.get(f"{p}.self_attn.{n}_proj.weight") for n in ("q", "k", "v", "o"))
    kept = keep_top(group_scores(a, o, lay.groups, lay.q_per_group, lay.head_dim), plan.groups)
    out = dict(zip((f"{p}.self_attn.{n}_proj.weight" for n in "qkvo"),
                   prune_attention(q, k, v, o, kept, a, q_per_group=lay.q_per_group, head_dim=lay.head_dim,
                                   refit_o=req.refit, ridge=req.ridge)))
    for n, per in (("q", lay.q_per_group), ("k", 1), ("v", 1)):
        name = f"{p}.self_attn.{n}_proj.bias"
        if name in ck:
            rows = torch.cat([torch.arange(int(x) * per * lay.head_dim, (int(x) + 1) * per * lay.head_dim)
                              for x in kept])
            out[name] = ck.get(name)[rows].contiguous()
    return out


def _write_tensors(ck: Checkpoint, folder: Path, tensors: dict[str, torch.Tensor]) -> None:
    """``tensors`` (in each original tensor's dtype) and every other tensor of ``ck`` as it is."""
    writer = ShardedWriter(folder, 5 * 10**9)
    for n in ck.tensor_names:
        writer.add(n, tensors[n].to(ck.meta[n].dtype).contiguous() if n in tensors else ck.get(n))
    writer.finish()


def _chunks(fn, x: torch.Tensor, size: int = 8) -> torch.Tensor:
    return torch.cat([fn(x[i:i + size]) for i in range(0, x.shape[0], size)])


def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    lin.weight.data = weight.contiguous().float()
    return lin


@torch.no_grad()
def sequential_prune(model: Any, windows: list[torch.Tensor], req: PruneRequest, plan: WidthPlan, lay: Layout
                     ) -> dict[str, torch.Tensor]:
    """Prune ``model`` (a loaded llama-family causal LM, float32) layer by layer, in place.

    The calibration tokens flow through the already pruned layers; each layer's ``down_proj``
    (``o_proj``) inputs are collected on that stream, neurons (groups) scored on them, and the
    projection re-fitted by :func:`darwin.plan.width.refit` to reproduce the layer's own dense
    weights on those inputs: ``min ‖W X̃ − W′ X̃_K‖²`` with ``X̃`` the pruned prefix's activations.
    This is the sequential rule of SparseGPT (Frantar & Alistarh, arXiv 2301.00774) and OBC: each
    layer is fitted on the inputs it will see. (Fitting towards the dense model's outputs instead
    was measured worse on SmolLM2, even on the calibration text: RESULTS.md §(j).)

    Returns:
        the new projection tensors by stored name.
    """
    inner = model.model
    ids = torch.cat(windows).to(next(model.parameters()).device)
    x = inner.embed_tokens(ids)
    pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    out: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(inner.layers):
        pe = inner.rotary_emb(x[:1], pos)

        def attn(h: torch.Tensor, lyr=layer, pe=pe) -> torch.Tensor:
            pe_b = tuple(t.expand(h.shape[0], *t.shape[1:]) for t in pe)
            return lyr.self_attn(hidden_states=lyr.input_layernorm(h), position_embeddings=pe_b,
                                 attention_mask=None)[0]
        p = f"model.layers.{i}"
        if plan.groups < lay.groups:
            out.update(_sequential_attention(layer, p, x, attn, (req, plan), lay))
        r = x + _chunks(attn, x)
        mlp = layer.mlp
        n = layer.post_attention_layernorm(r)
        h = mlp.act_fn(mlp.gate_proj(n)) * mlp.up_proj(n)
        st = InputStats.of(h)
        keep = keep_top(neuron_scores(req.score, st, mlp.down_proj.weight, mlp.gate_proj.weight, mlp.up_proj.weight,
                                      req.ridge), plan.ffn)
        g, u, d = prune_ffn(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, keep, st,
                            refit_down=req.refit, ridge=req.ridge)
        mlp.gate_proj, mlp.up_proj, mlp.down_proj = _linear(g), _linear(u), _linear(d)
        x = r + mlp.down_proj(h[..., keep])
        for name in ("gate", "up", "down"):
            out[f"{p}.mlp.{name}_proj.weight"] = getattr(mlp, f"{name}_proj").weight.detach().clone()
    return out


def _sequential_attention(layer: Any, p: str, x: torch.Tensor, attn, job: tuple[PruneRequest, WidthPlan],
                          lay: Layout) -> dict[str, torch.Tensor]:
    """Cut layer ``p``'s attention to ``plan.groups`` groups in place, scored and ``o_proj``
    re-fitted on the heads' outputs over the pruned stream ``x``."""
    sa, (req, plan) = layer.self_attn, job
    if any(getattr(sa, f"{n}_proj").bias is not None for n in "qkvo"):
        raise CompatibilityError(f"{p}: sequential attention pruning handles attention without biases; "
                                 "use the one-shot re-fit (no --sequential)")
    seen: list[torch.Tensor] = []
    hook = sa.o_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach()))
    try:
        _chunks(attn, x)
    finally:
        hook.remove()
    st = InputStats.of(torch.cat(seen))
    kept = keep_top(group_scores(st, sa.o_proj.weight, lay.groups, lay.q_per_group, lay.head_dim), plan.groups)
    q, k, v, o = prune_attention(sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight, sa.o_proj.weight, kept, st,
                                 q_per_group=lay.q_per_group, head_dim=lay.head_dim, refit_o=req.refit,
                                 ridge=req.ridge)
    sa.q_proj, sa.k_proj, sa.v_proj, sa.o_proj = (_linear(w) for w in (q, k, v, o))
    return {f"{p}.self_attn.{n}_proj.weight": getattr(sa, f"{n}_proj").weight.detach().clone() for n in "qkvo"}
