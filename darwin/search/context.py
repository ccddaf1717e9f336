"""The plain data one search run shares between its steps (set-up, loop, outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from darwin.genome.decode import vector_to_values
from darwin.genome.registry import Breeder
from darwin.genome.spec import Gene, GenomeSpec
from darwin.io.checkpoint import Checkpoint
from darwin.plan.plan import MergePlan
from darwin.search.config import ParentsConfig


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """One run of ``darwin evolve``, once everything has been checked.

    Attributes:
        cfg: the validated ``parents.yaml``.
        out: the run folder (absolute).
        spec: the genome.
        breeder: the parents prepared for the genome's decoder.
        checkpoints: reference → opened checkpoint (parents and base).
        dtype: child storage dtype.
        fitness_dtype: dtype of the resident model candidates are scored in.
        r_mri: tensor → MRI ratio for ``"tensor"``-prior decoders with MRI on, else None.
    """

    cfg: ParentsConfig
    out: Path
    spec: GenomeSpec
    breeder: Breeder
    checkpoints: dict[str, Checkpoint]
    dtype: torch.dtype
    fitness_dtype: torch.dtype = torch.float32
    r_mri: dict[str, float] | None = None

    @property
    def seed(self) -> int:
        """The run seed (CMA-ES and the merge masks)."""
        return self.cfg.search.seed

    @property
    def genes(self) -> list[Gene]:
        """The expanded genome (per-layer genes for the breeder's depth)."""
        return self.spec.expand(self.breeder.num_layers)

    def plan_of(self, values: dict[str, float]) -> MergePlan:
        """Gene values → the child's merge plan."""
        return self.breeder.decode(self.spec, values, r_mri=self.r_mri, seed=self.seed)

    def decode(self, x: list[float]) -> tuple[dict[str, float], MergePlan]:
        """CMA-ES coordinates → (gene values, plan)."""
        values = vector_to_values(self.spec, x, self.breeder.num_layers)
        return values, self.plan_of(values)
