"""The plain data one search run shares between its steps (set-up, loop, outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

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
        notes: what the data-role checks said (hold-out, overlap), for the report.
    """

    cfg: ParentsConfig
    out: Path
    spec: GenomeSpec
    breeder: Breeder
    checkpoints: dict[str, Checkpoint]
    dtype: torch.dtype
    fitness_dtype: torch.dtype = torch.float32
    r_mri: dict[str, float] | None = None
    notes: tuple[str, ...] = ()

    @property
    def seed(self) -> int:
        """The run seed (CMA-ES and the merge masks)."""
        return self.cfg.search.seed

    @property
    def genes(self) -> list[Gene]:
        """The expanded genome (per-layer genes for the breeder's depth)."""
        return self.spec.expand(self.breeder.num_layers)

    @property
    def free_genes(self) -> list[Gene]:
        """The genes CMA-ES searches: :attr:`genes` without ``search.fixed`` ones (its dimension)."""
        return [g for g in self.genes if g.name not in self.cfg.search.fixed]

    def values_of(self, x: list[float]) -> dict[str, float]:
        """CMA-ES coordinates (one per free gene) → every gene's value, fixed ones included, in genome order.

        Raises:
            ValueError: ``x`` has the wrong length.
        """
        free = self.free_genes
        if len(x) != len(free):
            raise ValueError(f"genome {self.spec.name!r} searches {len(free)} genes, got a vector of {len(x)}")
        searched = {g.name: g.decode(float(xi)) for g, xi in zip(free, x)}
        return {g.name: searched[g.name] if g.name in searched else float(self.cfg.search.fixed[g.name])
                for g in self.genes}

    def vector_of(self, values: dict[str, float]) -> list[float]:
        """Gene values → CMA-ES coordinates of the free genes (inverse of :meth:`values_of`)."""
        return [g.encode(values[g.name]) for g in self.free_genes]

    def plan_of(self, values: dict[str, float]) -> MergePlan:
        """Gene values → the child's merge plan."""
        return self.breeder.decode(self.spec, values, r_mri=self.r_mri, seed=self.seed)

    def decode(self, x: list[float]) -> tuple[dict[str, float], MergePlan]:
        """CMA-ES coordinates → (gene values, plan)."""
        values = self.values_of(x)
        return values, self.plan_of(values)
