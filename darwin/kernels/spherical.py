"""Means on the hypersphere over many parents: Multi-SLERP and the Karcher mean, batched.

Both treat each parent's (task-vector or weight) tensor as one vector ``v ∈ ℝⁿ``, average the unit
directions on the sphere ``Sⁿ⁻¹`` and rescale by the weighted mean of the norms.
"""

from __future__ import annotations

import torch


def multislerp(x: torch.Tensor, weight: torch.Tensor, base: torch.Tensor | None, *,
               normalize_weights: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Barycentric SLERP of N tensors through the tangent space at their weighted mean direction.

    With ``vᵢ = xᵢ − base`` (or ``xᵢ``), weights ``wᵢ`` (divided by ``Σw`` when ``normalize_weights``),
    unit vectors ``uᵢ = vᵢ / (‖vᵢ‖ + eps)``, mean direction ``m = Σwᵢuᵢ / ‖Σwᵢuᵢ‖``, tangent vectors
    ``tᵢ = uᵢ − (uᵢ·m)m`` and ``τ = Σwᵢtᵢ``, the result is the exponential map
    ``m·cos‖τ‖ + τ·sin‖τ‖/‖τ‖`` scaled by ``Σwᵢ‖vᵢ‖`` (plus the base). One parent is returned as is.
    Where ``‖Σwᵢuᵢ‖ < eps`` (directions that cancel) the result is the weighted sum ``Σwᵢvᵢ``; mergekit
    does that for two parents and raises for more. Source: C. Goddard, "Multi-SLERP" (2025),
    goddard.blog/posts/multislerp-wow-what-a-cool-idea; the formula as mergekit 0.1.5 implements it.

    Args:
        x: ``[B, N, *S]`` float32.
        weight: ``[B, N]`` per-parent weights.
        base: ``[B, *S]`` float32 or None.
        normalize_weights: divide the weights by their sum.
        eps: guard of the norms (same units as ``x``).

    Returns:
        ``[B, *S]`` float32.
    """
    B, N = x.shape[:2]
    if N == 1:
        return x[:, 0].clone()
    v = (x - base.unsqueeze(1) if base is not None else x).reshape(B, N, -1)
    w = weight.to(v.dtype)
    if normalize_weights:
        w = w / w.sum(1, keepdim=True)
    norms = torch.linalg.vector_norm(v, dim=-1)  # [B, N]
    u = v / (norms + eps).unsqueeze(-1)
    mean = (u * w.unsqueeze(-1)).sum(1)  # [B, n]
    mean_norm = torch.linalg.vector_norm(mean, dim=-1, keepdim=True)
    m = mean / mean_norm.clamp(min=eps)
    t = u - (u * m.unsqueeze(1)).sum(-1, keepdim=True) * m.unsqueeze(1)
    tau = (t * w.unsqueeze(-1)).sum(1)
    tau_norm = torch.linalg.vector_norm(tau, dim=-1, keepdim=True) + eps
    sphere = (m * torch.cos(tau_norm) + tau * (torch.sin(tau_norm) / tau_norm)) * (norms * w).sum(1, keepdim=True)
    flat = (v * w.unsqueeze(-1)).sum(1)
    out = torch.where(mean_norm < eps, flat, sphere).reshape(B, *x.shape[2:])
    return out + base if base is not None else out


def karcher(x: torch.Tensor, base: torch.Tensor | None, *, max_iter: int = 10, tol: float = 1e-5) -> torch.Tensor:
    """The Karcher (Riemannian centre of mass) mean of the parents' directions, times their mean norm.

    Every input (the base too, when given) has equal weight ``αᵢ = 1/K``. Directions of inputs with
    norm ``≤ tol`` are left out (their norms still count in the scale). From the normalised
    Euclidean mean, each of ``max_iter`` steps moves along ``T = Σαᵢ·θᵢ/sin θᵢ·(uᵢ − cos θᵢ·μ)``
    (``θᵢ`` the angle between ``μ`` and ``uᵢ``, steps with ``θᵢ < tol`` skipped):
    ``μ ← cos‖T‖·μ + sin‖T‖·T/‖T‖``, stopping once ``‖T‖ < tol``. The result is ``(Σαᵢ‖xᵢ‖)·μ``.
    Source: H. Karcher, "Riemannian center of mass and mollifier smoothing", Comm. Pure Appl.
    Math. 30 (1977); the iteration as mergekit 0.1.5's ``karcher`` implements it.

    Args:
        x: ``[B, N, *S]`` float32.
        base: ``[B, *S]`` float32 or None (a further input).
        max_iter: iteration limit.
        tol: norm and angle threshold.

    Returns:
        ``[B, *S]`` float32.
    """
    xs = torch.cat([base.unsqueeze(1), x], 1) if base is not None else x
    B, K = xs.shape[:2]
    if K == 1:
        return xs[:, 0].clone()
    v = xs.reshape(B, K, -1)
    norms = torch.linalg.vector_norm(v, dim=-1)  # [B, K]
    u = torch.where(norms.unsqueeze(-1) > 0, v / norms.clamp(min=1e-30).unsqueeze(-1), torch.zeros_like(v))
    valid = norms > tol
    alpha = valid.to(v.dtype)
    alpha = alpha / alpha.sum(1, keepdim=True).clamp(min=1)
    mean = (u * alpha.unsqueeze(-1)).sum(1)
    mean_norm = torch.linalg.vector_norm(mean, dim=-1, keepdim=True)
    first = u[torch.arange(B, device=v.device), valid.to(torch.int64).argmax(1)]
    mu = torch.where(mean_norm < tol, first, mean / mean_norm.clamp(min=1e-30))
    active = torch.ones(B, dtype=torch.bool, device=v.device)
    for _ in range(max_iter):
        dot = (u * mu.unsqueeze(1)).sum(-1).clamp(-1, 1)  # [B, K]
        theta = torch.arccos(dot)
        step = (theta >= tol) & valid
        coef = torch.where(step, alpha * theta / torch.sin(theta).clamp(min=1e-30), torch.zeros_like(theta))
        tangent = (coef.unsqueeze(-1) * (u - dot.unsqueeze(-1) * mu.unsqueeze(1))).sum(1)
        tn = torch.linalg.vector_norm(tangent, dim=-1, keepdim=True)
        active = active & (tn.squeeze(-1) >= tol)
        if not bool(active.any()):
            break
        moved = torch.cos(tn) * mu + torch.sin(tn) * tangent / tn.clamp(min=1e-30)
        moved = moved / torch.linalg.vector_norm(moved, dim=-1, keepdim=True).clamp(min=1e-30)
        mu = torch.where(active.unsqueeze(-1), moved, mu)
    scale = norms.mean(1, keepdim=True)
    out = torch.where(valid.any(1, keepdim=True), scale * mu, torch.zeros_like(mu))
    return out.reshape(B, *xs.shape[2:])
