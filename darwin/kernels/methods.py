"""The merge-method registry: each method's parameters (declared once) and its batched kernel.

A method declares its parameters with scope ``shared`` (one value per tensor) or ``parent`` (one
value per non-base parent and tensor), type and default; recipe validation, the dry-run report and
the docs all read these declarations. Parameter names and defaults follow mergekit so that its
recipes run unchanged.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch

from darwin.kernels.blend import blend_apply, blend_coefficients, blend_prepare, darwin_blend
from darwin.kernels.linear import linear, passthrough
from darwin.kernels.masks import COUNTER
from darwin.kernels.model_stock import model_stock
from darwin.kernels.selective import arcee_fusion, nearswap, ram, sce
from darwin.kernels.slerp import nuslerp, slerp
from darwin.kernels.spherical import karcher, multislerp
from darwin.kernels.streamed_family import STREAMED, family_apply
from darwin.kernels.task_arithmetic import FAMILY, task_vector_merge

#: ``shared``: one value per tensor; ``parent``: one value per tensor and non-base parent
ParamScope = Literal["shared", "parent"]
#: how a method uses the recipe's ``base_model``
BaseUse = Literal["required", "optional", "unused"]


@dataclass(frozen=True)
class Param:
    """A method parameter.

    Attributes:
        name: key in the recipe's ``parameters``.
        scope: ``"shared"`` (per tensor) or ``"parent"`` (per tensor and non-base parent).
        kind: ``float``, ``int``, ``bool`` or ``str``.
        default: value when the recipe gives none; ``None`` with ``required`` means it must be set.
        required: the recipe must set it.
        doc: one-line meaning.
    """

    name: str
    scope: ParamScope
    kind: type
    default: Any = None
    required: bool = False
    doc: str = ""


@dataclass(frozen=True)
class MethodSpec:
    """A merge method: parameters, input contract and kernel.

    Attributes:
        name: recipe ``merge_method`` value.
        params: declared parameters.
        base: ``"required"``, ``"optional"`` or ``"unused"``.
        min_parents, max_parents: bounds on the number of non-base parents.
        paper: citation for the docs.
        random: draws random masks (needs per-tensor seeds).
        stream: the streamed form (genome-invariant precompute + one tiled pass per tensor), used
            instead of ``kernel`` where :meth:`StreamKernel.applies` says so.
    """

    name: str
    params: tuple[Param, ...]
    base: BaseUse
    min_parents: int = 1
    max_parents: int | None = None
    paper: str = ""
    random: bool = False
    stream: StreamKernel | None = None
    kernel: Callable[..., torch.Tensor] = field(
        default=cast("Callable[..., torch.Tensor]", lambda *a, **k: None),  # placeholder: every registered spec sets one
        repr=False, compare=False)

    def param(self, name: str) -> Param | None:
        """The declared parameter called ``name``, if any."""
        return next((p for p in self.params if p.name == name), None)


@dataclass(frozen=True)
class StreamKernel:
    """A kernel split into its genome-invariant part and its per-candidate pass, one tensor at a time.

    Attributes:
        prepare: ``(inputs, base, shared, seeds, keep_levels) → invariants``; reads only inputs,
            static parameters and seeds (never a float parameter), so an evolve run computes it once
            per tensor. ``inputs`` are the N non-base parents' tensors (storage dtype).
        apply: ``(inputs, base, invariants, shared, parent, seeds, out, tile, workspace) → out``: writes the merged tensor
            into ``out`` (any float dtype) in one tiled pass.
        applies: ``shared → bool``: whether this form serves a task (e.g. only ``mask_rng: counter``).
    """

    prepare: Callable[..., Any]
    apply: Callable[..., torch.Tensor]
    applies: Callable[[dict[str, Any]], bool]


def _blend_prepare(xs, base, shared, seeds, keep_levels):
    return blend_prepare(xs[0], xs[1], base, seeds, normalize_rescale(shared.get("rescale", "l1")), keep_levels)


def _blend_apply(xs, base, inv, shared, parent, seeds, out, tile, workspace=None):
    c = blend_coefficients(inv, float(shared["t"]), float(shared["lambda"]), parent["density"],
                           normalize_rescale(shared.get("rescale", "l1")))
    return blend_apply(xs[0], xs[1], base, inv, c, out, tile, workspace)


class _NoInvariants:
    """Streamed kernels whose every step depends on a float parameter keep nothing across candidates."""

    def nbytes(self) -> int:
        return 0


def _family_stream(method: str) -> StreamKernel | None:
    if method not in STREAMED:
        return None

    def apply(xs, base, inv, shared, parent, seeds, out, tile, workspace=None):
        return family_apply(xs, base, method, weight=parent["weight"], density=parent.get("density"),
                            lam=float(shared["lambda"]), normalize=bool(shared["normalize"]),
                            rescale=normalize_rescale(shared.get("rescale", False)), seeds=seeds, out=out, tile=tile)

    return StreamKernel(lambda xs, base, shared, seeds, keep: _NoInvariants(), apply,
                        lambda shared: shared.get("mask_rng", COUNTER) == COUNTER)


_BLEND_STREAM = StreamKernel(_blend_prepare, _blend_apply, lambda shared: shared.get("mask_rng", COUNTER) == COUNTER)
_MASK_RNG = Param("mask_rng", "shared", str, COUNTER,
                  doc="random-mask convention: counter (hash of seed and element, any device) or cpu_generator "
                      "(what genome recipes without mask_rng were written with)")

_WEIGHT = Param("weight", "parent", float, required=True, doc="per-parent weight wᵢ")
_DENSITY = Param("density", "parent", float, 1.0, doc="fraction of task-vector elements kept ρᵢ")
_LAMBDA = Param("lambda", "shared", float, 1.0, doc="scale λ of the merged task vector")
_INT8 = Param("int8_mask", "shared", bool, False, doc="accepted for mergekit compatibility; no effect")


def _rescale_param(default: bool) -> Param:
    return Param("rescale", "shared", str, "l1" if default else "none",
                 doc="after random drop: l1 (mergekit, true), paper (1/p), none (false)")


def _family_params(method: str) -> tuple[Param, ...]:
    cfg = FAMILY[method]
    normalize_default = method in ("ties", "della")
    ps = [_WEIGHT, _LAMBDA, _INT8, Param("normalize", "shared", bool, normalize_default,
                                         doc="divide by the (elected) sum of weights")]
    if cfg.sparsify is not None:
        ps.append(_DENSITY)
        ps.append(_rescale_param(cfg.sparsify in ("random", "della")))
    if cfg.sparsify in ("random", "della"):
        ps.append(_MASK_RNG)
    if cfg.sparsify == "band":
        ps.append(Param("gamma", "parent", float, 0.01, doc="fraction of largest magnitudes dropped"))
    if cfg.sparsify == "della":
        ps.append(Param("epsilon", "parent", float, 0.15, doc="spread of keep probabilities ε"))
    return tuple(ps)


def normalize_rescale(value: Any) -> str | None:
    """Map a recipe ``rescale`` value (bool or ``l1``/``paper``/``none``) to the kernel's convention."""
    if value is True or value == "true":
        return "l1"
    if value is False or value in (None, "none", "false"):
        return None
    if value in ("l1", "paper"):
        return value
    raise ValueError(f"rescale must be true, false, 'l1', 'paper' or 'none', got {value!r}")


