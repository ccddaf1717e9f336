"""Genome definitions: genes with bounds and start values, read from YAML.

CMA-ES searches unbounded reals ``x``; a gene's value is ``low + (high − low)·σ(x)`` with
``σ(x) = 1/(1 + e^{−x})``, so every candidate is inside its bounds without clipping, and the start
value maps back through the logit. Built-in genomes are package data in ``darwin/genome/builtin/``
(``darwin14``, ``zones``, ``layerwise``, ``my-genome``, ``crossover``, ``ffn-transplant``, ``golf``; see
:func:`builtin_genomes`); any YAML path of the same shape works.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from darwin.errors import RecipeError, describe_validation_error
from darwin.io.resources import package_dir
from darwin.io.yamlfile import load_yaml_mapping

_EPS = 1e-4


class Gene(BaseModel):
    """A gene: name, bounds and start value (``low <= start <= high``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    low: float = 0.0
    high: float = 1.0
    start: float = 0.5

    @model_validator(mode="after")
    def _bounds(self):
        if not all(math.isfinite(v) for v in (self.low, self.high, self.start)):
            raise ValueError(f"gene {self.name!r}: low, high and start must be finite numbers")
        if not self.low < self.high:
            raise ValueError(f"gene {self.name!r}: low must be < high")
        if not self.low <= self.start <= self.high:
            raise ValueError(f"gene {self.name!r}: start {self.start} outside [{self.low}, {self.high}]")
        return self

    def decode(self, x: float) -> float:
        """Unbounded search coordinate → gene value in ``[low, high]``."""
        return self.low + (self.high - self.low) / (1.0 + math.exp(-max(min(x, 60.0), -60.0)))

    def encode(self, value: float) -> float:
        """Gene value → search coordinate (inverse of :meth:`decode`, clamped inside the bounds)."""
        u = (value - self.low) / (self.high - self.low)
        u = min(max(u, _EPS), 1 - _EPS)
        return math.log(u / (1 - u))


class DecoderOptions(BaseModel):
    """Decoder settings shared by the built-in decoders.

    Attributes:
        transplant_low: ratio below which a tensor is copied whole from parent A.
        transplant_high: ratio above which a tensor is copied whole from parent B.
        rescale: DARE rescale convention (``l1``, ``paper``, ``none``).
        neutral_ratio: α used for norms and unmapped tensors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    transplant_low: float = 0.15
    transplant_high: float = 0.85
    rescale: str = "l1"
    neutral_ratio: float = 0.5

    @model_validator(mode="after")
    def _ranges(self):
        if not 0.0 <= self.transplant_low <= self.transplant_high <= 1.0:
            raise ValueError("options: need 0 <= transplant_low <= transplant_high <= 1")
        if not 0.0 <= self.neutral_ratio <= 1.0:
            raise ValueError("options: neutral_ratio must be in [0, 1]")
        if self.rescale not in ("l1", "paper", "none"):
            raise ValueError(f"options: rescale must be 'l1', 'paper' or 'none', got {self.rescale!r}")
        return self


class GenomeSpec(BaseModel):
    """A genome: named genes, optional per-layer genes, a decoder and its options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    decoder: str
    description: str = ""
    genes: list[Gene]
    per_layer_genes: list[Gene] = []
    options: DecoderOptions = DecoderOptions()
    source: Optional[str] = None

    @model_validator(mode="after")
    def _unique(self):
        names = [g.name for g in self.genes] + [g.name for g in self.per_layer_genes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate gene names {sorted(dup)}")
        return self

    def expand(self, num_layers: int) -> list[Gene]:
        """All genes for a model with ``num_layers`` layers (per-layer genes as ``layer_<i>_<name>``).

        Raises:
            RecipeError: a scalar gene has the name of an expanded per-layer gene.
        """
        out = list(self.genes)
        for i in range(num_layers):
            out += [g.model_copy(update={"name": f"layer_{i}_{g.name}"}) for g in self.per_layer_genes]
        names = [g.name for g in out]
        if len(set(names)) != len(names):
            clash = sorted({n for n in names if names.count(n) > 1})
            raise RecipeError(f"genome {self.name!r}: genes {clash} are defined twice (a scalar gene and a "
                              "per-layer gene expanded to the same name)")
        return out


def builtin_dir() -> Path:
    """The folder of the built-in genome YAMLs (package data, found with importlib.resources)."""
    return package_dir("darwin.genome", "builtin")


def builtin_genomes() -> list[str]:
    """Names of the built-in genomes, sorted."""
    return sorted(f.stem for f in builtin_dir().glob("*.yaml"))


def load_genome(name_or_path: str | os.PathLike) -> GenomeSpec:
    """Load a built-in genome by name (``darwin14``) or a genome YAML by path.

    Raises:
        RecipeError: unknown name, unreadable file, invalid content (naming the key), or a decoder
            that is neither registered nor importable as ``module:attribute``.
    """
    p = Path(name_or_path)
    if not p.exists():
        cand = builtin_dir() / f"{name_or_path}.yaml"
        if not cand.exists():
            known = builtin_genomes()
            raise RecipeError(f"genome {str(name_or_path)!r}: no such file or built-in genome (built-in: {known})")
        p = cand
    data = load_yaml_mapping(p, "genome")
    try:
        spec = GenomeSpec.model_validate({**data, "source": str(p)})
    except ValidationError as e:
        raise describe_validation_error(str(p), "genome", e) from None
    from darwin.genome.registry import get_decoder  # the registry loads the built-in decoders, which import this module

    try:
        get_decoder(spec.decoder)
    except RecipeError as e:
        raise RecipeError(f"{p}: {e}") from None
    return spec


def genome_ref(spec: GenomeSpec) -> str:
    """How to name ``spec`` in a saved recipe: its name if built in, else its file path."""
    if spec.source and Path(spec.source).resolve().parent == builtin_dir().resolve():
        return spec.name
    return spec.source or spec.name
