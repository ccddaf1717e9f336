"""Helpers shared by several test modules (import as ``from helpers import ...``; not a test module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FITNESS_FILE = Path(__file__).parent / "data" / "fitness_fns.py"


def evolve_cfg(demo: dict[str, Path], fitness: list[dict[str, Any]], population: int = 12, generations: int = 50,
               mri: bool = False, **extra: Any) -> dict[str, Any]:
    """A darwin14 ``parents.yaml`` dict over the demo parents with ``fitness`` and the given budget."""
    c: dict[str, Any] = {"parents": [str(demo["parent_a"]), str(demo["parent_b"])], "genome": "darwin14",
                         "mri": {"enabled": mri}, "fitness": fitness,
                         "search": {"population": population, "generations": generations, "sigma0": 0.5, "seed": 0},
                         "fitness_dtype": "float32",
                         "baselines": {"enabled": False}}  # tuned grids have their own tests (test_evolve)
    c.update(extra)
    return c