def _run_family(method: str):
    def kernel(x, base, shared, parent, seeds):
        return task_vector_merge(
            x, base, method, weight=parent["weight"], density=parent.get("density"),
            lam=shared["lambda"], normalize=bool(shared["normalize"]),
            rescale=normalize_rescale(shared.get("rescale", False)), gamma=parent.get("gamma"),
            epsilon=parent.get("epsilon"), seeds=seeds, inplace=True, mask_rng=shared.get("mask_rng", COUNTER))
    return kernel


_PAPERS = {
    "task_arithmetic": "Task Arithmetic, arXiv 2212.04089",
    "ties": "TIES-Merging, arXiv 2306.01708",
    "dare_linear": "DARE, arXiv 2311.03099",
    "dare_ties": "DARE, arXiv 2311.03099 + TIES",
    "breadcrumbs": "Model Breadcrumbs, arXiv 2312.06795",
    "breadcrumbs_ties": "Model Breadcrumbs, arXiv 2312.06795 + TIES",
    "della": "DELLA-Merging, arXiv 2406.11617",
    "della_linear": "DELLA-Merging, arXiv 2406.11617",
}

METHODS: dict[str, MethodSpec] = {
    "linear": MethodSpec(
        "linear", (_WEIGHT, Param("normalize", "shared", bool, True, doc="divide by Σ wᵢ")),
        base="unused", paper="Model soups, arXiv 2203.05482",
        kernel=lambda x, base, shared, parent, seeds: linear(x, parent["weight"], bool(shared["normalize"]))),
    "slerp": MethodSpec(
        "slerp", (Param("t", "shared", float, required=True, doc="fraction taken from the non-base parent"),),
        base="required", min_parents=1, max_parents=1, paper="Shoemake 1985",
        kernel=lambda x, base, shared, parent, seeds: slerp(torch.stack([base, x[:, 0]], 1), shared["t"])),
    "nuslerp": MethodSpec(
        "nuslerp", (_WEIGHT, Param("nuslerp_flatten", "shared", bool, True, doc="one vector per tensor"),
                    Param("nuslerp_row_wise", "shared", bool, False,
                          doc="with nuslerp_flatten false: vectors along the first dimension (columns)")),
        base="optional", min_parents=2, max_parents=2, paper="Shoemake 1985; mergekit nuslerp",
        kernel=lambda x, base, shared, parent, seeds: nuslerp(
            x, parent["weight"], base, bool(shared["nuslerp_flatten"]), bool(shared["nuslerp_row_wise"]))),
    "model_stock": MethodSpec(
        "model_stock", (Param("filter_wise", "shared", bool, False, doc="not supported; must be false"),),
        base="required", min_parents=2, paper="Model Stock, arXiv 2403.19522",
        kernel=lambda x, base, shared, parent, seeds: model_stock(x, base)),
    "passthrough": MethodSpec(
        # per parent, as in mergekit: a slice source's or model entry's ``scale`` applies
        "passthrough", (Param("scale", "parent", float, 1.0, doc="multiply the copied tensor"),),
        base="unused", min_parents=1, max_parents=1, paper="(copy; frankenmerges via slices)",
        kernel=lambda x, base, shared, parent, seeds: passthrough(x, parent["scale"][:, 0])),
    "darwin_blend": MethodSpec(
        "darwin_blend", (Param("t", "shared", float, required=True, doc="fraction r taken from parent B"),
                         Param("lambda", "shared", float, 1.0, doc="SLERP share λ (rest: DARE-TIES)"),
                         Param("density", "parent", float, 1.0, doc="DARE keep probability ρ"),
                         _rescale_param(True), _MASK_RNG),
        base="optional", min_parents=2, max_parents=2, paper="darwin genome kernel (docs/genome.md)", random=True,
        stream=_BLEND_STREAM,
        kernel=lambda x, base, shared, parent, seeds: darwin_blend(
            x, base, shared["t"], shared["lambda"], parent["density"], seeds,
            normalize_rescale(shared.get("rescale", "l1")))),
}


