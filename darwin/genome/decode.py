"""Decode a genome into a per-tensor merge plan over two parents.

:func:`pair_layout` does the slow part once per search (maps both parents, pairs their tensors,
runs the pre-flight checks); :func:`decode` then turns gene values into a
:class:`~darwin.plan.plan.MergePlan` in microseconds per tensor, with no I/O.

Definitions (darwin's; the Darwin model cards name the genes but not how they combine):

* ``r_genome = σ(logit γ + logit α_component + logit r_block)`` with ``block = ⌊6·layer/L⌋``;
  attention and SSM mixers use ``attn_ratio``, FFNs ``ffn_ratio``, embeddings and the head
  ``embed_ratio``; norms and unmapped tensors the neutral α = 0.5, and tensors outside the layers
  the neutral block ratio 0.5 (``darwin14`` decoder). ``layerwise`` reads ``layer_<i>_attn`` /
  ``layer_<i>_ffn`` per layer, ``norm_ratio`` and ``embed_ratio``.
* With an MRI diagnosis, ``r = τ·r_MRI + (1 − τ)·r_genome`` (τ = ``mri_trust``).
* ``r < transplant_low`` copies A's tensor whole, ``r > transplant_high`` B's; otherwise the
  ``darwin_blend`` kernel: ``λ·SLERP(A, B; r) + (1 − λ)·DARE-TIES(θ₀; A, B; ρ_A, ρ_B)`` with θ₀
  the base if given, else A (λ = ``merge_method_weight``).
* ``zones`` (the reduced 6-gene genome): ``r = σ(logit γ + logit α_component + logit z_zone)`` with
  ``zone = ⌊3·layer/L⌋`` (three depth zones), α from ``attn_ratio`` / ``ffn_ratio`` (embeddings,
  head and norms: neutral), and every tensor the *linear* merge ``(1 − r)·A + r·B``: at
  α = z = 0.5 it is exactly the uniform linear merge with weight γ, so a search can start at the
  best tuned one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from darwin.arch.config import child_config
from darwin.arch.mapper import ArchMap, TensorRole, merge_units
from darwin.arch.preflight import config_checks, tensor_verdict
from darwin.errors import CompatibilityError, RecipeError
from darwin.genome.registry import Decoder, RatioRule, get_decoder, register_decoder
from darwin.genome.spec import GenomeSpec, genome_ref
from darwin.io.checkpoint import Checkpoint
from darwin.kernels.masks import COUNTER
from darwin.kernels.seeds import tensor_seed
from darwin.plan.plan import MergePlan, ReportRow, Source, TensorTask, copy_task, linear_task

_CLAMP = 1e-6


def logit(p: float) -> float:
    """``log(p/(1−p))`` with p clamped to ``[1e-6, 1 − 1e-6]``."""
    p = min(max(p, _CLAMP), 1 - _CLAMP)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    """``1/(1 + e^{−x})``."""
    return 1.0 / (1.0 + math.exp(-x))


@dataclass(frozen=True)
class Slot:
    """One child tensor and where it comes from in each parent (stored names)."""

    name: str
    role: TensorRole
    shape: tuple[int, ...]
    a: str
    b: str
    base: str | None


@dataclass
class PairLayout:
    """Two parents (and an optional base) paired tensor by tensor; built once per search.

    Attributes:
        a, b, base: parent references.
        slots: one per child tensor, in parent A's storage order.
        num_layers: decoder layers of A (and B).
        config: the child config (A's, with dtype and tying set).
        tied: the child ties its head to its embedding.
        out_dtype: child storage dtype.
        checks: config-level pre-flight rows.
    """

    a: str
    b: str
    base: str | None
    slots: list[Slot]
    num_layers: int
    config: dict[str, Any]
    tied: bool
    out_dtype: torch.dtype
    checks: list[tuple[str, bool, str]]

    @property
    def models(self) -> list[str]:
        """Parent references, A first."""
        return [self.a, self.b] + ([self.base] if self.base else [])


def pair_layout(checkpoints: Mapping[str, Checkpoint], a: str, b: str, base: str | None = None,
                out_dtype: torch.dtype = torch.float32) -> PairLayout:
    """Pair the tensors of parents A and B (and the base) and run the pre-flight checks.

    Raises:
        CompatibilityError: a tensor is missing from a parent, shapes differ, or a config check
            fails (model type, hidden size, vocabulary, layer count, rope, tokenizer); the
            message lists the culprits.
    """
    refs = [a, b] + ([base] if base else [])
    for m in refs:
        checkpoints[m].require_config()
    labels = {m: chr(ord("A") + i) if i < 2 else "base" for i, m in enumerate(refs)}
    maps = {m: ArchMap.build(checkpoints[m].config, checkpoints[m].tensor_names) for m in refs}
    tied = all(maps[m].tied for m in refs)
    names = list(maps[a].roles)
    for m in refs[1:]:
        names += [n for n in maps[m].roles if n not in names]
    if tied:
        names = [n for n in names if maps[a].roles.get(n) is None or maps[a].roles[n].component != "head"]
    elif maps[a].head_name not in names:
        names.append(maps[a].head_name)
    slots, problems = [], []
    for n in names:
        stored = {m: maps[m].stored_name(n, checkpoints[m], tied) for m in refs}
        shapes = {m: (checkpoints[m].meta[s].shape if s else None) for m, s in stored.items()}
        action, detail = tensor_verdict(shapes, labels)
        if action != "blend":
            problems.append(f"{n}: {action} ({detail})")
            continue
        role = maps[a].roles.get(n) or next(maps[m].roles[n] for m in refs if n in maps[m].roles) \
            if any(n in maps[m].roles for m in refs) else TensorRole(n, "head", None, None, n)
        shape_a, name_a, name_b = shapes[a], stored[a], stored[b]
        assert shape_a is not None and name_a is not None and name_b is not None  # blend: every parent has it
        slots.append(Slot(n, role, shape_a, name_a, name_b, stored[base] if base else None))
    checks = config_checks({m: checkpoints[m].config for m in refs}, {m: checkpoints[m].path for m in refs},
                           labels, same_depth=True, check_tokenizer=True)
    problems += [f"{c} differs: {d}" for c, ok, d in checks if not ok]
    if problems:
        raise CompatibilityError("parents are not compatible: " + "; ".join(problems[:6])
                                 + (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""))
    config = child_config(checkpoints[a].config, dtype=out_dtype, tied=tied)
    return PairLayout(a, b, base, slots, maps[a].num_layers, config, tied, out_dtype, checks)


# ----------------------------------------------------------------------------- ratio rules
_ATTN_LIKE = ("attn", "ssm")
#: baselines of same-family decoders: both parents as they are and the uniform 0.5 linear merge
PAIR_BASELINES = ("parent A", "parent B", "uniform 0.5")


def darwin14_ratio(v: Mapping[str, float], role: TensorRole, num_layers: int, neutral: float) -> float:
    """``σ(logit γ + logit α_component + logit r_block)`` for one tensor (see module doc)."""
    comp = role.component
    alpha = (v["attn_ratio"] if comp in _ATTN_LIKE else v["ffn_ratio"] if comp == "ffn"
             else v["embed_ratio"] if comp in ("embed", "head") else neutral)
    if role.layer is not None and num_layers > 0:
        block = v[f"block_{min(5, 6 * role.layer // num_layers)}_ratio"]
    else:
        block = neutral
    return sigmoid(logit(v["global_ratio"]) + logit(alpha) + logit(block))


def layerwise_ratio(v: Mapping[str, float], role: TensorRole, num_layers: int, neutral: float) -> float:
    """Per-layer ratio: ``layer_<i>_attn`` / ``layer_<i>_ffn``; ``norm_ratio``; ``embed_ratio``."""
    comp = role.component
    if role.layer is not None and comp in _ATTN_LIKE:
        return v[f"layer_{role.layer}_attn"]
    if role.layer is not None and comp == "ffn":
        return v[f"layer_{role.layer}_ffn"]
    if comp == "norm":
        return v["norm_ratio"]
    if comp in ("embed", "head"):
        return v["embed_ratio"]
    return neutral


def zones_ratio(v: Mapping[str, float], role: TensorRole, num_layers: int, neutral: float) -> float:
    """``σ(logit γ + logit α_component + logit z_zone)``, three depth zones (see module doc)."""
    comp = role.component
    alpha = v["attn_ratio"] if comp in _ATTN_LIKE else v["ffn_ratio"] if comp == "ffn" else neutral
    zone = v[f"zone_{min(2, 3 * role.layer // num_layers)}_ratio"] if role.layer is not None and num_layers else neutral
    return sigmoid(logit(v["global_ratio"]) + logit(alpha) + logit(zone))


DARWIN14 = register_decoder(Decoder(
    name="darwin14", ratio_rule=darwin14_ratio, mri_prior="tensor", takes_base=True,
    genes=("global_ratio", "attn_ratio", "ffn_ratio", "embed_ratio", *(f"block_{i}_ratio" for i in range(6))),
    baselines=PAIR_BASELINES,
    description="global, attention, FFN and embedding ratios times six depth-block ratios"))
LAYERWISE = register_decoder(Decoder(
    name="layerwise", ratio_rule=layerwise_ratio, mri_prior="tensor", takes_base=True,
    genes=("embed_ratio", "norm_ratio"), per_layer_genes=("attn", "ffn"),
    baselines=PAIR_BASELINES,
    description="one attention and one FFN ratio per layer"))
ZONES = register_decoder(Decoder(
    name="zones", ratio_rule=zones_ratio, takes_base=True, blend="linear",
    genes=("global_ratio", "attn_ratio", "ffn_ratio", *(f"zone_{i}_ratio" for i in range(3))),
    baselines=PAIR_BASELINES,
    description="global, attention and FFN ratios times three depth zones, linear per tensor (6 genes)"))


def ratio_rule(spec: GenomeSpec) -> RatioRule:
    """The genome's per-tensor ratio rule.

    Raises:
        RecipeError: the decoder has none (it decodes through its own breeder).
    """
    rule = get_decoder(spec.decoder).ratio_rule
    if rule is None:
        raise RecipeError(f"genome {spec.name!r}: decoder {spec.decoder!r} has no per-tensor ratio rule "
                          "(it decodes through its own breeder)")
    return rule


def tensor_ratio(spec: GenomeSpec, values: Mapping[str, float], slot: Slot, num_layers: int,
                 r_mri: Mapping[str, float] | None, rule: RatioRule | None = None) -> float:
    """Final ratio r for one tensor: the decoder's rule (``rule``, looked up when None), fused with MRI
    when given."""
    rule = rule or ratio_rule(spec)
    try:
        r = rule(values, slot.role, num_layers, spec.options.neutral_ratio)
    except Exception as e:  # a user's ratio rule: named, not a traceback
        raise RecipeError(f"decoder {spec.decoder!r}: the ratio rule failed on {slot.name} "
                          f"({type(e).__name__}: {e})") from None
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
        raise RecipeError(f"decoder {spec.decoder!r}: the ratio rule gave {r!r} for {slot.name}; "
                          "a ratio is a number in [0, 1]")
    if r_mri is not None and slot.name in r_mri:
        tau = values["mri_trust"]
        r = tau * r_mri[slot.name] + (1 - tau) * r
    return r


def check_values(spec: GenomeSpec, values: Mapping[str, float], num_layers: int) -> None:
    """Every gene of the expanded genome has a value inside its bounds.

    Raises:
        RecipeError: a missing, unknown or out-of-bounds gene.
    """
    dec = get_decoder(spec.decoder)
    genes = {g.name: g for g in spec.expand(num_layers)}
    missing = [n for n in dec.required_genes if n not in genes]
    per_layer = {g.name for g in spec.per_layer_genes}
    missing += [f"per_layer_genes.{n}" for n in dec.per_layer_genes if n not in per_layer]
    if missing:
        raise RecipeError(f"genome {spec.name!r}: decoder {spec.decoder!r} needs genes {missing}")
    for n, g in genes.items():
        if n not in values:
            raise RecipeError(f"genome {spec.name!r}: no value for gene {n!r}")
        if not g.low - 1e-9 <= values[n] <= g.high + 1e-9:
            raise RecipeError(f"gene {n!r} = {values[n]} outside [{g.low}, {g.high}]")
    unknown = set(values) - set(genes)
    if unknown:
        raise RecipeError(f"genome {spec.name!r}: unknown genes {sorted(unknown)}")


def decode(spec: GenomeSpec, values: Mapping[str, float], layout: PairLayout, *,
           r_mri: Mapping[str, float] | None = None, seed: int = 0) -> MergePlan:
    """Turn gene values into a merge plan.

    Args:
        spec: the genome definition.
        values: gene name → value (inside bounds), e.g. from :func:`vector_to_values`.
        layout: the paired parents (:func:`pair_layout`).
        r_mri: tensor name → MRI ratio in [0, 1] (fraction from B), or None without MRI.
        seed: mask seed; masks depend on (seed, tensor, parent), not on the genome, so a genome
            always scores the same and nearby genomes share masks (common random numbers).

    Returns:
        a :class:`MergePlan` whose ``recipe`` field records the genome (``darwin merge`` can
        replay it).
    """
    check_values(spec, values, layout.num_layers)
    rule = ratio_rule(spec)  # once per plan, not per tensor
    linear = get_decoder(spec.decoder).blend == "linear"
    opt = spec.options
    tasks, report = [], []
    for s in layout.slots:
        r = tensor_ratio(spec, values, s, layout.num_layers, r_mri, rule)
        a_src, b_src = Source(layout.a, s.a), Source(layout.b, s.b)
        if r < opt.transplant_low or r > opt.transplant_high:
            src = a_src if r < opt.transplant_low else b_src
            tasks.append(copy_task(s.name, src, s.shape, s.role.component, s.role.layer))
            report.append(ReportRow(s.name, "transplant", f"r={r:.3f} → {'A' if src is a_src else 'B'}"))
            continue
        if linear:
            tasks.append(linear_task(s.name, [a_src, b_src], [1.0 - r, r], s.shape, s.role.component, s.role.layer))
            report.append(ReportRow(s.name, "blend", f"linear r={r:.3f}"))
            continue
        lam = values["merge_method_weight"]
        dens = [values["density_a"], values["density_b"]]
        base_src = None  # None: θ₀ = A (see blend.py)
        if layout.base:
            assert s.base is not None  # pair_layout stores the base's name in every slot when there is a base
            base_src = Source(layout.base, s.base)
        tasks.append(TensorTask(out_name=s.name, shape=s.shape, method="darwin_blend", inputs=[a_src, b_src],
                                base=base_src, shared={"t": r, "lambda": lam, "rescale": opt.rescale,
                                        "mask_rng": COUNTER},
                                parent={"density": list(dens)},
                                seeds=[tensor_seed(seed, s.name, 0), tensor_seed(seed, s.name, 1)],
                                component=s.role.component, layer=s.role.layer,
                                units=merge_units(s.name, s.shape, layout.config)))
        report.append(ReportRow(s.name, "blend", f"r={r:.3f}"))
    return MergePlan(tasks=tasks, models=layout.models, reference=layout.a, config=layout.config,
                     out_dtype=layout.out_dtype, tied=layout.tied, tokenizer_source=layout.a, report=report,
                     checks=layout.checks, method=f"darwin-genome:{spec.name}",
                     recipe={"genome": genome_ref(spec), "parents": [layout.a, layout.b], "base": layout.base,
                             "values": dict(values), "seed": seed})


def vector_to_values(spec: GenomeSpec, x: list[float], num_layers: int) -> dict[str, float]:
    """CMA-ES coordinates → gene values (sigmoid into bounds), in :meth:`GenomeSpec.expand` order."""
    genes = spec.expand(num_layers)
    if len(x) != len(genes):
        raise ValueError(f"genome {spec.name!r} has {len(genes)} genes, got a vector of {len(x)}")
    return {g.name: g.decode(float(xi)) for g, xi in zip(genes, x)}


def start_vector(spec: GenomeSpec, num_layers: int) -> list[float]:
    """CMA-ES start point: every gene's start value encoded."""
    return [g.encode(g.start) for g in spec.expand(num_layers)]


#: how far inside its bounds a non-ratio gene of a uniform start sits (fraction of its range), so
#: that CMA-ES can still move it (a value at a bound is a logit of ±9)
START_MARGIN = 0.05
_RATIO_FAMILIES = {"zones": ("linear",), "darwin14": ("slerp", "linear"), "layerwise": ("slerp", "linear")}


def uniform_families(spec: GenomeSpec) -> tuple[str, ...]:
    """The tuned-uniform families whose merges the genome reproduces, best match first: ``zones``
    reproduces ``linear`` exactly; ``darwin14`` and ``layerwise`` reproduce ``slerp`` (and
    ``linear`` up to the angle between the parents) when their blend is all SLERP; others none."""
    return _RATIO_FAMILIES.get(get_decoder(spec.decoder).name, ())


def uniform_start(spec: GenomeSpec, family: str, setting: Mapping[str, float], num_layers: int
                  ) -> dict[str, float] | None:
    """Gene values that reproduce the uniform merge ``family`` at ``setting`` (None if the genome cannot).

    The global ratio takes the merge's weight of parent B (``weight_b`` or ``t``), every other
    ratio gene the neutral 0.5 (σ(logit γ + 0 + 0) = γ); per-layer, embedding and norm ratios of
    ``layerwise`` take the weight itself. For the ``darwin_blend`` decoders the SLERP share
    ``merge_method_weight`` sits near its high bound and the MRI trust near its low one (5 %
    DARE-TIES, 5 % MRI prior), the densities at their ``start``. Every value is kept
    :data:`START_MARGIN` of its range inside its bounds, so CMA-ES can still move it (a uniform
    weight of 0 or 1 starts at 0.05 or 0.95).
    """
    if family not in uniform_families(spec):
        return None
    w = setting.get("weight_b", setting.get("t"))
    if w is None:
        return None
    layerwise = get_decoder(spec.decoder).name == "layerwise"
    values: dict[str, float] = {}
    for g in spec.expand(num_layers):
        span = g.high - g.low
        if g.name == "global_ratio" or (layerwise and (g.name.startswith("layer_")
                                                       or g.name in ("embed_ratio", "norm_ratio"))):
            v = w
        elif g.name == "merge_method_weight":
            v = g.high
        elif g.name == "mri_trust":
            v = g.low
        elif g.name.endswith("_ratio"):
            v = 0.5
        else:
            v = g.start
        values[g.name] = min(max(v, g.low + START_MARGIN * span), g.high - START_MARGIN * span)
    return values
