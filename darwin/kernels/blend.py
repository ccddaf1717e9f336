"""The Darwin blend kernel: a λ-weighted mix of SLERP and DARE-TIES between two parents.

``θ = λ·SLERP(A, B; r) + (1 − λ)·DARE-TIES(θ₀; A, B; w = (1 − r, r), ρ_A, ρ_B)``

where θ₀ is the base model if one is given and parent A otherwise (then A's task vector is zero
and DARE-TIES reduces to ``A + r·DARE(B − A)``). DARE-TIES here does not normalise (mergekit's
``dare_ties`` default), so ``r`` keeps its meaning of "fraction of B" in both terms.

This combination rule is darwin's definition (the Darwin model cards name the genes but not how
they combine; see docs/genome.md). Sources: SLERP, Shoemake 1985; DARE arXiv 2311.03099;
TIES arXiv 2306.01708; Darwin (VIDRAFT) arXiv 2605.14386.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from darwin.kernels.reduce import Workspace, fixed_order_sum, tiles
from darwin.kernels.slerp import slerp
from darwin.kernels.sparsify import random_drop
from darwin.kernels.task_arithmetic import task_vector_merge


def darwin_blend(x: torch.Tensor, base: torch.Tensor | None, r: torch.Tensor, lam: torch.Tensor,
                 density: torch.Tensor, seeds: Sequence[Sequence[int]] | None,
                 rescale: str | None = "l1") -> torch.Tensor:
    """Blend parents A and B per tensor.

    Args:
        x: ``[B, 2, *S]`` float32: parent A, parent B.
        base: ``[B, *S]`` float32 base model, or None: then θ₀ = A, A's task vector is zero and
            the term is computed directly as ``A + r·DARE(B − A)`` (same result as the general
            path, half the random draws, no sign election).
        r: ``[B]`` fraction taken from B (0 → A, 1 → B).
        lam: ``[B]`` merge-method weight λ (1 → pure SLERP, 0 → pure DARE-TIES).
        density: ``[B, 2]`` DARE keep probabilities ρ_A, ρ_B (float64 or float32).
        seeds: ``B × 2`` mask seeds.
        rescale: DARE rescale convention (``"l1"``: keep the L1 norm, ``"paper"``: 1/ρ, None).

    Returns:
        ``[B, *S]`` float32. Where ``λ = 1`` the DARE-TIES term is skipped exactly (no 0·x).
    """
    s = slerp(x, r)
    lam_b = lam.reshape((-1,) + (1,) * (x.dim() - 2))
    if bool((lam >= 1).all()):
        return s
    if base is None:
        assert seeds is not None  # darwin_blend is a random method: planned tasks always carry seeds
        a = x[:, 0]
        d = (x[:, 1] - a).reshape(x.shape[0], 1, -1)
        kept = random_drop(d, density[:, 1:2], [[s[1]] for s in seeds], rescale, inplace=True).reshape(a.shape)
        dt = a + r.reshape(lam_b.shape) * kept
    else:
        w = torch.stack([1 - r, r], 1)
        dt = task_vector_merge(x, base, "dare_ties", weight=w, density=density, normalize=False,
                               rescale=rescale, seeds=seeds)
    return lam_b * s + (1 - lam_b) * dt


# ---------------------------------------------------------------------------------------------
# Streamed kernel (mask_rng: counter): genome-invariant precompute + one tiled pass per candidate
# ---------------------------------------------------------------------------------------------

_TINY = 1e-8  # zero-norm threshold of SLERP (as slerp_vectors)
_L1_EPS = 1e-7  # as sparsify._l1_match
#: elements per tile of the invariant reductions (fixed: the sums' rounding must not depend on the device)
REDUCE_TILE = 1 << 20


@dataclass(frozen=True)
class BlendInvariants:
    """What the Darwin blend of one tensor needs that no gene changes (computed once per run).

    Attributes:
        norm_a, norm_b: ‖A‖₂, ‖B‖₂ of the flattened parents (float64 sums of float32 products, in
            an order that does not depend on the thread count: :mod:`darwin.kernels.reduce`).
        dot: A·B.
        seeds: mask seeds of the sparsified parents (with a base: A and B; without: B only).
        levels: ``[P, n]`` int16 mask levels of those parents (:mod:`darwin.kernels.masks`), or None
            when they are recomputed per tile (memory plan: they did not fit).
        l1: ``[P, MASK_LEVELS + 1]`` float64 cumulative L1 norms of the task vectors by mask level:
            ``l1[p, q] = Σ_{u < q} |δ_p|`` (so the L1 norm kept at density ρ is ``l1[p, q(ρ)]`` and the
            whole norm ``l1[p, -1]``); None unless ``rescale == "l1"``.
    """

    norm_a: float
    norm_b: float
    dot: float
    seeds: tuple[int, ...]
    levels: torch.Tensor | None
    l1: torch.Tensor | None

    def nbytes(self) -> int:
        """Bytes held by the tensors of this entry."""
        return sum(t.numel() * t.element_size() for t in (self.levels, self.l1) if t is not None)


def blend_prepare(a: torch.Tensor, b: torch.Tensor, base: torch.Tensor | None, seeds: Sequence[int],
                  rescale: str | None, keep_levels: bool = True) -> BlendInvariants:
    """Genome-invariant part of :func:`blend_apply` for one tensor.

    Args:
        a, b: parents A and B, any float dtype, same shape, same device.
        base: the base model's tensor, or None (θ₀ = A).
        seeds: the task's two mask seeds (A, B).
        rescale: ``"l1"``, ``"paper"`` or None (only ``"l1"`` needs the L1 tables).
        keep_levels: keep the ``[P, n]`` int16 mask levels (2 bytes per element and sparsified parent).

    Returns:
        :class:`BlendInvariants`. Cost: one pass over A, B (and the base), plus one hash per element
        and sparsified parent.
    """
    from darwin.kernels.masks import MASK_LEVELS, mask_levels

    fa, fb, ft = a.reshape(-1), b.reshape(-1), (base.reshape(-1) if base is not None else None)
    n, dev = fa.numel(), fa.device
    sparse = [(fa, 0), (fb, 1)] if base is not None else [(fb, 1)]
    use_seeds = tuple(int(seeds[i]) for _, i in sparse)
    levels = torch.empty((len(sparse), n), dtype=torch.int16, device=dev) if keep_levels else None
    l1 = torch.zeros((len(sparse), MASK_LEVELS), dtype=torch.float64, device=dev) if rescale == "l1" else None
    na = nb = dot = 0.0
    for lo, hi in tiles(n, REDUCE_TILE):
        ta, tb = fa[lo:hi].float(), fb[lo:hi].float()
        na += fixed_order_sum(ta * ta)
        nb += fixed_order_sum(tb * tb)
        dot += fixed_order_sum(ta * tb)
        t0 = ft[lo:hi].float() if ft is not None else ta
        for p, (src, _) in enumerate(sparse):
            lv = mask_levels(use_seeds[p], lo, hi - lo, dev)
            if levels is not None:
                levels[p, lo:hi] = lv
            if l1 is not None:
                delta = (src[lo:hi].float() - t0).abs_().double()
                l1[p] += torch.bincount(lv.long(), weights=delta, minlength=MASK_LEVELS)
    if l1 is not None:
        l1 = torch.cat([torch.zeros((len(sparse), 1), dtype=torch.float64, device=dev), l1.cumsum(1)], 1)
    return BlendInvariants(math.sqrt(na), math.sqrt(nb), dot, use_seeds, levels, l1)


def slerp_coefficients(norm_a: float, norm_b: float, dot: float, t: float) -> tuple[float, float]:
    """``(cₐ, c_b)`` with ``SLERP(A, B; t) = cₐ·A + c_b·B`` (Shoemake 1985), in float64.

    ``cos Ω = A·B / (‖A‖‖B‖)``; ``cₐ = sin((1−t)Ω)/sin Ω``, ``c_b = sin(tΩ)/sin Ω``; linear
    interpolation ``(1−t, t)`` where a norm is below 1e-8 or ``|cos Ω| > 0.9995`` (as
    :func:`darwin.kernels.slerp.slerp_vectors`).
    """
    from darwin.kernels.slerp import DOT_THRESHOLD

    if norm_a < _TINY or norm_b < _TINY:
        return 1.0 - t, t
    cos = min(1.0, max(-1.0, dot / (norm_a * norm_b)))
    if abs(cos) > DOT_THRESHOLD:
        return 1.0 - t, t
    omega = math.acos(cos)
    s = math.sin(omega)
    return math.sin((1.0 - t) * omega) / s, math.sin(t * omega) / s


def _drop_scale(inv: BlendInvariants, p: int, q: int, rescale: str | None) -> float:
    """Rescale factor of sparsified parent ``p`` kept below level ``q``."""
    from darwin.kernels.masks import MASK_LEVELS

    if rescale == "paper":
        return MASK_LEVELS / q if q > 0 else 1.0
    if rescale == "l1":
        assert inv.l1 is not None  # prepared with rescale="l1"
        total, kept = float(inv.l1[p, -1]), float(inv.l1[p, q])
        return total / kept if total >= _L1_EPS and kept >= _L1_EPS else 1.0
    return 1.0


@dataclass(frozen=True)
class BlendCoefficients:
    """Per-candidate scalars of one tensor's blend (from the genes and the invariants).

    Attributes:
        slerp: ``λ·(cₐ, c_b)``, the SLERP term's weights on A and B.
        lam: the merge-method weight λ.
        levels: keep level q per sparsified parent (:func:`darwin.kernels.masks.keep_level`).
        drop: ``wₚ·scaleₚ`` per sparsified parent: TIES weight (1 − r, r) times the DARE rescale.
    """

    slerp: tuple[float, float]
    lam: float
    levels: tuple[int, ...]
    drop: tuple[float, ...]


def blend_coefficients(inv: BlendInvariants, r: float, lam: float, density: Sequence[float],
                       rescale: str | None) -> BlendCoefficients:
    """The scalars of :func:`blend_apply` for genes (r, λ, ρ_A, ρ_B) of one tensor."""
    from darwin.kernels.masks import keep_level

    ca, cb = slerp_coefficients(inv.norm_a, inv.norm_b, inv.dot, r)
    dens = list(density) if len(inv.seeds) == 2 else [density[1]]
    weights = [1.0 - r, r] if len(inv.seeds) == 2 else [r]
    qs = tuple(keep_level(d) for d in dens)
    drop = tuple(w * _drop_scale(inv, p, q, rescale) for p, (w, q) in enumerate(zip(weights, qs)))
    return BlendCoefficients((lam * ca, lam * cb), lam, qs, drop)


def _kept(src: torch.Tensor, t0: torch.Tensor, lv: torch.Tensor, q: int, k: float, d: torch.Tensor,
          m: torch.Tensor) -> torch.Tensor:
    """``d ← k·[lv < q]·(src − t0)`` (float32 tiles; lv int16): the DARE-kept, rescaled, weighted task vector."""
    torch.sub(src, t0, out=d)
    return d.mul_(torch.lt(lv, q, out=m)).mul_(k)  # lt writes 1.0 / 0.0 straight into the float tile


def _tile_levels(inv: BlendInvariants, p: int, lo: int, hi: int, device: torch.device) -> torch.Tensor:
    from darwin.kernels.masks import mask_levels

    if inv.levels is not None:
        return inv.levels[p, lo:hi].to(device, non_blocking=True)
    return mask_levels(inv.seeds[p], lo, hi - lo, device)


def blend_apply(a: torch.Tensor, b: torch.Tensor, base: torch.Tensor | None, inv: BlendInvariants,
                c: BlendCoefficients, out: torch.Tensor, tile: int = 1 << 16,
                workspace: Workspace | None = None) -> torch.Tensor:
    """Write the Darwin blend of one tensor into ``out`` in one tiled pass.

    ``θ = λ·(cₐA + c_bB) + (1 − λ)·(θ₀ + TIES₂(k_A·m_A·δ_A, k_B·m_B·δ_B))`` with δ = parent − θ₀,
    DARE masks ``m = [u < q]`` from the counter-based levels, and the two-parent TIES election
    written without a per-parent mask tensor: with ``σ = sign(x + y)`` (0 counts as +),
    ``TIES₂(x, y) = σ·(max(σx, 0) + max(σy, 0))`` (a parent's value is kept iff its sign is σ; zeros
    add nothing), which equals :func:`darwin.kernels.task_arithmetic.elect_and_combine` for N = 2
    without normalisation. Without a base, θ₀ = A: ``θ = λ·(cₐA + c_bB) + (1 − λ)·(A + k_B·m_B·(B − A))``.
    Where ``λ = 1`` only the SLERP term is computed.

    Args:
        a, b: ``[*S]`` parents in their storage dtype (any device; moved tile by tile to ``out``'s).
        base: ``[*S]`` base, or None.
        inv: :func:`blend_prepare` of these parents.
        c: :func:`blend_coefficients` for this candidate.
        out: ``[*S]`` contiguous destination (float32 or the child's dtype), e.g. a resident parameter.
        tile: elements per tile (the temporaries are a few float32 tiles).
        workspace: where the tile temporaries are kept between calls (None: allocated for this call).

    Returns:
        ``out``. Source: SLERP, Shoemake 1985; DARE arXiv 2311.03099; TIES arXiv 2306.01708.
    """
    dev = out.device
    fa, fb, fo = a.reshape(-1), b.reshape(-1), out.view(-1)
    ft = base.reshape(-1) if base is not None else None
    n = fo.numel()
    ca, cb = c.slerp
    ws = workspace or Workspace()
    width = min(tile, n)
    bufs, ones = ws.tiles(6, width, dev), ws.ones(width, dev)
    for lo, hi in tiles(n, tile):
        ta, tb, tt, d1, d2, m = (t[:hi - lo] for t in bufs)
        ta.copy_(fa[lo:hi], non_blocking=True)
        tb.copy_(fb[lo:hi], non_blocking=True)
        if c.lam >= 1:
            torch.add(ta.mul_(ca), tb, alpha=cb, out=fo[lo:hi])
            continue
        if ft is None:
            _kept(tb, ta, _tile_levels(inv, 0, lo, hi, dev), c.levels[0], c.drop[0], d1, m)
            acc = ta.mul_(ca + (1.0 - c.lam)).add_(tb, alpha=cb)
            torch.add(acc, d1, alpha=1.0 - c.lam, out=fo[lo:hi])
            continue
        tt.copy_(ft[lo:hi], non_blocking=True)
        x = _kept(ta, tt, _tile_levels(inv, 0, lo, hi, dev), c.levels[0], c.drop[0], d1, m)
        y = _kept(tb, tt, _tile_levels(inv, 1, lo, hi, dev), c.levels[1], c.drop[1], d2, m)
        sigma = torch.copysign(ones[:hi - lo], torch.add(x, y, out=m), out=m)
        x.mul_(sigma).clamp_(min=0.0).add_(y.mul_(sigma).clamp_(min=0.0))
        acc = ta.mul_(ca).add_(tb, alpha=cb).add_(tt, alpha=1.0 - c.lam)
        torch.addcmul(acc, x, sigma, value=1.0 - c.lam, out=fo[lo:hi])
    return out