def _rowwise(names: tuple[str, ...], fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A kernel whose shared float parameters ``names`` must be Python numbers: the batch runs in
    one call when every tensor has the same values, else tensor by tensor."""
    def kernel(x, base, shared, parent, seeds):
        vals = {k: shared[k] for k in names}
        if all(not isinstance(v, torch.Tensor) or bool((v == v.flatten()[0]).all()) for v in vals.values()):
            return fn(x, base, {k: float(v.flatten()[0]) if isinstance(v, torch.Tensor) else v
                                for k, v in vals.items()}, parent, shared)
        rows = []
        for b in range(x.shape[0]):
            one = {k: float(v[b]) if isinstance(v, torch.Tensor) else v for k, v in vals.items()}
            rows.append(fn(x[b:b + 1], base[b:b + 1] if base is not None else None, one,
                           {k: v[b:b + 1] for k, v in parent.items()}, shared))
        return torch.cat(rows)
    return kernel


_PAPER_RAM = "RAM, arXiv 2601.13572"
METHODS.update({
    "multislerp": MethodSpec(
        "multislerp", (_WEIGHT, Param("normalize_weights", "shared", bool, True, doc="divide the weights by Σ wᵢ"),
                       Param("eps", "shared", float, 1e-8, doc="norm guard")),
        base="optional", paper="Goddard 2025, Multi-SLERP (goddard.blog)",
        kernel=_rowwise(("eps",), lambda x, base, s, parent, shared: multislerp(
            x, parent["weight"], base, normalize_weights=bool(shared["normalize_weights"]), eps=s["eps"]))),
    "karcher": MethodSpec(
        "karcher", (Param("max_iter", "shared", int, 10, doc="iteration limit"),
                    Param("tol", "shared", float, 1e-5, doc="norm and angle threshold")),
        base="optional", paper="Karcher 1977, Riemannian centre of mass",
        kernel=_rowwise(("tol",), lambda x, base, s, parent, shared: karcher(
            x, base, max_iter=int(shared["max_iter"]), tol=s["tol"]))),
    "nearswap": MethodSpec(
        "nearswap", (Param("t", "shared", float, required=True, doc="distance below which B's value is taken"),),
        base="required", min_parents=1, max_parents=1, paper="alchemonaut, QuartetAnemoi-70B-t0.0001 (NearSwap)",
        kernel=lambda x, base, shared, parent, seeds: nearswap(base, x[:, 0], shared["t"])),
    "sce": MethodSpec(
        "sce", (Param("select_topk", "shared", float, 1.0, doc="fraction of highest-variance elements kept"),),
        base="required", paper="SCE (FuseChat), arXiv 2408.07990",
        kernel=_rowwise(("select_topk",), lambda x, base, s, parent, shared: sce(x, base, s["select_topk"]))),
    "arcee_fusion": MethodSpec(
        "arcee_fusion", (), base="required", min_parents=1, max_parents=1, paper="Arcee Fusion (arcee.ai, mergekit)",
        kernel=lambda x, base, shared, parent, seeds: arcee_fusion(base, x[:, 0])),
    "ram": MethodSpec(
        "ram", (Param("epsilon", "shared", float, 1e-5, doc="|δ| above which a parent contributes"),),
        base="required", paper=_PAPER_RAM,
        kernel=_rowwise(("epsilon",), lambda x, base, s, parent, shared: ram(x, base, s["epsilon"]))),
    "ramplus_tl": MethodSpec(
        "ramplus_tl", (Param("r", "shared", float, 0.1, doc="rescaling rate"),
                       Param("alpha", "shared", float, 0.2, doc="cap of the overlap ratio"),
                       Param("epsilon", "shared", float, 1e-5, doc="|δ| above which a parent contributes")),
        base="required", paper=_PAPER_RAM + " (RAM+, tensor-local)",
        kernel=_rowwise(("r", "alpha", "epsilon"), lambda x, base, s, parent, shared: ram(
            x, base, s["epsilon"], plus=True, r=s["r"], alpha=s["alpha"]))),
})
for _m in FAMILY:
    METHODS[_m] = MethodSpec(_m, _family_params(_m), base="required", paper=_PAPERS[_m],
                             random=FAMILY[_m].sparsify in ("random", "della"),
                             stream=_family_stream(_m), kernel=_run_family(_m))


def get_method(name: str) -> MethodSpec:
    """Look up a method by name.

    Raises:
        KeyError: with the list of known methods.
    """
    try:
        return METHODS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown merge_method {name!r}{hint} (known: {', '.join(sorted(METHODS))})") from None


def run_kernel(spec: MethodSpec, x: torch.Tensor, base: torch.Tensor | None,
               shared: dict[str, torch.Tensor | Any], parent: dict[str, torch.Tensor],
               seeds: Sequence[Sequence[int]] | None) -> torch.Tensor:
    """Run ``spec``'s kernel on a batch (shapes as in the kernels: x ``[B, N, *S]``).

    ``x`` must be the caller's own temporary: registered kernels may overwrite it.
    """
    return spec.kernel(x, base, shared, parent, seeds)
