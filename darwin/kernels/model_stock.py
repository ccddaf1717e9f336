"""Model Stock (Jang et al., arXiv 2403.19522), batched."""

from __future__ import annotations

import torch

_EPS = 1e-6


def model_stock(x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``θ = t·mean(θᵢ) + (1−t)·θ₀`` with ``t = N·cos / (1 + (N−1)·cos)``.

    ``cos`` is the mean pairwise cosine between task vectors ``δᵢ = θᵢ − θ₀`` (whole tensors).
    With identical parents ``cos = 1``, ``t = 1`` and the parent is returned. When the
    denominator vanishes ``t = 0`` (the base is kept).

    Args:
        x: ``[B, N, *S]`` float32 with ``N >= 2`` fine-tuned parents.
        base: ``[B, *S]`` float32 pre-trained base.

    Returns:
        ``[B, *S]`` float32.

    Raises:
        ValueError: fewer than two parents.
    """
    B, N = x.shape[:2]
    if N < 2:
        raise ValueError("model_stock needs at least two fine-tuned parents besides the base")
    d = (x - base.unsqueeze(1)).reshape(B, N, -1)
    nrm = torch.linalg.vector_norm(d, dim=-1)
    unit = d / nrm.clamp(min=_EPS).unsqueeze(-1)
    gram = (unit @ unit.transpose(1, 2)).clamp(-1, 1)  # [B, N, N]
    iu = torch.triu_indices(N, N, offset=1, device=x.device)
    cos = gram[:, iu[0], iu[1]].mean(-1)
    den = 1 + (N - 1) * cos
    singular = den.abs() < _EPS
    t = torch.where(singular, torch.zeros_like(cos), N * cos / torch.where(singular, torch.ones_like(den), den))
    t = t.reshape((B,) + (1,) * (x.dim() - 2))
    return t * x.mean(1) + (1 - t) * base
