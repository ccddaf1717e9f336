"""Per-layer width allocation under an exact budget: a sensitivity table solved by dynamic
programming, and an EvoPress-style level-switch search.

Widths are *levels*: layer ``l`` at level ``k`` keeps ``k`` units (e.g. blocks of 64 FFN neurons),
and every unit costs the same number of parameters in every layer, so a budget is a total number
of units. Both solvers return one level per layer whose sum is at most (DP) or exactly (search,
from an exact start) the budget.

* :func:`dp_allocation`: minimise ``Σ_l cost[l, k_l]`` subject to ``Σ_l k_l ≤ budget`` exactly, by
  dynamic programming over layers and used units (``O(L·B·K)``). With ``cost[l, k]`` the loss of
  cutting layer ``l`` alone to level ``k``, this is the classic additive sensitivity baseline: it
  ignores how cuts in different layers interact.
* :func:`level_switch_search`: (1 + λ) evolution on the true, non-additive fitness (e.g.
  KL(parent ‖ child) on calibration tokens). A mutation moves one unit from one layer to
  another (a "level switch"), which keeps the total exactly; the best of λ offspring replaces the
  parent when it is better. Source: EvoPress, Sieberling et al., arXiv 2410.14649 (level-switch
  mutation; their multi-step selection on growing token counts is left out).

Pure functions of their inputs (the search's randomness is a seeded ``random.Random``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


def dp_allocation(cost: torch.Tensor, budget: int, least: int = 0) -> list[int]:
    """Levels ``k_l`` (one per layer) minimising ``Σ_l cost[l, k_l]`` with ``Σ_l k_l ≤ budget``.

    Args:
        cost: ``[L, K+1]`` float, ``cost[l, k]`` the loss with layer ``l`` at level ``k`` (units
            kept, 0..K); ``inf`` marks a level that is not allowed.
        budget: total units (``0 ≤ budget``).
        least: smallest level any layer may take.

    Returns:
        L levels; ties go to the lowest levels in layer order (deterministic).

    Raises:
        ValueError: ``cost`` is not 2-D, or no allocation within the budget has a finite cost.
    """
    if cost.dim() != 2:
        raise ValueError(f"cost must be [layers, levels], got shape {tuple(cost.shape)}")
    L, K1 = cost.shape
    c = cost.to(torch.float64).clone()
    c[:, :least] = torch.inf
    B = min(int(budget), L * (K1 - 1))
    best = torch.full((B + 1,), torch.inf, dtype=torch.float64)  # best[b]: least cost of the layers so far using b units
    best[0] = 0.0
    choice = torch.zeros((L, B + 1), dtype=torch.long)
    for layer in range(L):
        new = torch.full_like(best, torch.inf)
        for k in range(K1):
            if k > B or not torch.isfinite(c[layer, k]):
                continue
            pad = torch.full((k,), math.inf, dtype=torch.float64)
            cand = torch.cat([pad, best[:B + 1 - k] + c[layer, k]])  # cand[b] = best[b − k] + cost[layer, k]
            better = cand < new
            new = torch.where(better, cand, new)
            choice[layer] = torch.where(better, torch.tensor(k), choice[layer])
        best = new
    if not torch.isfinite(best).any():
        raise ValueError(f"no allocation of {L} layers fits {budget} units with a finite cost")
    b = int(torch.argmin(best))
    levels = [0] * L
    for layer in reversed(range(L)):
        levels[layer] = int(choice[layer, b])
        b -= levels[layer]
    return levels


@dataclass
class SearchResult:
    """What :func:`level_switch_search` found.

    Attributes:
        levels: the best allocation; fitness: its fitness (lower is better).
        start_fitness: the start's fitness; evaluations: fitness calls made.
        trace: the best fitness after each generation.
    """

    levels: list[int]
    fitness: float
    start_fitness: float
    evaluations: int
    trace: list[float] = field(default_factory=list)


def level_switch_search(fitness: Callable[[list[int]], float], start: Sequence[int], most: int | Sequence[int], *,
                        least: int = 0, generations: int = 20, offspring: int = 8, max_switches: int = 3,
                        seed: int = 0, progress: Callable[[], None] | None = None) -> SearchResult:
    """(1 + λ) search over per-layer levels with budget-preserving level-switch mutations.

    Args:
        fitness: levels → loss (lower is better), e.g. KL(parent ‖ child) on calibration tokens.
        start: the first allocation (e.g. uniform widths, or the DP solution); its total is kept.
        most: the largest level (per layer, or one for all); least: the smallest level.
        generations: rounds of λ offspring; offspring: λ.
        max_switches: each offspring makes 1..max_switches unit moves (uniformly drawn).
        seed: the mutation generator's seed.
        progress: called after each fitness call.

    Returns:
        a :class:`SearchResult` (the start when nothing better was found).

    Raises:
        ValueError: ``start`` lies outside ``[least, most]``.
    """
    top = [most] * len(start) if isinstance(most, int) else list(most)
    if any(not least <= s <= m for s, m in zip(start, top)) or len(top) != len(start):
        raise ValueError(f"start {list(start)} is outside the levels [{least}, {most}]")
    rng = random.Random(seed)

    def score(levels: list[int]) -> float:
        f = float(fitness(levels))
        if progress:
            progress()
        return f

    parent = list(start)
    parent_f = start_f = score(parent)
    trace, calls = [], 1
    for _ in range(generations):
        best_child, best_f = None, parent_f
        for _ in range(offspring):
            child = _mutate(parent, top, least, rng.randint(1, max_switches), rng)
            if child == parent:
                continue
            f = score(child)
            calls += 1
            if f < best_f:
                best_child, best_f = child, f
        if best_child is not None:
            parent, parent_f = best_child, best_f
        trace.append(parent_f)
    return SearchResult(parent, parent_f, start_f, calls, trace)


def _mutate(levels: list[int], top: list[int], least: int, switches: int, rng: random.Random) -> list[int]:
    """``levels`` with ``switches`` unit moves from a layer above ``least`` to one below its top."""
    out = list(levels)
    for _ in range(switches):
        up = [i for i, (v, m) in enumerate(zip(out, top)) if v < m]
        down = [i for i, v in enumerate(out) if v > least]
        if not up or not down:
            break
        i = rng.choice(up)
        j = rng.choice([d for d in down if d != i] or [i])
        if i != j:
            out[i] += 1
            out[j] -= 1
    return out
