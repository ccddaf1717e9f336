"""Golf breeder: a child under a parameter budget, by keeping, dropping and collapsing layers.

Genes (``genomes/golf.yaml``): per layer ``layer_<i>_keep`` (the search's importance score),
``mri_trust`` τ, ``collapse`` c and, with two parents, ``parent_ratio`` r. Decoding:

1. layer score ``s_i = τ·p_i + (1 − τ)·keep_i`` where ``p_i`` is the MRI prior: the rank of
   layer ``i``'s Block Influence (``1 − cos(h_in, h_out)`` on the probe prompts, ShortGPT,
   arXiv 2403.03853) scaled to [0, 1] (1 = most influential);
2. layers are kept in decreasing score while the child fits ``max_params`` (counted as published:
   tied embeddings once), so every decoded child meets the budget by construction;
3. removed layers are dropped (c = 0) or collapsed into the kept layer before them with LaCo's rule
   ``θ_l + c·Σ(θ_f − θ_l)`` (arXiv 2402.11187; :mod:`darwin.plan.depth`);
4. with two same-family parents (e.g. two specialists of one base) every tensor is the blend
   ``(1 − r)·A + r·B``.

Baselines: the parent(s) as they are (over budget: reference only) and ShortGPT pruning to the same
budget (drop the lowest-Block-Influence layers, no search).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from darwin.arch.config import child_config
from darwin.arch.mapper import ArchMap
from darwin.errors import CompatibilityError, RecipeError
from darwin.genome.decode import check_values, pair_layout
from darwin.genome.registry import Breeder, BreedRequest, Decoder, register_decoder
from darwin.genome.spec import GenomeSpec, genome_ref
from darwin.io.checkpoint import Checkpoint
from darwin.plan.depth import DepthChoice, choose_depth, layer_tasks
from darwin.plan.plan import MergePlan, ReportRow, Source, copy_task, linear_task


def rank_prior(bi: list[float]) -> list[float]:
    """Block Influence per layer → rank in [0, 1] (1 = most influential; ties keep index order)."""
    n = len(bi)
    order = sorted(range(n), key=lambda i: (bi[i], -i))
    out = [0.0] * n
    for rank, i in enumerate(order):
        out[i] = rank / (n - 1) if n > 1 else 1.0
    return out


class GolfBreeder:
    """One or two same-family parents cut to a parameter budget (see module doc).

    Args:
        checkpoints: reference → opened checkpoint.
        parents: one or two references (A first).
        max_params: the budget.
        out_dtype: child storage dtype.

    Raises:
        RecipeError: no budget, or more than two parents.
        CompatibilityError: the parents differ in family, shapes or tokenizer; or even one
            layer does not fit the budget.
    """

    base: str | None = None

    def __init__(self, checkpoints: Mapping[str, Checkpoint], parents: list[str], max_params: int | None,
                 out_dtype: torch.dtype):
        if max_params is None:
            raise RecipeError("the golf genome needs search.constraints.max_params (the parameter budget)")
        if not 1 <= len(parents) <= 2:
            raise RecipeError(f"the golf genome takes one or two parents of one family, got {len(parents)}")
        self.parents = list(parents)
        self.a = parents[0]
        self.b = parents[-1]
        if len(parents) == 2:
            types = [checkpoints[r].require_config().get("model_type") for r in parents]
            if types[0] != types[1]:
                raise CompatibilityError(f"golf parents must be one family: {parents[0]} is {types[0]}, "
                                         f"{parents[1]} is {types[1]}")
            pair_layout(checkpoints, parents[0], parents[1], None, out_dtype)  # same shapes and tokenizer
        ck = checkpoints[self.a]
        self.config = ck.require_config()
        self.amap = ArchMap.build(self.config, ck.tensor_names)
        self.num_layers = self.amap.num_layers
        self.shapes = {n: tuple(ck.meta[n].shape) for n in ck.tensor_names}
        self.out_dtype = out_dtype
        self.tied = self.amap.tied
        self.max_params = max_params
        numel = lambda shape: int(torch.Size(shape).numel())
        self.layer_params = [sum(numel(self.shapes[r.name]) for r in self.amap.layer_tensors(i))
                             for i in range(self.num_layers)]
        self.fixed_params = sum(numel(s) for n, s in self.shapes.items() if self.amap.roles[n].layer is None)
        if self.fixed_params + min(self.layer_params) > max_params:
            raise CompatibilityError(
                f"{ck.path}: embeddings, final norm and head alone take {self.fixed_params:,} parameters; with one "
                f"layer ({min(self.layer_params):,}) the child cannot fit max_params={max_params:,}")
        self.prior = [1.0] * self.num_layers  # uniform until set_prior

    @property
    def models(self) -> list[str]:
        """The parents."""
        return list(self.parents)

    def set_prior(self, block_influence: list[float]) -> None:
        """Use per-layer Block Influence (from the MRI probe) as the prior."""
        if len(block_influence) != self.num_layers:
            raise ValueError(f"need {self.num_layers} Block Influence values, got {len(block_influence)}")
        self.prior = rank_prior(block_influence)

    def set_prior_ranks(self, ranks: list[float]) -> None:
        """Use an already ranked prior (as saved in a genome recipe)."""
        if len(ranks) != self.num_layers:
            raise RecipeError(f"prior: need {self.num_layers} values, got {len(ranks)}")
        self.prior = list(ranks)

    def fit(self, scores: list[float]) -> list[int]:
        """Layers kept: decreasing score while the budget allows (ascending indices)."""
        total, keep = self.fixed_params, []
        for i in sorted(range(self.num_layers), key=lambda i: (-scores[i], i)):
            if total + self.layer_params[i] <= self.max_params:
                keep.append(i)
                total += self.layer_params[i]
        return sorted(keep)

    def plan(self, choice: DepthChoice, ratio: float = 0.0, method: str = "golf",
             recipe: dict[str, Any] | None = None) -> MergePlan:
        """The child of a depth choice (and parent blend ``ratio`` with two parents)."""
        sources = [(self.a, 1.0)] if len(self.parents) == 1 or ratio <= 0 else \
            [(self.b, 1.0)] if ratio >= 1 else [(self.a, 1.0 - ratio), (self.b, ratio)]
        tasks = []
        for n, shape in self.shapes.items():
            role = self.amap.roles[n]
            if role.layer is not None:
                continue
            ins = [Source(ref, n) for ref, _ in sources]
            tasks.append(copy_task(n, ins[0], shape, role.component) if len(ins) == 1 else
                         linear_task(n, ins, [w for _, w in sources], shape, role.component, normalize=False))
        tasks += layer_tasks(self.amap, sources, choice, self.shapes)
        config = child_config(self.config, dtype=self.out_dtype, tied=self.tied, layer_sources=list(choice.keep))
        report = [ReportRow(t.out_name, t.action) for t in tasks]
        report += [ReportRow(f"layer {i}", "collapsed" if choice.collapse > 0 else "dropped",
                             f"into kept layer {k}") for k, fold in zip(choice.keep, choice.folded) for i in fold]
        rec = recipe or {"golf": {"parents": self.models, "keep": list(choice.keep), "collapse": choice.collapse,
                                  "parent_ratio": ratio}}
        return MergePlan(tasks=tasks, models=self.models, reference=self.a, config=config, out_dtype=self.out_dtype,
                         tied=self.tied, tokenizer_source=self.a, report=report, method=method, recipe=rec)

    def decode(self, spec: GenomeSpec, values: Mapping[str, float], *, r_mri=None, seed: int = 0) -> MergePlan:
        """Gene values → the depth plan (see module doc)."""
        check_values(spec, values, self.num_layers)
        tau = values["mri_trust"]
        scores = [tau * p + (1 - tau) * values[f"layer_{i}_keep"] for i, p in enumerate(self.prior)]
        choice = choose_depth(self.num_layers, self.fit(scores), values["collapse"])
        ratio = values.get("parent_ratio", 0.0) if len(self.parents) == 2 else 0.0
        recipe = {"genome": genome_ref(spec), "parents": self.models, "base": None, "values": dict(values),
                  "seed": seed, "prior": list(self.prior), "max_params": self.max_params}
        return self.plan(choice, ratio, f"golf:{spec.name}", recipe)

    def shortgpt(self) -> MergePlan:
        """ShortGPT baseline: keep the highest-prior layers that fit, drop the rest."""
        return self.plan(choose_depth(self.num_layers, self.fit(self.prior), 0.0), 0.0, "baseline:shortgpt")

    def baselines(self) -> dict[str, MergePlan]:
        """The parents as they are (a reference; labelled when over budget) and ShortGPT pruning."""
        full = choose_depth(self.num_layers, list(range(self.num_layers)), 0.0)
        plans = {"A": self.plan(full, 0.0, "baseline:A")}
        if len(self.parents) == 2:
            plans["B"] = self.plan(full, 1.0, "baseline:B")
        out = {f"parent {k}" + (" (over budget)" if p.num_parameters > self.max_params else ""): p
               for k, p in plans.items()}
        out["ShortGPT (drop lowest BI)"] = self.shortgpt()
        return out

    def needed(self) -> dict[str, list[str]]:
        """Every tensor of each parent."""
        return {r: sorted(self.shapes) for r in self.models}

    def health_map(self, plan: MergePlan) -> dict[str, Any]:
        """Each child layer is compared with the parents' layer it was kept from."""
        keep = _keep_of(plan, self.amap)
        return {"a_layers": keep, "a_num_layers": self.num_layers, "b_layers": keep,
                "b_num_layers": self.num_layers}


def _golf_breeder(request: BreedRequest) -> Breeder:
    return GolfBreeder(request.checkpoints, request.parents, request.max_params, request.out_dtype)


GOLF = register_decoder(Decoder(
    name="golf", breeder=_golf_breeder, genes=("mri_trust", "collapse"), per_layer_genes=("keep",),
    mri_prior="layer", min_parents=1, max_parents=2,
    baselines=("parent A", "parent B", "ShortGPT (drop lowest BI)"),
    description="keep, drop and LaCo-collapse layers under a parameter budget (model golf)"))


def _keep_of(plan: MergePlan, amap: ArchMap) -> list[int]:
    """Parent layer of each child layer, from the plan's passthrough/linear first input."""
    out: dict[int, int] = {}
    for t in plan.tasks:
        if t.layer is not None and t.layer not in out:
            src_layer = amap.roles[t.inputs[0].tensor].layer
            assert src_layer is not None  # a layer task's first input is a layer tensor of the parent
            out[t.layer] = src_layer
    return [out[k] for k in sorted(out)]
