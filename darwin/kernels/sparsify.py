"""Sparsification of task vectors: the "trim" step of TIES, DARE, Model Breadcrumbs and DELLA.

Every function works on a batch of flattened task vectors ``delta`` of shape ``[B, N, n]``
(B tensors merged together, N parents, n elements each), float32, and returns a tensor of the
same shape. Densities are ``[B, N]`` float tensors (fraction of elements kept, 0..1); pass them as float64
so that element counts ``⌊ρ·n⌋`` match Python's arithmetic on the recipe's numbers exactly.

Random masks come from a seed per (tensor, parent): counter-based levels (``mask_rng: counter``,
:mod:`darwin.kernels.masks`) or, for recipes written before that convention, a CPU generator
(``cpu_generator``). Either way the same seed gives the same mask on every device and in every
process, so a genome's fitness is reproducible.

Rescale conventions after a random drop (DARE, DELLA):

* ``"paper"``: divide each kept element by its keep probability (``1/ρ`` for DARE, arXiv
  2311.03099 eq. 2; ``1/pᵢ`` for DELLA, arXiv 2406.11617), which keeps the expectation unbiased;
* ``"l1"``: scale the kept elements so that the tensor's L1 norm equals the original one, as
  mergekit does when ``rescale: true``;
* ``None``: no rescale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

RESCALES = ("paper", "l1", None)
_EPS = 1e-7


def _l1_match(before: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Scale ``masked`` [B, N, n] in place so each row's L1 norm equals ``before`` [B, N, 1]."""
    after = masked.abs().sum(-1, keepdim=True)
    ok = (before >= _EPS) & (after >= _EPS)
    scale = torch.where(ok, before / torch.where(ok, after, torch.ones_like(after)), torch.ones_like(after))
    return masked.mul_(scale)


def _full_or_empty(delta: torch.Tensor, density: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Force mask rows to all-ones where density >= 1 and all-zeros where density <= 0."""
    if bool(((density > 0) & (density < 1)).all()):
        return mask
    d = density.unsqueeze(-1)
    mask = torch.where(d >= 1, torch.ones_like(mask), mask)
    return torch.where(d <= 0, torch.zeros_like(mask), mask)


def magnitude_mask(delta: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """Keep the ``k = max(1, ⌊ρ·n⌋)`` largest-magnitude elements of each task vector (TIES trim).

    The threshold is the k-th largest magnitude (``kthvalue``, a selection, not a sort, and no
    index tensor); every element at or above it is kept, so magnitudes tied with the k-th are all
    kept: a deterministic, order-independent rule (an argsort keeps an arbitrary subset of ties).
    For distinct magnitudes exactly k elements are kept.

    Args:
        delta: ``[B, N, n]`` float32 task vectors.
        density: ``[B, N]`` fraction kept; ``ρ >= 1`` keeps all, ``ρ <= 0`` keeps none.

    Returns:
        ``[B, N, n]`` float32 0/1 mask. Source: TIES-Merging, arXiv 2306.01708, "trim".
    """
    B, N, n = delta.shape
    flat, dens = delta.reshape(B * N, n).abs(), density.reshape(B * N)
    ks = torch.clamp((dens.double() * n).floor().long(), min=1, max=n)
    thr = torch.empty(B * N, 1, dtype=flat.dtype, device=flat.device)
    for row in range(B * N):  # row by row: kthvalue copies its input, keep that copy one row long
        thr[row] = torch.kthvalue(flat[row], n - int(ks[row]) + 1).values
    return _full_or_empty(delta, density, (flat >= thr).reshape(B, N, n))


def band_mask(delta: torch.Tensor, density: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Model Breadcrumbs mask: drop the top ``⌊γ·n⌋`` magnitudes (outliers) and the smallest ones,
    keeping a band of ``⌊ρ·n⌋`` elements just below the outliers.

    When ``⌊γ·n⌋ = 0`` (tensors with fewer than ``1/γ`` elements) no outlier is dropped and the
    band is the plain top-``⌊ρ·n⌋``; the delta is never zeroed wholesale.

    Args:
        delta: ``[B, N, n]`` float32; density, gamma: ``[B, N]``.

    Returns:
        ``[B, N, n]`` float32 0/1 mask. Source: Model Breadcrumbs, arXiv 2312.06795.
    """
    B, N, n = delta.shape
    flat = delta.reshape(B * N, n).abs()
    order = torch.argsort(flat, dim=-1)  # ascending; a band needs ranks on both sides
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(n, device=delta.device).expand(B * N, n))
    keep = (density.reshape(-1).double() * n).floor().long().clamp(0, n)
    top = (gamma.reshape(-1).double() * n).floor().long().clamp(0, n)
    bottom = (n - keep - top).clamp(min=0)
    lo, hi = bottom.unsqueeze(-1), (bottom + keep).unsqueeze(-1)
    mask = ((ranks >= lo) & (ranks < hi)).to(delta.dtype).reshape(B, N, n)
    return _full_or_empty(delta, density, mask)


