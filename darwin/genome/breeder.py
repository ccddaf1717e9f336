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
from typing import Any, Protocol

import torch

from darwin.errors import RecipeError
from darwin.genome.decode import CROSS_DECODERS, PairLayout, check_values, decode, pair_layout
from darwin.genome.spec import GenomeSpec, genome_ref
from darwin.io.checkpoint import Checkpoint
from darwin.plan.crossover import CrossLayout, cross_layout, crossover_plan, ffn_transplant_plan, parent_plan
from darwin.plan.plan import MergePlan, ReportRow, Source, copy_task, linear_task

MIXER_THRESHOLD = 0.5


class Breeder(Protocol):
    """Parents prepared for a genome search."""

    a: str
    b: str
    base: str | None
    num_layers: int
    mri_prior: str | None  # "tensor": r_MRI per tensor; "layer": Block Influence via set_prior; None: no MRI

    @property
    def models(self) -> list[str]:
        """Parent references (A, B, base)."""
        ...

    def decode(self, spec: GenomeSpec, values: Mapping[str, float], *, r_mri: Mapping[str, float] | None = None,
               seed: int = 0) -> MergePlan:
        """Gene values → plan."""
        ...

    def baselines(self) -> dict[str, MergePlan]:
        """Name → plan of each baseline."""
        ...

    def needed(self) -> dict[str, list[str]]:
        """Reference → tensor names any plan may read."""
        ...

    def health_map(self, plan: MergePlan) -> dict[str, Any]:
        """Keyword arguments of :func:`darwin.mri.health.health_check` mapping child layers to parents'."""
        ...


class PairBreeder:
    """Same-family parents (and an optional base), paired tensor by tensor."""

    mri_prior = "tensor"

    def __init__(self, layout: PairLayout):
        self.layout = layout
        self.a, self.b, self.base, self.num_layers = layout.a, layout.b, layout.base, layout.num_layers

    @property
    def models(self) -> list[str]:
        """A, B and the base if any."""
        return self.layout.models

    def decode(self, spec: GenomeSpec, values: Mapping[str, float], *, r_mri=None, seed: int = 0) -> MergePlan:
        """:func:`darwin.genome.decode.decode`."""
        return decode(spec, values, self.layout, r_mri=r_mri, seed=seed)

    def baselines(self) -> dict[str, MergePlan]:
        """Parent A, parent B, the uniform 0.5 linear merge."""
        return {"parent A": self._fixed("A"), "parent B": self._fixed("B"), "uniform 0.5": self._fixed("uniform")}

    def _fixed(self, kind: str) -> MergePlan:
        lay = self.layout
        tasks = []
        for s in lay.slots:
            a, b = Source(lay.a, s.a), Source(lay.b, s.b)
            if kind == "uniform":
                tasks.append(linear_task(s.name, [a, b], [0.5, 0.5], s.shape, s.role.component, s.role.layer))
            else:
                tasks.append(copy_task(s.name, a if kind == "A" else b, s.shape, s.role.component, s.role.layer))
        return MergePlan(tasks, lay.models, lay.a, lay.config, lay.out_dtype, lay.tied, lay.a,
                         report=[ReportRow(t.out_name, t.action) for t in tasks], method=f"baseline:{kind}")

    def needed(self) -> dict[str, list[str]]:
        """Stored names of every slot, per parent."""
        lay = self.layout
        out: dict[str, set[str]] = {r: set() for r in lay.models}
        for s in lay.slots:
            out[lay.a].add(s.a)
            out[lay.b].add(s.b)
            if lay.base:
                out[lay.base].add(s.base)
        return {r: sorted(v) for r, v in out.items()}

    def health_map(self, plan: MergePlan) -> dict[str, Any]:
        """Same depth, same index."""
        return {}


class CrossBreeder:
    """Parents of different families (``crossover`` or ``ffn_transplant`` decoder)."""

    mri_prior = None
    base = None

    def __init__(self, layout: CrossLayout, decoder: str):
        self.layout, self.decoder = layout, decoder
        self.a, self.b, self.num_layers = layout.a, layout.b, layout.num_layers

    @property
    def models(self) -> list[str]:
        """A and B."""
        return self.layout.models

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


def make_breeder(spec: GenomeSpec, checkpoints: Mapping[str, Checkpoint], parents: list[str], base: str | None,
                 out_dtype: torch.dtype, max_params: int | None = None) -> Breeder:
    """The breeder the genome's decoder needs.

    Args:
        parents: two references (one or two for the ``golf`` decoder).
        max_params: the parameter budget (required by ``golf``).

    Raises:
        RecipeError: wrong number of parents, a base model with a decoder that takes none, a
            golf genome without a budget.
        CompatibilityError: the parents cannot be bred by this decoder (named, before any weight is read).
    """
    if spec.decoder == "golf":
        if base:
            raise RecipeError(f"genome {spec.name!r} (golf) takes no base model")
        from darwin.genome.golf import GolfBreeder

        return GolfBreeder(checkpoints, parents, max_params, out_dtype)
    if len(parents) != 2:
        raise RecipeError(f"genome {spec.name!r} ({spec.decoder}) breeds two parents; got {len(parents)} "
                          "(merge others first with darwin merge, or evolve pairwise)")
    a, b = parents
    if spec.decoder in CROSS_DECODERS:
        if base:
            raise RecipeError(f"genome {spec.name!r} ({spec.decoder}) breeds two parents of different families; "
                              "it takes no base model")
        mode = "crossover" if spec.decoder == "crossover" else "ffn"
        return CrossBreeder(cross_layout(checkpoints, a, b, mode=mode, out_dtype=out_dtype), spec.decoder)
    return PairBreeder(pair_layout(checkpoints, a, b, base, out_dtype))

