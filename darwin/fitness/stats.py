"""Paired comparison of two models over documents: the mean difference and its bootstrap interval."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, n_boot: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """``Δ = mean(a − b)`` over paired documents and its percentile bootstrap CI.

    The documents are resampled with replacement ``n_boot`` times (a NumPy generator seeded with
    ``seed``: the same inputs give the same interval); the interval is the ``(1 − level)/2`` and
    ``(1 + level)/2`` quantiles of the resampled means (Efron & Tibshirani 1993, percentile
    interval; paired over documents as in Koehn 2004, "Statistical significance tests for machine
    translation evaluation").

    Args:
        a, b: scores of two models on the same documents, in the same order (higher is better).
        n_boot: bootstrap resamples.
        seed: resampling seed.
        level: coverage of the interval.

    Returns:
        ``(delta, lo, hi)``.

    Raises:
        ValueError: different lengths, no documents, or ``level`` outside (0, 1).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired scores must be two equal-length non-empty lists, got {x.shape} and {y.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = x - y
    rng = np.random.default_rng(seed)
    block = max(1, 2_000_000 // d.size)  # resample in blocks: memory stays ≈ 16 MB for any document count
    means = np.concatenate([d[rng.integers(0, d.size, size=(min(block, n_boot - i), d.size))].mean(axis=1)
                            for i in range(0, n_boot, block)])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)