def _uniforms(seeds: Sequence[Sequence[int]], n: int, device: torch.device, mask_rng: str = "cpu_generator"
              ) -> torch.Tensor:
    """``[B, N, n]`` uniforms in [0, 1) per (tensor, parent) seed.

    ``cpu_generator``: ``torch.rand`` from a CPU generator seeded per (tensor, parent) (copied to
    ``device``). ``counter``: ``(level + ½)/4096`` from the counter-based levels of
    :mod:`darwin.kernels.masks`, computed on ``device``.
    """
    if mask_rng == "counter":
        from darwin.kernels.masks import MASK_LEVELS, mask_levels

        lv = torch.stack([torch.stack([mask_levels(int(s), 0, n, device) for s in row]) for row in seeds])
        return lv.float().add_(0.5).div_(MASK_LEVELS)
    out = torch.empty((len(seeds), len(seeds[0]), n), dtype=torch.float32)
    g = torch.Generator(device="cpu")
    for b, row in enumerate(seeds):
        for i, s in enumerate(row):
            g.manual_seed(int(s))
            out[b, i] = torch.rand(n, generator=g)
    return out.to(device)


def random_drop(delta: torch.Tensor, density: torch.Tensor, seeds: Sequence[Sequence[int]],
                rescale: str | None, inplace: bool = False, mask_rng: str = "cpu_generator") -> torch.Tensor:
    """DARE: keep each element with probability ρ, then rescale.

    Args:
        delta: ``[B, N, n]`` float32 task vectors.
        density: ``[B, N]`` keep probability ρ.
        seeds: ``B × N`` integer seeds (see :func:`darwin.kernels.seeds.tensor_seed`).
        rescale: ``"paper"`` (δ·m/ρ), ``"l1"`` (match the L1 norm) or ``None``.
        inplace: write the result into ``delta``.
        mask_rng: ``cpu_generator`` or ``counter`` (see :func:`_uniforms`).

    Returns:
        ``[B, N, n]`` float32 sparsified task vectors. Source: DARE, arXiv 2311.03099.
    """
    _check_rescale(rescale)
    u = _uniforms(seeds, delta.shape[-1], delta.device, mask_rng)
    d = density.to(delta.dtype).unsqueeze(-1)
    mask = _full_or_empty(delta, density, u < d)
    del u
    return apply_rescale(delta, mask, d, rescale, inplace=inplace)


def della_drop(delta: torch.Tensor, density: torch.Tensor, epsilon: torch.Tensor,
               seeds: Sequence[Sequence[int]], rescale: str | None, row_len: int,
               mask_rng: str = "cpu_generator") -> torch.Tensor:
    """DELLA MagPrune: per row, keep probability grows linearly with magnitude rank.

    For each row of ``row_len`` elements, ``pᵢ = (ρ − ε) + 2ε·rank(|δᵢ|)/(row_len − 1)`` with
    rank 0 for the smallest magnitude, then ``mᵢ ~ Bernoulli(pᵢ)``.

    Args:
        delta: ``[B, N, n]`` float32; ``n`` must be a multiple of ``row_len`` (a 1-D tensor is one row).
        density, epsilon: ``[B, N]``; requires ``0 < ρ − ε`` and ``ρ + ε <= 1``.
        seeds: ``B × N`` integer seeds.
        rescale: ``"paper"`` (divide by pᵢ), ``"l1"`` or ``None``.
        mask_rng: ``cpu_generator`` or ``counter`` (see :func:`_uniforms`).

    Raises:
        ValueError: ε makes a probability leave (0, 1].
    Source: DELLA-Merging, arXiv 2406.11617.
    """
    _check_rescale(rescale)
    B, N, n = delta.shape
    density, epsilon = density.to(delta.dtype), epsilon.to(delta.dtype)
    lo, hi = density - epsilon, density + epsilon
    active = density < 1
    if bool(((lo <= 0) & active).any()) or bool(((hi > 1) & active).any()):
        raise ValueError("DELLA: epsilon must keep density ± epsilon inside (0, 1]")
    rows = delta.reshape(B, N, n // row_len, row_len).abs()
    ranks = torch.argsort(torch.argsort(rows, dim=-1), dim=-1).to(delta.dtype)
    frac = ranks / max(row_len - 1, 1)
    p = (lo.reshape(B, N, 1, 1) + 2 * epsilon.reshape(B, N, 1, 1) * frac).reshape(B, N, n)
    u = _uniforms(seeds, n, delta.device, mask_rng)
    mask = _full_or_empty(delta, density, u < p)
    return apply_rescale(delta, mask, p, rescale)


def _check_rescale(rescale: str | None) -> None:
    if rescale not in RESCALES:
        raise ValueError(f"rescale must be one of {RESCALES}, got {rescale!r}")


def apply_rescale(delta: torch.Tensor, mask: torch.Tensor, prob: torch.Tensor, rescale: str | None,
                  inplace: bool = False) -> torch.Tensor:
    """Apply ``mask`` [B, N, n] (bool or 0/1) to ``delta`` and rescale (``prob`` broadcasts to ``[B, N, n]``).

    With ``inplace`` the result is written into ``delta`` (for callers that own it: saves a
    tensor-sized temporary on the hot path).
    """
    _check_rescale(rescale)
    before = delta.abs().sum(-1, keepdim=True) if rescale == "l1" else None
    masked = delta.mul_(mask) if inplace else delta * mask
    if rescale == "paper":
        return masked.div_(torch.clamp(prob.to(delta.dtype), min=_EPS))
    if rescale == "l1":
        assert before is not None  # computed above when rescale == "l1"
        return _l1_match(before, masked)
    return masked
