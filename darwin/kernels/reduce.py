"""Tiling helpers of the streamed kernels, and sums whose rounding does not depend on the thread count.

A plain ``tensor.sum()`` over a long vector splits the work between intra-op threads, so its
float rounding changes with the thread count (an evolve run in-process with 2 threads vs a Ray
actor with 1 would score the same genome differently in the last bits). Here the vector is cut
into rows of a fixed length, each row is summed along the inner dimension (one thread per row,
fixed order), and the row sums, fewer than the parallel grain, are summed in one thread.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

_ROW = 1024


def tiles(n: int, tile: int) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` bounds of consecutive tiles of at most ``tile`` elements covering ``0 … n − 1``."""
    return ((i, min(i + tile, n)) for i in range(0, n, tile))


def fixed_order_sum(x: torch.Tensor) -> float:
    """Float64 sum of a 1-D tensor (any float dtype, any device), identical for any thread count.

    Args:
        x: ``[n]`` tensor; at most ``1024 · 32768`` elements per call (callers sum tiles of 2²⁰).

    Returns:
        the sum as a Python float (float64 accumulation).
    """
    x = x.reshape(-1).double()
    m = x.numel() // _ROW * _ROW
    rows = x[:m].view(-1, _ROW).sum(1) if m else x.new_zeros(0)
    return float(rows.sum()) + float(x[m:].sum())


class Workspace:
    """Reusable float32 tile temporaries of a streamed kernel, kept across calls.

    Allocating a few tiles per tensor and freeing them again costs a page fault per 4 KiB on a CPU
    (hundreds of thousands per 135M candidate); an evolve run keeps one workspace for all its
    candidates (in its :class:`darwin.plan.execute.InvariantCache`).
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._ones: dict[tuple[str, int], torch.Tensor] = {}

    def tiles(self, count: int, width: int, device: torch.device) -> list[torch.Tensor]:
        """``count`` float32 tensors of ``width`` elements on ``device`` (views of kept buffers)."""
        key = (str(device), width)
        bufs = self._bufs.setdefault(key, [])
        while len(bufs) < count:
            bufs.append(torch.empty(width, dtype=torch.float32, device=device))
        return bufs[:count]

    def ones(self, width: int, device: torch.device) -> torch.Tensor:
        """A float32 tile of ones."""
        key = (str(device), width)
        if key not in self._ones:
            self._ones[key] = torch.ones(width, dtype=torch.float32, device=device)
        return self._ones[key]

    def nbytes(self) -> int:
        """Bytes held."""
        return sum(t.numel() * 4 for b in self._bufs.values() for t in b) + sum(t.numel() * 4 for t in self._ones.values())
