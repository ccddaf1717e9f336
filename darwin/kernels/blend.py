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

from collections.abc import Sequence

import torch

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
