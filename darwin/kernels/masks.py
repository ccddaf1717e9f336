"""Counter-based mask randomness: the same DARE/DELLA mask on every device, in any order, with no generator.

Each element of a random mask gets a *level* ``u ∈ {0, …, 4095}`` that is a pure function of
(tensor seed, element index): a 32-bit integer hash computed with torch integer ops on the kernel's
device (no CPU generator, no host→device copy). An element is kept with density ρ iff
``u < q(ρ)`` with ``q(ρ) = round(ρ · 4096)``, so the realised keep probability is ``q/4096``
(ρ is quantised to 1/4096: ρ ≥ 1 keeps every element, ρ ≤ 0 none, exactly). The mask of a tensor
therefore does not depend on the device, the batch it is merged in, the tile size or the order of
tensors; and the levels, being genome-independent, are computed once per evolve run and reused by
every candidate (whatever its density).

This is the ``mask_rng: counter`` convention (recipes record it). The previous convention
(``mask_rng: cpu_generator``: ``torch.rand`` from a CPU ``torch.Generator`` seeded per tensor and
parent, :func:`darwin.kernels.sparsify.random_drop`) is kept so that recipes written with it
replay bit for bit.

Hash: two rounds of a 32-bit multiply–xorshift finaliser in the style of MurmurHash3's ``fmix32``
(Appleby) and Wellons' ``lowbias32``, keyed with the two 32-bit halves of the tensor seed. The
multipliers are odd and below 2³¹, so every product of a 32-bit value stays below 2⁶³: the int64
arithmetic never overflows and is exact on every backend.
"""

from __future__ import annotations

import torch

#: number of mask levels (12 bits): densities are quantised to 1/MASK_LEVELS
MASK_LEVELS = 4096
_SHIFT = 32 - 12
_M32 = 0xFFFFFFFF
_C1 = 0x7FEB352D  # lowbias32's first multiplier (< 2³¹)
_C2 = 0x5BD1E995  # MurmurHash2's multiplier (< 2³¹)
#: recipe value of this convention, and of the legacy one
COUNTER, CPU_GENERATOR = "counter", "cpu_generator"
MASK_RNGS = (COUNTER, CPU_GENERATOR)


def _fmix(x: torch.Tensor) -> torch.Tensor:
    """In-place 32-bit finaliser on an int64 tensor holding values in [0, 2³²)."""
    x.bitwise_xor_(x >> 16).mul_(_C1).bitwise_and_(_M32)
    x.bitwise_xor_(x >> 15).mul_(_C2).bitwise_and_(_M32)
    return x.bitwise_xor_(x >> 16)


def mask_levels(seed: int, start: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Mask levels of elements ``start … start + count − 1`` of the tensor whose seed is ``seed``.

    Args:
        seed: the (tensor, parent) seed, an integer in ``[0, 2⁶³)`` (:func:`darwin.kernels.seeds.tensor_seed`).
        start: flat index of the first element (row-major over the tensor).
        count: number of elements.
        device: where the levels are computed.

    Returns:
        ``[count]`` int16 in ``[0, MASK_LEVELS)``; equal on every device for equal arguments.
    """
    k1, k2 = seed & _M32, (seed >> 32) & _M32
    idx = torch.arange(start, start + count, dtype=torch.int64, device=device)
    hi = idx >> 32  # zero below 4 Gi elements
    x = _fmix(idx.bitwise_and_(_M32).bitwise_xor_(k1))
    x = _fmix(x.bitwise_xor_(hi.mul_(_C1).bitwise_and_(_M32)).bitwise_xor_(k2))
    return (x >> _SHIFT).to(torch.int16)


def keep_level(density: float) -> int:
    """``q(ρ) = round(ρ · MASK_LEVELS)`` clamped to ``[0, MASK_LEVELS]``: keep an element iff its level < q."""
    return min(MASK_LEVELS, max(0, round(float(density) * MASK_LEVELS)))


def keep_probability(density: float) -> float:
    """The realised keep probability ``q(ρ) / MASK_LEVELS`` of :func:`keep_level`."""
    return keep_level(density) / MASK_LEVELS
