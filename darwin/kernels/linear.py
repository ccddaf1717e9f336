"""Linear averaging and passthrough (copy) kernels, batched."""

from __future__ import annotations

import torch

_EPS = 1e-8


def linear(x: torch.Tensor, weight: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Weighted average of parents: ``θ = Σ wᵢθᵢ / Σ wᵢ`` (or ``Σ wᵢθᵢ`` when not normalising).

    Args:
        x: ``[B, N, *S]`` float32, N parents for each of B tensors.
        weight: ``[B, N]`` float32 weights.
        normalize: divide by ``Σ wᵢ`` (skipped where ``|Σ wᵢ| < 1e-8``).

    Returns:
        ``[B, *S]`` float32. Source: model soups, Wortsman et al., arXiv 2203.05482.
    """
    w = weight.reshape(weight.shape + (1,) * (x.dim() - 2))
    out = (x * w).sum(1)
    if normalize:
        s = w.sum(1)
        out = out / torch.where(s.abs() < _EPS, torch.ones_like(s), s)
    return out


def passthrough(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Copy the single parent's tensor, optionally scaled: ``θ = s·θ₁``.

    Args:
        x: ``[B, 1, *S]`` float32; scale: ``[B]`` float32.

    Returns:
        ``[B, *S]`` float32.
    """
    return x[:, 0] * scale.reshape((-1,) + (1,) * (x.dim() - 2))
