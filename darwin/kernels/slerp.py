"""Spherical linear interpolation (SLERP, Shoemake 1985) and NuSLERP, batched.

Each tensor is treated as one flattened vector (or one vector per row for row-wise NuSLERP). The
interpolation coefficients are computed from the normalised directions and applied to the
unnormalised tensors. Degenerate inputs fall back to linear interpolation so nothing is NaN:
nearly parallel or anti-parallel directions (``|cos Ω| > 0.9995``) and zero-norm tensors
(``‖·‖ < 1e-8``; mergekit instead treats a zero vector as orthogonal to the other, which scales
the other by ``sin(tπ/2)``).
"""

from __future__ import annotations

import torch

DOT_THRESHOLD = 0.9995
_EPS = 1e-8


def slerp_vectors(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SLERP between rows of ``a`` and ``b``.

    Args:
        a, b: ``[M, n]`` float32 (``t = 0`` gives ``a``, ``t = 1`` gives ``b``).
        t: ``[M]`` float32 interpolation factors.

    Returns:
        ``[M, n]`` float32: ``sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b`` with
        ``cos Ω = â·b̂``; linear interpolation where degenerate (see module doc).
    """
    t = t.reshape(-1, 1).to(a.dtype)
    na = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    nb = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    zero = (na < _EPS) | (nb < _EPS)
    one = torch.ones_like(na)
    dot = ((a / torch.where(zero, one, na)) * (b / torch.where(zero, one, nb))).sum(-1, keepdim=True)
    dot = dot.clamp(-1.0, 1.0)
    lerp = zero | (dot.abs() > DOT_THRESHOLD)
    omega = torch.acos(torch.where(lerp, torch.zeros_like(dot), dot))
    sin_omega = torch.where(lerp, one, torch.sin(omega))
    ca = torch.where(lerp, 1 - t, torch.sin((1 - t) * omega) / sin_omega)
    cb = torch.where(lerp, t, torch.sin(t * omega) / sin_omega)
    return ca * a + cb * b


def slerp(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SLERP of two parents per tensor.

    Args:
        x: ``[B, 2, *S]`` float32; ``x[:, 0]`` is parent A (the recipe's base), ``x[:, 1]`` is B.
        t: ``[B]`` float32, fraction taken from B.

    Returns:
        ``[B, *S]`` float32.
    """
    B = x.shape[0]
    return slerp_vectors(x[:, 0].reshape(B, -1), x[:, 1].reshape(B, -1), t).reshape(x.shape[:1] + x.shape[2:])


def nuslerp(x: torch.Tensor, weight: torch.Tensor, base: torch.Tensor | None = None,
            flatten: bool = True, row_wise: bool = False) -> torch.Tensor:
    """NuSLERP: SLERP with ``t = w₂/(w₁+w₂)`` (0.5 when ``|w₁+w₂| < 1e-6``), of task vectors when a
    base is given. Conventions are mergekit's ``nuslerp`` (its documented behaviour).

    Args:
        x: ``[B, 2, *S]`` float32 parents.
        weight: ``[B, 2]`` float32 per-parent weights.
        base: optional ``[B, *S]``; if given, ``θ = θ₀ + SLERP(θ₁−θ₀, θ₂−θ₀; t)``.
        flatten: interpolate each tensor as one vector. Otherwise each vector runs along one
            dimension of the tensor:
        row_wise: with ``flatten=False``: ``False`` (default) interpolates the vectors along the
            last dimension (each row of a 2-D weight), ``True`` the vectors along the first
            dimension (each column of a 2-D weight; mergekit's ``dim=0``).

    Returns:
        ``[B, *S]`` float32.
    """
    a, b = x[:, 0], x[:, 1]
    if base is not None:
        a, b = a - base, b - base
    s = weight.sum(1)
    t = torch.where(s.abs() < 1e-6, torch.full_like(s, 0.5), weight[:, 1] / torch.where(s == 0, torch.ones_like(s), s))
    B = x.shape[0]
    if flatten or a.dim() < 3:
        out = slerp_vectors(a.reshape(B, -1), b.reshape(B, -1), t).reshape(a.shape)
    else:
        if row_wise:  # vectors along the tensor's first dimension: move it last
            a, b = a.transpose(1, -1), b.transpose(1, -1)
        vecs = a[0].numel() // a.shape[-1]
        out = slerp_vectors(a.reshape(B * vecs, -1), b.reshape(B * vecs, -1),
                            t.repeat_interleave(vecs)).reshape(a.shape)
        if row_wise:
            out = out.transpose(1, -1)
    return out if base is None else base + out
