"""Per-layer FFN widths of a llama-family model chosen by KL(parent ‖ child), in memory.

:class:`FfnAllocator` holds a loaded model (float32), its dense ``down_proj`` input statistics
(:func:`darwin.diagnosis.calibrate.collect_stats`) and the parent's log-probabilities on fitness
windows. An allocation gives each layer its own width ``uniform + (level − span)·step``; the layer's
neurons are ranked by a score and ``down_proj`` re-fitted by least squares
(:func:`darwin.plan.width.prune_ffn`), and the pruned weights are swapped into the model's
``nn.Linear`` modules (eager transformers follows the weights' shapes). Two solvers of
:mod:`darwin.plan.allocate` use it: the sensitivity table (each layer cut alone, the others dense)
solved by dynamic programming, and the level-switch search on the true KL. Every allocation has
exactly the uniform allocation's total width, so all compare at the same parameter count.

Why this is a measurement and not a shipped child: a stock transformers config has one
``intermediate_size`` for every layer. The only native architecture with per-layer FFN widths is
Gemma 3n (``intermediate_size`` may be a list), whose layers also carry AltUp, LAuReL and per-layer
embeddings, so a llama child cannot be written in it; OpenELM and DeciLM / Nemotron-NAS take
per-layer widths only through ``trust_remote_code``, which darwin keeps off. So ``darwin prune`` and
``darwin golf`` ship uniform widths, and this module measures what per-layer widths would buy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from darwin.plan.width import InputStats, keep_top, neuron_scores, prune_ffn


@dataclass(frozen=True)
class Levels:
    """The width grid: layer width = ``uniform + (level − span)·step``, levels ``0..2·span``."""

    uniform: int
    step: int
    span: int

    def width(self, level: int) -> int:
        """Neurons kept at ``level``."""
        return self.uniform + (level - self.span) * self.step

    @property
    def top(self) -> int:
        """The largest level."""
        return 2 * self.span


class FfnAllocator:
    """Evaluate per-layer FFN widths of ``model`` by KL(parent ‖ child) on ``windows`` (module doc).

    Args:
        model: a loaded llama-family causal LM (float32, eval); modified in place by :meth:`apply`
            and put back by :meth:`restore`.
        stats: one dense ``down_proj`` :class:`InputStats` per layer.
        windows: ``[1, T]`` fitness token windows (calibration text, not a report's held-out text).
        levels: the width grid; score, ridge: as :class:`darwin.search.prune.PruneRequest`.

    Raises:
        ValueError: the grid reaches below one neuron or above the model's width.
    """

    def __init__(self, model: Any, stats: list[InputStats], windows: list[torch.Tensor], levels: Levels, *,
                 score: str = "second_moment", ridge: float = 1e-2) -> None:
        self.model, self.stats, self.windows, self.levels = model, stats, windows, levels
        self.mlps = [layer.mlp for layer in model.model.layers]
        self.dense = [(m.gate_proj.weight.data, m.up_proj.weight.data, m.down_proj.weight.data) for m in self.mlps]
        width = self.dense[0][0].shape[0]
        if levels.width(0) < 1 or levels.width(levels.top) > width:
            raise ValueError(f"width grid {levels.width(0)}..{levels.width(levels.top)} is outside 1..{width}")
        self.scores = [neuron_scores(score, s, d, g, u, ridge) for s, (g, u, d) in zip(stats, self.dense)]
        self.ridge = ridge
        self.current: list[int | None] = [None] * len(self.mlps)  # None: dense
        with torch.no_grad():
            self.reference = [model(w).logits.float().log_softmax(-1) for w in windows]

    def _set(self, layer: int, level: int | None) -> None:
        if self.current[layer] == level:
            return
        g, u, d = self.dense[layer]
        if level is not None:
            keep = keep_top(self.scores[layer], self.levels.width(level))  # as darwin prune ranks them
            g, u, d = (w.float() for w in prune_ffn(g, u, d, keep, self.stats[layer], ridge=self.ridge))
        m = self.mlps[layer]
        m.gate_proj.weight.data, m.up_proj.weight.data, m.down_proj.weight.data = g, u, d
        self.current[layer] = level

    def apply(self, levels: Sequence[int | None]) -> None:
        """Cut every layer to its level (None: dense); only changed layers are re-fitted."""
        for i, level in enumerate(levels):
            self._set(i, level)

    def restore(self) -> None:
        """Put the dense weights back."""
        self.apply([None] * len(self.mlps))

    @torch.no_grad()
    def kl(self, levels: Sequence[int | None]) -> float:
        """Mean KL(parent ‖ child) per token, nats, over the fitness windows, with ``levels`` applied."""
        self.apply(levels)
        total = count = 0.0
        for w, ref in zip(self.windows, self.reference):
            logp = self.model(w).logits.float().log_softmax(-1)
            total += float((ref.exp() * (ref - logp)).sum())
            count += ref.shape[0] * ref.shape[1]
        return total / count

    def sensitivity(self, progress: Callable[[], None] | None = None) -> torch.Tensor:
        """``[L, top+1]``: the KL with each layer alone at each level, every other layer dense."""
        L = len(self.mlps)
        table = torch.zeros(L, self.levels.top + 1, dtype=torch.float64)
        for i in range(L):
            for k in range(self.levels.top + 1):
                table[i, k] = self.kl([k if j == i else None for j in range(L)])
                if progress:
                    progress()
        self.restore()
        return table

    def widths(self, levels: Sequence[int]) -> list[int]:
        """Neurons per layer of an allocation."""
        return [self.levels.width(k) for k in levels]
