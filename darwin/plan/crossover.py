"""Cross-family plans: Transformer × SSM crossover into a Bamba hybrid, and per-layer FFN transplant.

:func:`cross_layout` reads both parents' configs and tensor headers (never weights) and checks
that they can be bred; :func:`crossover_plan` and :func:`ffn_transplant_plan` then turn choices
into a :class:`~darwin.plan.plan.MergePlan` that the ordinary executor and writer handle.

Crossover rules (child = Bamba with the transformer parent's layer count ``L``):

* layer ``i`` takes its mixer and the norm before it from the transformer parent's layer ``i``
  (letter ``A``: attention) or from the SSM parent's layer ``j = ⌊i·L_B / L⌋`` (letter ``B``: its
  Mamba-2 mixer; a hybrid SSM parent whose layer ``j`` is attention gives attention);
* the FFN and its norm come from the transformer parent's layer ``i``; when the SSM parent's layer
  ``j`` carries an FFN of equal shape (a hybrid parent), they are blended ``(1 − r_ffn)·A + r_ffn·B``;
* embedding, final norm and head: blended ``(1 − r_embed)·A + r_embed·B`` (equal shapes and
  vocabularies are required), or copied from ``embed_from``;
* the SSM parent's hyper-parameters (heads, head dim, state size, groups, conv kernel, chunk size,
  biases, time-step limit) go into the child config; attention and FFN settings, vocabulary and
  rotary embedding come from the transformer parent.

FFN transplant (Darwin's published cross-family mode; child = parent A's architecture): layer
``i``'s FFN and FFN norm come from A, from B's layer ``j`` (whole-tensor transplant) or a blend,
by a per-layer ratio; everything else is A's.

Every tensor of both parents is either used or listed in the report (``not-inherited``); a
tensor the family layout does not know is an error, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from darwin.arch.config import child_config, dtype_name
from darwin.arch.hybrid import LAYOUTS, FamilyLayout, hybrid_config, layout_of
from darwin.arch.mapper import ArchMap, Component, classify
from darwin.arch.preflight import tokenizer_fingerprint
from darwin.errors import CompatibilityError, RecipeError
from darwin.io.checkpoint import Checkpoint
from darwin.plan.plan import MergePlan, ReportRow, Source, TensorTask, copy_task, linear_task

TARGET_LAYOUT = LAYOUTS["bamba"]


@dataclass
class CrossLayout:
    """Two parents of different families, checked and indexed; built once (no weights read).

    Attributes:
        a, b: parent references (transformer / SSM for crossover; recipient / donor for FFN transplant).
        la, lb: their family layouts.
        config_a, config_b: full config dicts (defaults filled in by transformers).
        num_layers: child layers (= A's).
        b_layer: per child layer, the B layer it draws from (``⌊i·L_B / L⌋``).
        b_mixers: per B layer ``attn`` or ``ssm``.
        shapes: reference → stored tensor name → shape.
        tied: the child ties its head to its embedding (A's setting).
        out_dtype: child storage dtype.
        checks: pre-flight rows ``(check, ok, detail)``.
        mode: ``crossover`` or ``ffn``.
    """

    a: str
    b: str
    la: FamilyLayout
    lb: FamilyLayout
    config_a: dict[str, Any]
    config_b: dict[str, Any]
    num_layers: int
    b_layer: list[int]
    b_mixers: list[str]
    shapes: dict[str, dict[str, tuple[int, ...]]]
    tied: bool
    out_dtype: torch.dtype
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    mode: str = "crossover"

    @property
    def models(self) -> list[str]:
        """Parent references, A first."""
        return [self.a, self.b]

    def group(self, ref: str, prefix: str) -> dict[str, tuple[int, ...]]:
        """Tensors of ``ref`` under ``prefix``: suffix → shape."""
        return {n[len(prefix):]: s for n, s in self.shapes[ref].items() if n.startswith(prefix)}


def _full_config(ck: Checkpoint) -> dict[str, Any]:
    from transformers import AutoConfig

    ck.require_config()
    try:
        return AutoConfig.from_pretrained(ck.path).to_dict()
    except Exception as e:  # unknown model_type, invalid values
        raise CompatibilityError(f"{ck.path}/config.json: transformers cannot read it ({type(e).__name__}: {e})") from e


def cross_layout(checkpoints: Mapping[str, Checkpoint], a: str, b: str, *, mode: str = "crossover",
                 out_dtype: torch.dtype = torch.float32) -> CrossLayout:
    """Check two parents of different families and index their tensors (headers only).

    Args:
        checkpoints: reference → opened checkpoint.
        a: transformer parent (crossover) or FFN recipient (``mode="ffn"``).
        b: SSM parent (crossover) or FFN donor.
        mode: ``crossover`` or ``ffn``.
        out_dtype: child storage dtype.

    Raises:
        CompatibilityError: unsupported family, hidden size, vocabulary, tokenizer or activation
            mismatch, invalid SSM dimensions, or a tensor the layout does not place; before any
            weight is read.
    """
    ca, cb = _full_config(checkpoints[a]), _full_config(checkpoints[b])
    try:
        la = layout_of(ca, "transformer" if mode == "crossover" else "any")
        lb = layout_of(cb, "ssm" if mode == "crossover" else "any")
    except KeyError as e:
        raise CompatibilityError(f"{checkpoints[a].path if 'transformer' in str(e) else checkpoints[b].path}: "
                                 f"{e.args[0]}") from None
    pa, pb = checkpoints[a].path, checkpoints[b].path
    checks: list[tuple[str, bool, str]] = []
    problems: list[str] = []

    def check(name: str, va: Any, vb: Any, fatal: bool = True) -> None:
        ok = va == vb
        checks.append((name, ok, f"A={va}, B={vb}"))
        if not ok and fatal:
            problems.append(f"{name} differs (A {pa}: {va}; B {pb}: {vb})")

    check("hidden_size", ca.get("hidden_size"), cb.get("hidden_size"))
    check("vocab_size", ca.get("vocab_size"), cb.get("vocab_size"))
    fa, fb = tokenizer_fingerprint(pa), tokenizer_fingerprint(pb)
    if fa and fb:
        check("tokenizer", fa[:12], fb[:12])
    if mode == "crossover":
        check("hidden_act", ca.get("hidden_act"), cb.get("hidden_act"))
        check("norm eps", ca.get("rms_norm_eps"), cb.get("layer_norm_epsilon", cb.get("rms_norm_eps")), fatal=False)
        if ca.get("sliding_window"):
            problems.append(f"{pa}: sliding-window attention (sliding_window={ca['sliding_window']}) has no "
                            "Bamba equivalent")
    if problems:
        raise CompatibilityError("parents cannot be crossed: " + "; ".join(problems))

    n_a = ArchMap.build(ca, checkpoints[a].tensor_names).num_layers
    n_b = ArchMap.build(cb, checkpoints[b].tensor_names).num_layers
    shapes = {r: {n: tuple(checkpoints[r].meta[n].shape) for n in checkpoints[r].tensor_names} for r in (a, b)}
    tied = bool(ca.get("tie_word_embeddings", False)) and la.head not in shapes[a]
    lay = CrossLayout(a, b, la, lb, ca, cb, n_a, [i * n_b // n_a for i in range(n_a)], lb.mixers(cb, n_b),
                      shapes, tied, out_dtype, checks, mode)
    for ref, fl in ((a, la), (b, lb)):
        _check_placed(lay, ref, fl, checkpoints[ref].path)
    return lay


def _check_placed(lay: CrossLayout, ref: str, fl: FamilyLayout, folder) -> None:
    """Every stored tensor of ``ref`` belongs to a component the layout knows."""
    known = {fl.embed, fl.final_norm, fl.head}
    for name in lay.shapes[ref]:
        role = classify(name)
        if name in known:
            continue
        if role.layer is not None and name.startswith(fl.layer.format(i=role.layer)):
            rest = name[len(fl.layer.format(i=role.layer)):]
            subs = [s for s in (fl.attn, fl.ssm, fl.ffn) if s] + [fl.mixer_norm] + ([fl.ffn_norm] if fl.ffn_norm else [])
            if any(rest.startswith(s) for s in subs):
                continue
        raise CompatibilityError(f"{folder}: tensor {name!r} has no place in the {fl.model_type} layout "
                                 "(darwin/arch/hybrid.py); refusing to drop it silently")


# ----------------------------------------------------------------------------- task builders
def _pick(out: str, a: Source | None, b: Source | None, r: float, shape, component: Component,
          layer: int | None) -> TensorTask:
    """A's tensor (r ≤ 0 or no B), B's (r ≥ 1 or no A), else the linear blend."""
    if b is None or (a is not None and r <= 0.0):
        assert a is not None  # callers give A, or at least one of A and B
        return copy_task(out, a, shape, component, layer)
    if a is None or r >= 1.0:
        return copy_task(out, b, shape, component, layer)
    return linear_task(out, [a, b], [1.0 - r, r], shape, component, layer)


def _group_tasks(lay: CrossLayout, out_prefix: str, a_prefix: str | None, b_prefix: str | None, r: float,
                 component: Component, layer: int, problems: list[str]) -> list[TensorTask]:
    """Tasks for a component present in A (required) and maybe in B (blended when shapes match)."""
    ga = lay.group(lay.a, a_prefix) if a_prefix else {}
    gb = lay.group(lay.b, b_prefix) if b_prefix else {}
    tasks = []
    if r > 0 and gb and (set(ga) != set(gb) or any(ga[k] != gb[k] for k in ga)):
        problems.append(f"layer {layer} {component}: A {a_prefix} and B {b_prefix} differ in tensors or shapes "
                        f"(A {sorted(ga.items())[:2]}…, B {sorted(gb.items())[:2]}…)")
        return []
    for suffix, shape in ga.items():
        assert a_prefix is not None  # ga is empty without a prefix
        sb = None
        if gb and r > 0:
            assert b_prefix is not None  # gb is empty without a prefix
            sb = Source(lay.b, b_prefix + suffix)
        tasks.append(_pick(out_prefix + suffix, Source(lay.a, a_prefix + suffix), sb, r, shape, component, layer))
    return tasks


def _shared_tasks(lay: CrossLayout, out_layout: FamilyLayout, embed_ratio: float, embed_from: str,
                  problems: list[str]) -> list[TensorTask]:
    """Embedding, final norm and (untied) head."""
    r = embed_ratio if embed_from == "A" else 1.0 - embed_ratio
    tasks = []
    pairs: list[tuple[str, str, str, Component]] = [
        (out_layout.embed, lay.la.embed, lay.lb.embed, "embed"),
        (out_layout.final_norm, lay.la.final_norm, lay.lb.final_norm, "norm")]
    if not lay.tied:
        # a tied parent provides its head from its embedding
        ha = lay.la.head if lay.la.head in lay.shapes[lay.a] else lay.la.embed
        hb = lay.lb.head if lay.lb.head in lay.shapes[lay.b] else lay.lb.embed
        pairs.append((out_layout.head, ha, hb, "head"))
    for out, na, nb, comp in pairs:
        sa, sb = lay.shapes[lay.a].get(na), lay.shapes[lay.b].get(nb)
        if sa is None:
            problems.append(f"A has no {na!r}")
            continue
        if sb != sa and r > 0:
            problems.append(f"{comp}: A {na} {list(sa)} vs B {nb} {list(sb) if sb else 'missing'}")
            continue
        tasks.append(_pick(out, Source(lay.a, na), Source(lay.b, nb) if sb == sa else None, r, sa, comp, None))
    return tasks


def _finish(lay: CrossLayout, tasks: list[TensorTask], config: dict[str, Any], method: str,
            recipe: dict[str, Any], problems: list[str]) -> MergePlan:
    if problems:
        raise CompatibilityError("cannot build the child: " + "; ".join(problems[:6])
                                 + (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""))
    used = {(s.model, s.tensor) for t in tasks for s in t.inputs}
    report = [ReportRow(t.out_name, t.action, " + ".join(
        f"{'A' if s.model == lay.a else 'B'}:{s.tensor}" for s in t.inputs)) for t in tasks]
    report += [ReportRow(n, "not-inherited", f"{'A' if ref == lay.a else 'B'} ({list(s)})")
               for ref in (lay.a, lay.b) for n, s in lay.shapes[ref].items() if (ref, n) not in used]
    return MergePlan(tasks=tasks, models=lay.models, reference=lay.a, config=config, out_dtype=lay.out_dtype,
                     tied=lay.tied, tokenizer_source=lay.a, report=report, checks=lay.checks, method=method,
                     recipe=recipe)


# ----------------------------------------------------------------------------- plans
def parse_mixers(mixers: str | list[str], num_layers: int) -> list[str]:
    """``"ABAB"`` or ``["A", "B", …]`` → list of ``A``/``B``, one per layer.

    Raises:
        RecipeError: wrong length or a letter other than A/B.
    """
    letters = list(mixers.replace(",", "").replace(" ", "")) if isinstance(mixers, str) else list(mixers)
    letters = [str(x).upper() for x in letters]
    if len(letters) != num_layers or any(x not in ("A", "B") for x in letters):
        raise RecipeError(f"mixers: need {num_layers} letters A (attention from the transformer parent) or B "
                          f"(mixer from the SSM parent), got {''.join(letters)!r} ({len(letters)})")
    return letters


def crossover_plan(lay: CrossLayout, mixers: str | list[str], *, ffn_ratio: float = 0.0, embed_ratio: float = 0.0,
                   embed_from: str = "A", recipe: dict[str, Any] | None = None) -> MergePlan:
    """The Bamba hybrid child of a transformer and an SSM parent (see module doc).

    Args:
        lay: from :func:`cross_layout` with ``mode="crossover"``.
        mixers: one letter per child layer: ``A`` attention from the transformer parent, ``B``
            the SSM parent's mixer.
        ffn_ratio: weight of B's FFN where B's layer has one of equal shape (0: A's FFN).
        embed_ratio: weight of ``embed_from``'s other parent in embedding, final norm and head.
        embed_from: ``A`` or ``B``: the parent whose embedding, final norm and head are kept at
            ``embed_ratio = 0``.
        recipe: plain data recorded in the plan (for the card and replay).

    Raises:
        RecipeError: bad mixers string, ratio or ``embed_from``.
        CompatibilityError: a component's tensors or shapes do not match where they must.
    """
    letters = parse_mixers(mixers, lay.num_layers)
    for name, v in (("ffn_ratio", ffn_ratio), ("embed_ratio", embed_ratio)):
        if not 0.0 <= v <= 1.0:
            raise RecipeError(f"{name} must be in [0, 1], got {v}")
    if embed_from not in ("A", "B"):
        raise RecipeError(f"embed_from must be 'A' or 'B', got {embed_from!r}")
    out, la, lb = TARGET_LAYOUT, lay.la, lay.lb
    tasks: list[TensorTask] = []
    problems: list[str] = []
    kinds = []
    for i, letter in enumerate(letters):
        j = lay.b_layer[i]
        if letter == "A":
            kind, src, prefix, norm = "attn", lay.a, la.prefix(i, "attn"), la.norm(i, "mixer")
        else:
            kind = lay.b_mixers[j]
            src, prefix, norm = lay.b, lb.prefix(j, kind), lb.norm(j, "mixer")
        kinds.append(kind)
        for suffix, shape in lay.group(src, prefix).items():
            # kind is attn or the SSM parent's mixer kind (FamilyLayout.mixers: attn / ssm)
            tasks.append(copy_task(out.prefix(i, kind) + suffix, Source(src, prefix + suffix), shape,
                                   cast(Component, kind), i))
        if norm not in lay.shapes[src]:
            problems.append(f"{src}: no {norm!r}")
        else:
            tasks.append(copy_task(out.norm(i, "mixer"), Source(src, norm), lay.shapes[src][norm], "norm", i))
        b_ffn = lb.prefix(j, "ffn") if lb.ffn and lay.group(lay.b, lb.prefix(j, "ffn")) else None
        tasks += _group_tasks(lay, out.prefix(i, "ffn"), la.prefix(i, "ffn"), b_ffn, ffn_ratio, "ffn", i, problems)
        nb = lb.norm(j, "ffn") if b_ffn else None
        tasks.append(_pick(out.norm(i, "ffn"), Source(lay.a, la.norm(i, "ffn")), Source(lay.b, nb) if nb else None,
                           ffn_ratio, lay.shapes[lay.a][la.norm(i, "ffn")], "norm", i))
    tasks += _shared_tasks(lay, out, embed_ratio, embed_from, problems)
    config = hybrid_config(lay.config_a, lay.config_b, kinds, tied=lay.tied, dtype=dtype_name(lay.out_dtype))
    rec = recipe or {"crossover": {"parents": lay.models, "mixers": "".join(letters), "ffn_ratio": ffn_ratio,
                                   "embed_ratio": embed_ratio, "embed_from": embed_from}}
    return _finish(lay, tasks, config, f"crossover:{''.join(letters)}", rec, problems)


def ffn_transplant_plan(lay: CrossLayout, ratios: list[float], *, low: float = 0.15, high: float = 0.85,
                        recipe: dict[str, Any] | None = None) -> MergePlan:
    """Parent A with each layer's FFN (and FFN norm) kept, transplanted from B or blended.

    Args:
        lay: from :func:`cross_layout` with ``mode="ffn"``.
        ratios: per child layer, the fraction from B: ``< low`` keeps A's, ``> high`` transplants
            B's layer ``j`` whole, otherwise ``(1 − r)·A + r·B``.

    Raises:
        RecipeError: wrong number of ratios.
        CompatibilityError: B lacks an FFN at a layer that needs one, or shapes differ.
    """
    if len(ratios) != lay.num_layers:
        raise RecipeError(f"ffn transplant: need {lay.num_layers} ratios, got {len(ratios)}")
    la, lb = lay.la, lay.lb
    tasks: list[TensorTask] = []
    problems: list[str] = []
    ffn_names = set()
    for i, r in enumerate(ratios):
        j = lay.b_layer[i]
        r = 0.0 if r < low else 1.0 if r > high else r
        b_ffn = lb.prefix(j, "ffn") if lb.ffn else None
        if r > 0 and (b_ffn is None or not lay.group(lay.b, b_ffn)):
            problems.append(f"layer {i}: B ({lb.model_type}) layer {j} has no FFN")
            continue
        group = _group_tasks(lay, la.prefix(i, "ffn"), la.prefix(i, "ffn"), b_ffn, r, "ffn", i, problems)
        group.append(_pick(la.norm(i, "ffn"), Source(lay.a, la.norm(i, "ffn")),
                           Source(lay.b, lb.norm(j, "ffn")) if lb.ffn_norm else None, r,
                           lay.shapes[lay.a][la.norm(i, "ffn")], "norm", i))
        ffn_names |= {t.out_name for t in group}
        tasks += group
    for name, shape in lay.shapes[lay.a].items():
        if name not in ffn_names:
            role = classify(name)
            tasks.append(copy_task(name, Source(lay.a, name), shape, role.component, role.layer))
    config = child_config(lay.config_a, dtype=lay.out_dtype, tied=lay.tied)
    rec = recipe or {"ffn_transplant": {"parents": lay.models, "ratios": list(ratios)}}
    return _finish(lay, tasks, config, "ffn-transplant", rec, problems)


def parent_plan(lay: CrossLayout, which: str) -> MergePlan:
    """A plan that rebuilds parent ``A`` or ``B`` itself (its own config; a baseline)."""
    ref = lay.a if which == "A" else lay.b
    cfg = child_config(lay.config_a if which == "A" else lay.config_b, dtype=lay.out_dtype,
                       tied=lay.tied if which == "A" else "lm_head.weight" not in lay.shapes[ref])
    tasks = [copy_task(n, Source(ref, n), s, classify(n).component, classify(n).layer) for n, s in lay.shapes[ref].items()]
    return MergePlan(tasks=tasks, models=lay.models, reference=ref, config=cfg, out_dtype=lay.out_dtype,
                     tied=cfg["tie_word_embeddings"], tokenizer_source=ref,
                     report=[ReportRow(t.out_name, "transplant") for t in tasks], checks=lay.checks,
                     method=f"baseline:{which}")


def crossover(transformer_parent: str, ssm_parent: str, out_dir=None, *, mixers: str | list[str],
              ffn_ratio: float = 0.0, embed_ratio: float = 0.0, embed_from: str = "A", dtype: str = "float32",
              force: bool = False, device: str = "auto", dry_run: bool = False, progress: bool = True):
    """Breed a Bamba hybrid of a transformer and an SSM parent (Python API of ``darwin crossover``).

    Args:
        transformer_parent: folder or hub id of a Llama/Mistral-family model.
        ssm_parent: folder or hub id of a Mamba-2 (or Bamba) model with the same hidden size and
            vocabulary.
        out_dir: child folder (refused if it exists unless ``force``; written atomically).
        mixers: one letter per transformer layer (``"ABAB…"``): A attention, B SSM mixer.
        ffn_ratio, embed_ratio, embed_from: see :func:`crossover_plan`.
        dtype: child storage dtype.
        dry_run: check and plan only.

    Returns:
        a :class:`darwin.plan.run.MergeResult` (``plan``, ``out_dir``).

    Raises:
        CompatibilityError: the parents cannot be crossed (named, before any weight is read).
        RecipeError, CheckpointError, OutputExistsError: bad input, named.
    """
    from darwin.plan.planner import parse_dtype
    from darwin.plan.run import merge, open_parents

    if not dry_run and out_dir is None:
        raise RecipeError("give an output folder (or dry_run=True)")
    ckpts = open_parents([transformer_parent, ssm_parent])
    lay = cross_layout(ckpts, transformer_parent, ssm_parent, out_dtype=parse_dtype(dtype, "dtype"))
    plan = crossover_plan(lay, mixers, ffn_ratio=ffn_ratio, embed_ratio=embed_ratio, embed_from=embed_from)
    return merge((plan, ckpts), out_dir, force=force, device=device, dry_run=dry_run, progress=progress)
