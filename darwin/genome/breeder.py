"""Breeders: what a genome search needs from a pair of parents, whatever the genome's decoder.

A breeder is built once per search from the parents (headers and configs only) and then turns
gene values into merge plans with no I/O:

* :class:`PairBreeder`: same-family parents (``darwin14``, ``layerwise`` decoders; see
  :mod:`darwin.genome.decode`);
* :class:`CrossBreeder`: parents of different families (see :mod:`darwin.plan.crossover`):
  ``crossover`` (per layer ``layer_<i>_mixer`` ≥ 0.5 takes the SSM parent's mixer, else the
  transformer's attention; ``ffn_ratio``, ``embed_ratio``) and ``ffn_transplant`` (per layer
  ``layer_<i>_ffn``: below ``transplant_low`` A's FFN, above ``transplant_high`` B's, else a blend).

Baselines (scored before the search): both parents as they are, and a neutral child (the uniform
0.5 merge; the alternating ``ABAB…`` hybrid; every FFN blended 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from darwin.errors import DarwinError, RecipeError
from darwin.genome.decode import PairLayout, check_values, decode, pair_layout
from darwin.genome.registry import Breeder, BreedRequest, Decoder, MriPrior, get_decoder, register_decoder
from darwin.genome.spec import GenomeSpec, genome_ref
from darwin.io.checkpoint import Checkpoint
from darwin.plan.crossover import CrossLayout, cross_layout, crossover_plan, ffn_transplant_plan, parent_plan
from darwin.plan.plan import MergePlan, ReportRow, Source, copy_task, linear_task

MIXER_THRESHOLD = 0.5


class NoLayerPrior:
    """Mixin for breeders without a per-layer prior (``mri_prior`` other than ``"layer"``)."""

    def set_prior(self, block_influence: list[float]) -> None:
        """Refused: this decoder takes no per-layer prior."""
        raise RecipeError(f"{type(self).__name__} takes no per-layer MRI prior")

    def set_prior_ranks(self, ranks: list[float]) -> None:
        """Refused: this decoder takes no per-layer prior (a genome recipe's ``prior`` is for golf)."""
        raise RecipeError(f"{type(self).__name__} takes no per-layer MRI prior ('prior' is for the golf genome)")


class _PairOfParents(NoLayerPrior):
    """Breeders of exactly two parents A and B laid out by ``self.layout`` (which lists its models)."""

    a: str
    b: str
    layout: PairLayout | CrossLayout

    @property
    def parents(self) -> list[str]:
        """A and B."""
        return [self.a, self.b]

    @property
    def models(self) -> list[str]:
        """A, B and the base if any."""
        return self.layout.models


class PairBreeder(_PairOfParents):
    """Same-family parents (and an optional base), paired tensor by tensor."""

    layout: PairLayout

    def __init__(self, layout: PairLayout):
        self.layout = layout
        self.a, self.b, self.base, self.num_layers = layout.a, layout.b, layout.base, layout.num_layers

    def decode(self, spec: GenomeSpec, values: Mapping[str, float], *, r_mri=None, seed: int = 0) -> MergePlan:
        """:func:`darwin.genome.decode.decode`."""
        return decode(spec, values, self.layout, r_mri=r_mri, seed=seed)

    def baselines(self) -> dict[str, MergePlan]:
        """Parent A, parent B, the uniform 0.5 linear merge."""
        return {"parent A": self._fixed("A"), "parent B": self._fixed("B"), "uniform 0.5": self._fixed("uniform")}

    def base_plan(self) -> MergePlan | None:
        """The base model as a child (for the report: where the parents started), or None without a base."""
        return self._fixed("base") if self.base else None

    def _fixed(self, kind: str) -> MergePlan:
        lay = self.layout
        tasks = []
        for s in lay.slots:
            a, b = Source(lay.a, s.a), Source(lay.b, s.b)
            if kind == "base":
                assert lay.base is not None and s.base is not None  # base_plan checks there is a base
                tasks.append(copy_task(s.name, Source(lay.base, s.base), s.shape, s.role.component, s.role.layer))
            elif kind == "uniform":
                tasks.append(linear_task(s.name, [a, b], [0.5, 0.5], s.shape, s.role.component, s.role.layer))
            else:
                tasks.append(copy_task(s.name, a if kind == "A" else b, s.shape, s.role.component, s.role.layer))
        return MergePlan(tasks=tasks, models=lay.models, reference=lay.a, config=lay.config, out_dtype=lay.out_dtype,
                         tied=lay.tied, tokenizer_source=lay.a, report=[ReportRow(t.out_name, t.action) for t in tasks],
                         method=f"baseline:{kind}")

    def needed(self) -> dict[str, list[str]]:
        """Stored names of every slot, per parent."""
        lay = self.layout
        out: dict[str, set[str]] = {r: set() for r in lay.models}
        for s in lay.slots:
            out[lay.a].add(s.a)
            out[lay.b].add(s.b)
            if lay.base:
                assert s.base is not None  # pair_layout stores the base's name in every slot when there is a base
                out[lay.base].add(s.base)
        return {r: sorted(v) for r, v in out.items()}

    def health_map(self, plan: MergePlan) -> dict[str, Any]:
        """Same depth, same index."""
        return {}


class CrossBreeder(_PairOfParents):
    """Parents of different families (``crossover`` or ``ffn_transplant`` decoder)."""

    base: str | None = None

    layout: CrossLayout

    def __init__(self, layout: CrossLayout, decoder: str):
        self.layout, self.decoder = layout, decoder
        self.a, self.b, self.num_layers = layout.a, layout.b, layout.num_layers

    def decode(self, spec: GenomeSpec, values: Mapping[str, float], *, r_mri=None, seed: int = 0) -> MergePlan:
        """Gene values → crossover or FFN-transplant plan (``r_mri`` and ``seed`` are not used)."""
        check_values(spec, values, self.num_layers)
        recipe = {"genome": genome_ref(spec), "parents": self.models, "base": None, "values": dict(values),
                  "seed": seed}
        n = self.num_layers
        if self.decoder == "crossover":
            mixers = ["B" if values[f"layer_{i}_mixer"] >= MIXER_THRESHOLD else "A" for i in range(n)]
            return crossover_plan(self.layout, mixers, ffn_ratio=values["ffn_ratio"],
                                  embed_ratio=values["embed_ratio"], recipe=recipe)
        return ffn_transplant_plan(self.layout, [values[f"layer_{i}_ffn"] for i in range(n)],
                                   low=spec.options.transplant_low, high=spec.options.transplant_high, recipe=recipe)

    def baselines(self) -> dict[str, MergePlan]:
        """Both parents as they are and the alternating hybrid (crossover) or all-0.5 FFN blend."""
        out = {"parent A": parent_plan(self.layout, "A"), "parent B": parent_plan(self.layout, "B")}
        if self.decoder == "crossover":
            pattern = "".join("AB"[i % 2] for i in range(self.num_layers))
            out[f"hybrid {pattern}"] = crossover_plan(self.layout, pattern)
        else:
            out["all FFN 0.5"] = ffn_transplant_plan(self.layout, [0.5] * self.num_layers)
        return out

    def needed(self) -> dict[str, list[str]]:
        """Every stored tensor of both parents (the baselines rebuild each parent whole)."""
        return {r: sorted(self.layout.shapes[r]) for r in self.models}

    def health_map(self, plan: MergePlan) -> dict[str, Any]:
        """B's layer ``⌊i·L_B / L⌋``."""
        return {"b_layers": list(self.layout.b_layer), "b_num_layers": len(self.layout.b_mixers)}


def _cross_breeder(request: BreedRequest) -> Breeder:
    a, b = request.parents
    decoder = request.spec.decoder
    mode = "crossover" if decoder == "crossover" else "ffn"
    return CrossBreeder(cross_layout(request.checkpoints, a, b, mode=mode, out_dtype=request.out_dtype), decoder)


CROSSOVER = register_decoder(Decoder(
    name="crossover", breeder=_cross_breeder, genes=("ffn_ratio", "embed_ratio"), per_layer_genes=("mixer",),
    baselines=("parent A", "parent B", "hybrid ABAB"),
    description="Transformer x SSM: per layer the attention of A or the SSM mixer of B (a Bamba hybrid)"))
FFN_TRANSPLANT = register_decoder(Decoder(
    name="ffn_transplant", breeder=_cross_breeder, per_layer_genes=("ffn",),
    baselines=("parent A", "parent B", "all FFN 0.5"),
    description="per-layer FFN transplant or blend between two families of equal FFN shape"))


def make_breeder(spec: GenomeSpec, checkpoints: Mapping[str, Checkpoint], parents: list[str], base: str | None,
                 out_dtype: torch.dtype, max_params: int | None = None) -> Breeder:
    """The breeder the genome's decoder needs, after the checks every decoder shares.

    Args:
        spec: the genome (its ``decoder`` is looked up in :mod:`darwin.genome.registry`).
        checkpoints: reference → opened checkpoint.
        parents: parent references, A first (how many: the decoder's ``min_parents`` to ``max_parents``).
        base: base model reference, or None.
        out_dtype: child storage dtype.
        max_params: the parameter budget (required by ``golf``).

    Raises:
        RecipeError: unknown decoder, wrong number of parents, a base model for a decoder that takes
            none, a golf genome without a budget.
        CompatibilityError: the parents cannot be bred by this decoder (named, before any weight is read).
    """
    dec = get_decoder(spec.decoder)
    n = len(parents)
    if not dec.min_parents <= n <= dec.max_parents:
        want = str(dec.min_parents) if dec.min_parents == dec.max_parents else f"{dec.min_parents} to {dec.max_parents}"
        raise RecipeError(f"genome {spec.name!r} ({dec.name}) breeds {want} parents; got {n} "
                          "(merge others first with darwin merge, or evolve pairwise)")
    if base and not dec.takes_base:
        raise RecipeError(f"genome {spec.name!r} ({dec.name}) takes no base model")
    if dec.breeder is not None:
        request = BreedRequest(spec=spec, checkpoints=checkpoints, parents=list(parents), base=base,
                               out_dtype=out_dtype, max_params=max_params)
        try:
            breeder = dec.breeder(request)
        except DarwinError:
            raise
        except Exception as e:  # a bug in a user's breeder factory is named, not a traceback
            raise RecipeError(f"decoder {dec.name!r}: its breeder factory failed ({type(e).__name__}: {e})") from None
        if not isinstance(breeder, Breeder):
            raise RecipeError(f"decoder {dec.name!r}: its breeder factory returned a {type(breeder).__name__}, "
                              "not an object with the darwin.genome.registry.Breeder methods")
        return breeder
    a, b = parents
    return PairBreeder(pair_layout(checkpoints, a, b, base, out_dtype))


def mri_prior(spec: GenomeSpec) -> MriPrior:
    """The MRI prior kind of the genome's decoder (``"tensor"``, ``"layer"`` or None)."""
    return get_decoder(spec.decoder).mri_prior
