"""The task-vector family (task arithmetic, TIES, DARE-linear, DARE-TIES) streamed tensor by tensor.

Same rule as :func:`darwin.kernels.task_arithmetic.task_vector_merge`
(``θ = θ₀ + λ·combine(wᵢ·sparsify(θᵢ − θ₀))``), computed in tiles straight from the inputs'
storage dtype, with no ``[B, N, n]`` float32 batch:

* TIES trim: the exact k-th largest magnitude by a two-pass radix selection on the float bits
  (non-negative floats order like their int32 bit patterns): a histogram of the top 16 bits finds
  the bucket that holds the k-th value, then the few candidates of that bucket are selected
  exactly. Elements with ``|δ| ≥`` that value are kept (ties at the threshold all kept, as
  :func:`darwin.kernels.sparsify.magnitude_mask`).
* DARE drop: counter-based mask levels (:mod:`darwin.kernels.masks`), keep iff level < q(ρ).
* TIES election for N parents without a mask tensor: with ``σ = sign(Σᵢ wᵢδ̃ᵢ)`` (0 counts as +),
  ``Σᵢ [sign(wᵢδ̃ᵢ) = σ]·wᵢδ̃ᵢ = σ·Σᵢ max(σ·wᵢδ̃ᵢ, 0)``; the normaliser ``Σᵢ [σ·wᵢδ̃ᵢ > 0]·wᵢ``.

Sources: Task Arithmetic arXiv 2212.04089; TIES-Merging arXiv 2306.01708; DARE arXiv 2311.03099.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from darwin.kernels.masks import MASK_LEVELS, keep_level, mask_levels
from darwin.kernels.reduce import fixed_order_sum, tiles
from darwin.kernels.task_arithmetic import FAMILY

#: methods with a streamed form here (the others keep the batched kernel)
STREAMED = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
_EPS_W = 1e-8  # as task_arithmetic._EPS
_L1_EPS = 1e-7  # as sparsify._l1_match
_HI = 16  # radix split: the top 16 bits below the (zero) sign bit, then the rest
_SHIFT = 31 - _HI


def _delta(x: torch.Tensor, t0: torch.Tensor, lo: int, hi: int, buf: torch.Tensor) -> torch.Tensor:
    """``buf ← float32(x[lo:hi]) − t0`` (t0 a float32 tile)."""
    return buf.copy_(x[lo:hi], non_blocking=True).sub_(t0)


def kth_largest_abs(x: torch.Tensor, base: torch.Tensor, k: int, tile: int) -> float:
    """The k-th largest ``|x − base|`` (1 ≤ k ≤ n) of two flat tensors, exactly.

    ``|δ|`` is materialised once as float32 (one parent at a time: 4 bytes per element). A
    histogram of the top 16 bits of its bit pattern finds the bucket that holds the k-th largest
    value; that bucket's elements (a small fraction for real task vectors) are gathered and the
    exact value selected with ``kthvalue``.
    """
    n, dev = x.numel(), x.device
    mag = torch.empty(n, dtype=torch.float32, device=dev)
    t0 = torch.empty(min(tile, n), dtype=torch.float32, device=dev)
    for lo, hi in tiles(n, tile):
        t = t0[:hi - lo].copy_(base[lo:hi])
        _delta(x, t, lo, hi, mag[lo:hi]).abs_()
    bits = mag.view(torch.int32)
    top = bits >> _SHIFT
    hist = torch.bincount(top, minlength=1 << _HI)
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # above[b] = #elements in buckets ≥ b
    bucket = int(torch.searchsorted(-above, -k, right=True)) - 1  # last bucket with above ≥ k (above is non-increasing)
    rank = k - (int(above[bucket + 1]) if bucket + 1 < hist.numel() else 0)  # rank inside the bucket, from the top
    c = bits[top == bucket]
    return float(torch.kthvalue(c, c.numel() - rank + 1).values.view(torch.float32))


def _thresholds(xs: Sequence[torch.Tensor], base: torch.Tensor, density: Sequence[float], tile: int
                ) -> list[float | None]:
    """Per parent: the TIES keep threshold (None: keep all), or ``inf`` (keep none)."""
    n = base.numel()
    out: list[float | None] = []
    for x, rho in zip(xs, density):
        if rho >= 1:
            out.append(None)
        elif rho <= 0:
            out.append(math.inf)
        else:
            k = min(n, max(1, math.floor(float(rho) * n)))
            out.append(kth_largest_abs(x, base, k, tile) if k < n else None)
    return out


def _l1_scales(xs, base, kept_fn, tile: int) -> list[float]:
    """``‖δᵢ‖₁ / ‖kept(δᵢ)‖₁`` per parent (1 where either is below 1e-7), one tiled pass each."""
    n, dev = base.numel(), base.device
    t0 = torch.empty(min(tile, n), dtype=torch.float32, device=dev)
    d = torch.empty_like(t0)
    m = torch.empty_like(t0)
    scales = []
    for i, x in enumerate(xs):
        total = kept = 0.0
        for lo, hi in tiles(n, tile):
            t = t0[:hi - lo].copy_(base[lo:hi])
            dd = _delta(x, t, lo, hi, d[:hi - lo])
            total += fixed_order_sum(dd.abs())
            kept += fixed_order_sum(kept_fn(i, dd, lo, hi, m[:hi - lo]).abs_())
        scales.append(total / kept if total >= _L1_EPS and kept >= _L1_EPS else 1.0)
    return scales


def family_apply(xs: Sequence[torch.Tensor], base: torch.Tensor, method: str, *, weight: Sequence[float],
                 density: Sequence[float] | None, lam: float, normalize: bool, rescale: str | None,
                 seeds: Sequence[int] | None, out: torch.Tensor, tile: int = 1 << 19) -> torch.Tensor:
    """Merge one tensor with a task-vector method into ``out``.

    Args:
        xs: N parents ``[*S]`` (storage dtype); base: ``[*S]``.
        method: one of :data:`STREAMED`.
        weight: N weights wᵢ; density: N fractions ρᵢ (None: 1).
        lam: scale λ; normalize: divide by the (elected) weight sum.
        rescale: ``"paper"``, ``"l1"`` or None after sparsification.
        seeds: N mask seeds (random methods).
        out: ``[*S]`` contiguous destination (any float dtype).

    Returns:
        ``out``.
    """
    cfg = FAMILY[method]
    fx = [x.reshape(-1) for x in xs]
    ft, fo = base.reshape(-1), out.view(-1)
    n, dev, N = fo.numel(), fo.device, len(fx)
    rho = list(density) if density is not None else [1.0] * N
    w = [float(v) for v in weight]
    thr: list[float | None] = [None] * N
    qs = [MASK_LEVELS] * N
    if cfg.sparsify == "magnitude":
        thr = _thresholds(fx, ft, rho, tile)
    elif cfg.sparsify == "random":
        if seeds is None:
            raise ValueError(f"{method} needs per-tensor seeds")
        qs = [keep_level(r) for r in rho]

    # |δ| ≥ thr ⟺ |δ| > the float32 just below thr: hardshrink's strict rule, λ computed once per parent
    shrink = [None if t is None or t == math.inf or t <= 0 else
              float(torch.nextafter(torch.tensor(t, dtype=torch.float32), torch.tensor(0.0)))
              for t in thr]

    def kept(i: int, d: torch.Tensor, lo: int, hi: int, m: torch.Tensor) -> torch.Tensor:
        """Sparsify tile ``d`` of parent i (in place, or a new tensor for the magnitude trim)."""
        if thr[i] == math.inf:
            return d.zero_()
        lam_i = shrink[i]
        if lam_i is not None:
            return torch.nn.functional.hardshrink(d, lam_i)
        if cfg.sparsify == "random" and qs[i] < MASK_LEVELS:
            assert seeds is not None  # checked above
            return d.mul_(torch.lt(mask_levels(int(seeds[i]), lo, hi - lo, dev), qs[i], out=m))
        return d

    scale = [1.0] * N
    if rescale == "l1" and cfg.sparsify is not None:
        scale = _l1_scales(fx, ft, kept, tile)
    elif rescale == "paper" and cfg.sparsify is not None:
        scale = [(MASK_LEVELS / q if q else 1.0) if cfg.sparsify == "random" else 1.0 / max(r, _L1_EPS)
                 for q, r in zip(qs, rho)]
    wsum = sum(w)
    width = min(tile, n)
    tb = torch.empty(width, dtype=torch.float32, device=dev)
    ds = [torch.empty_like(tb) for _ in range(N)]
    m, acc, div = torch.empty_like(tb), torch.empty_like(tb), torch.empty_like(tb)
    ones = torch.ones_like(tb)
    for lo, hi in tiles(n, tile):
        L = hi - lo
        t = tb[:L].copy_(ft[lo:hi], non_blocking=True)
        wd = []
        for i in range(N):
            d = _delta(fx[i], t, lo, hi, ds[i][:L])
            wd.append(kept(i, d, lo, hi, m[:L]).mul_(w[i] * scale[i]))
        a = acc[:L].copy_(wd[0])
        for d in wd[1:]:
            a.add_(d)
        if cfg.consensus:
            sigma = torch.copysign(ones[:L], a, out=m[:L])
            a.zero_()
            if normalize:
                dv = div[:L].zero_()
            for i, d in enumerate(wd):
                d.mul_(sigma).clamp_(min=0.0)
                a.add_(d)
                if normalize:
                    dv.add_(d.sign_(), alpha=w[i])
            a.mul_(sigma)
            if normalize:
                a.div_(dv.add_(dv == 0))
        elif normalize:
            a.div_(wsum if abs(wsum) >= _EPS_W else 1.0)
        torch.add(t, a, alpha=lam, out=fo[lo:hi])
    return out
