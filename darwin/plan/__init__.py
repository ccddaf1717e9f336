"""Merge plans: recipes and genomes decode into per-tensor tasks that the executor runs."""
