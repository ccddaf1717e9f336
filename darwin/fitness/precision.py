"""The dtype candidates are scored in: bfloat16 where the hardware runs it natively, float32 otherwise.

A SmolLM2-135M forward of 2 × 1024 tokens on an AVX-512-BF16 CPU takes about half the time in
bfloat16 weights as in float32 (benchmarks/RESULTS.md, with the bf16 − fp32 fitness difference on
the demo texts). ``auto`` picks bfloat16 on CUDA devices that support it and on CPUs with
AVX-512-BF16 or AMX-BF16, float32 elsewhere (bfloat16 matmuls are emulated and slow there).
"""

from __future__ import annotations

from pathlib import Path

import torch

from darwin.errors import DarwinError

FITNESS_DTYPES = ("auto", "float32", "bfloat16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (AVX-512-BF16 or AMX-BF16)."""
    probe = getattr(getattr(torch._C, "_cpu", None), "_is_avx512_bf16_supported", None)
    if callable(probe) and probe():
        return True
    amx = getattr(getattr(torch._C, "_cpu", None), "_is_amx_tile_supported", None)
    if callable(amx) and amx():
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_fitness_dtype(value: str, device: torch.device) -> torch.dtype:
    """``auto`` / ``float32`` / ``bfloat16`` → the dtype of the resident model on ``device``.

    Raises:
        DarwinError: another value.
    """
    if value not in FITNESS_DTYPES:
        raise DarwinError(f"fitness_dtype must be one of {', '.join(FITNESS_DTYPES)}, got {value!r}")
    if value != "auto":
        return getattr(torch, value)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32
