"""Genomes: gene definitions (``genomes/*.yaml``) and their decoding into merge plans."""

from darwin.genome.decode import PairLayout, decode, pair_layout, start_vector, vector_to_values
from darwin.genome.spec import Gene, GenomeSpec, load_genome

__all__ = ["Gene", "GenomeSpec", "load_genome", "PairLayout", "pair_layout", "decode", "start_vector",
           "vector_to_values"]
