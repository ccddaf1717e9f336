"""Element-selective task-vector merges: NearSwap, SCE, Arcee Fusion, RAM and RAM+ (tensor-local), batched.

Each keeps or reweights individual elements of the task vectors ``δᵢ = θᵢ − θ₀`` (``[B, N, n]``)
by a rule computed over the tensor, then adds the result to the base ``θ₀``.
"""

from __future__ import annotations

import torch


def nearswap(base: torch.Tensor, other: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Take the other parent's value where it is close to the base's, interpolate where it is not.

    ``w = clamp(t / max(|a − b|, 1e-6), 0, 1)``, result ``w·b + (1 − w)·a`` (``a`` the base, ``b`` the
    other parent): elements within ``t`` of each other become ``b``; far ones stay near ``a``.
    Source: alchemonaut, "QuartetAnemoi-70B-t0.0001" model card (NearSwap), Hugging Face 2024.

    Args:
        base: ``[B, *S]`` float32.
        other: ``[B, *S]`` float32.
        t: ``[B]`` distance scale, in the tensors' units.

    Returns:
        ``[B, *S]`` float32.
    """
    tt = t.reshape((-1,) + (1,) * (base.dim() - 1)).to(base.dtype)
    w = (tt / (base - other).abs().clamp(min=1e-6)).clamp(0, 1)
    return w * other + (1 - w) * base


def _deltas(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    return (x - base.unsqueeze(1)).reshape(x.shape[0], x.shape[1], -1)


def sce(x: torch.Tensor, base: torch.Tensor, select_topk: float = 1.0) -> torch.Tensor:
    """SCE (Select, Calculate, Erase) merging of task vectors (Wan et al., FuseChat, arXiv 2408.07990).

    * Select: with ``select_topk < 1``, keep the ``⌊k·z⌋`` elements whose variance across parents is
      largest (``z`` = elements of non-zero variance), zero the rest in every parent;
    * Calculate: parent weights ``wᵢ = mean(δᵢ²) / Σⱼ mean(δⱼ²)`` (equal when that sum is < 1e-6);
    * Erase: keep ``δᵢ`` where its sign equals the sign of ``Σᵢδᵢ`` (``+`` at 0; zeros never agree);
      ``result = θ₀ + Σᵢ wᵢmᵢδᵢ / max(Σᵢ wᵢmᵢ, 1e-6)``.

    Args:
        x: ``[B, N, *S]`` float32 parents.
        base: ``[B, *S]`` float32.
        select_topk: fraction of elements kept by the selection, in [0, 1].

    Returns:
        ``[B, *S]`` float32.
    """
    d = _deltas(x, base)
    B, N, n = d.shape
    if select_topk <= 0:
        d = torch.zeros_like(d)
    elif select_topk < 1:
        var = d.var(1, unbiased=False)  # [B, n]
        keep = torch.zeros_like(var, dtype=torch.bool)
        for b in range(B):
            k = int(int(torch.count_nonzero(var[b])) * select_topk)
            if k > 0:
                keep[b, torch.topk(var[b].abs(), k).indices] = True
        d = d * keep.unsqueeze(1)
    energy = d.square().mean(-1)  # [B, N]
    total = energy.sum(1, keepdim=True)
    w = torch.where(total.abs() < 1e-6, torch.full_like(energy, 1.0 / N), energy / total.clamp(min=1e-30))
    elected = torch.where(d.sum(1) >= 0, 1.0, -1.0).unsqueeze(1)
    ew = w.unsqueeze(-1) * (torch.sign(d) == elected)
    merged = (d * ew).sum(1) / ew.sum(1).clamp(min=1e-6)
    return base + merged.reshape(base.shape)


def _quantile_floor(flat: torch.Tensor, q: float) -> torch.Tensor:
    """``sorted(flat)[⌊q·(n−1)⌋]`` per row of ``[B, n]``."""
    k = int(q * (flat.shape[-1] - 1))
    return flat.kthvalue(k + 1, dim=-1).values


def arcee_fusion(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Arcee Fusion: keep the other parent's change only where it is an outlier in importance.

    Importance per element ``|b − a| · KL(softmax(b) ‖ softmax(a))``, the divergence taken along the
    last dimension (one value per row; ``+1e-8`` inside each softmax). The threshold is
    ``median + 1.5·(q₃ − q₁)`` of the tensor's importances (quantiles at ``⌊q·(n−1)⌋`` of the sorted
    values, exact for every size: mergekit samples one million elements of larger tensors at
    random), and ``result = a + (b − a)·[importance ≥ threshold]``. Source: Arcee AI, "Arcee Fusion"
    (mergekit, 2025; arcee.ai).

    Args:
        base: ``[B, *S]`` float32 (``a``).
        other: ``[B, *S]`` float32 (``b``).

    Returns:
        ``[B, *S]`` float32.
    """
    eps = 1e-8
    p = torch.softmax(other, dim=-1) + eps
    q = torch.softmax(base, dim=-1) + eps
    kl = (p * torch.log(p / q)).sum(-1, keepdim=True)
    imp = ((other - base).abs() * kl).reshape(base.shape[0], -1)
    q1, med, q3 = (_quantile_floor(imp, f) for f in (0.25, 0.5, 0.75))
    thr = (med + 1.5 * (q3 - q1)).unsqueeze(-1)
    mask = (imp >= thr).reshape(base.shape).to(base.dtype)
    return base + (other - base) * mask


def ram(x: torch.Tensor, base: torch.Tensor, epsilon: float = 1e-5, *, plus: bool = False, r: float = 0.1,
        alpha: float = 0.2) -> torch.Tensor:
    """RAM (Reinforced Agent Merging, arXiv 2601.13572) and RAM+ (tensor-local).

    Elements with ``|δᵢ| > ε`` contribute; ``cₑ`` counts the parents contributing to element ``e``.
    An element only one parent changed keeps that change whole; a shared one gets the mean of the
    contributions: ``δ = Σᵢ mᵢδᵢ·([c = 1] + [c > 1]/c)``. RAM+ scales parent ``i``'s unique changes by
    ``λᵢ = 1 + r·clamp(ρᵢ, 0, α)``, ``ρᵢ = (its shared elements) / max(its unique elements, ε)``,
    counted over the tensor. ``result = θ₀ + δ``.

    Args:
        x: ``[B, N, *S]`` float32 parents.
        base: ``[B, *S]`` float32.
        epsilon: contribution threshold (tensor units).
        plus: RAM+ (tensor-local) instead of RAM.
        r, alpha: RAM+ rescaling rate and cap.

    Returns:
        ``[B, *S]`` float32.
    """
    d = _deltas(x, base)
    nz = d.abs() > epsilon
    c = nz.sum(1, keepdim=True)
    unique, shared = c == 1, c > 1
    dz = d * nz
    if plus:
        rho = (nz & shared).sum(-1) / (nz & unique).sum(-1).clamp(min=epsilon)  # [B, N]
        lam = (1 + r * rho.clamp(0, alpha)).unsqueeze(-1)
        merged = (dz * unique * lam + dz * shared / c.clamp(min=1)).sum(1)
    else:
        merged = (dz * unique + dz * shared / c.clamp(min=1)).sum(1)
    return base + merged.reshape(base.shape)
