"""Static per-tensor statistics (MRI engine V5 score).

For a tensor T with n elements:

* ``entropy``: Shannon entropy in bits of the histogram of |T| over ``[0, max|T|]`` with
  ``bins`` equal bins (64 by default), counts normalised to probabilities;
* ``std``: population standard deviation of T;
* ``l2``: ‖T‖₂;
* ``v5 = 0.5·entropy + 0.3·std + 0.002·min(‖T‖₂, 100)`` (Darwin MRI engine V5, from the Darwin
  model cards, arXiv 2605.14386).
"""

from __future__ import annotations

import torch

BINS = 64


def tensor_stats(t: torch.Tensor, bins: int = BINS) -> dict[str, float]:
    """Static statistics of one tensor (any shape and floating dtype; computed in float32).

    Returns:
        ``{"entropy": bits, "std": float, "l2": float, "v5": float}``; a constant-zero tensor has
        entropy 0.
    """
    x = t.detach().reshape(-1).float()
    a = x.abs()
    top = float(a.max()) if a.numel() else 0.0
    if top > 0:
        hist = torch.histc(a, bins=bins, min=0.0, max=top)
        p = hist / hist.sum()
        p = p[p > 0]
        entropy = float(-(p * torch.log2(p)).sum())
    else:
        entropy = 0.0
    std = float(x.std(unbiased=False)) if x.numel() > 1 else 0.0
    l2 = float(torch.linalg.vector_norm(x))
    return {"entropy": entropy, "std": std, "l2": l2, "v5": v5_score(entropy, std, l2)}


def v5_score(entropy: float, std: float, l2: float) -> float:
    """``0.5·entropy + 0.3·std + 0.002·min(l2, 100)``."""
    return 0.5 * entropy + 0.3 * std + 0.002 * min(l2, 100.0)
