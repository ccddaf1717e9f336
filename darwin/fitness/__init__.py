"""Fitness functions: perplexity, lm-eval tasks, user callables, and their weighted combination."""

from darwin.fitness.base import CombinedFitness, Component, Fitness, Score
from darwin.fitness.perplexity import PerplexityFitness

__all__ = ["CombinedFitness", "Component", "Fitness", "Score", "PerplexityFitness"]
