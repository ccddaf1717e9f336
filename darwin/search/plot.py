"""``fitness.png``: fitness per generation (best, mean, best so far) with baseline lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from darwin.io.figures import agg_figure, save_png


def plot_history(history: list[dict[str, Any]], baselines: dict[str, float | None], path: Path) -> Path:
    """Draw the fitness curve from ``history.jsonl`` records; returns ``path``."""
    gens, best, mean, so_far = [], [], [], []
    running = float("-inf")
    for rec in history:
        vals = [c["fitness"] for c in rec["candidates"] if c.get("fitness") is not None]
        if not vals:
            continue
        gens.append(rec["generation"])
        best.append(max(vals))
        mean.append(sum(vals) / len(vals))
        running = max(running, best[-1])
        so_far.append(running)
    fig = agg_figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    if gens:
        ax.plot(gens, mean, "o-", color="0.6", label="generation mean")
        ax.plot(gens, best, "o-", color="C0", label="generation best")
        ax.plot(gens, so_far, "-", color="C3", lw=2, label="best so far")
    for i, (name, v) in enumerate(baselines.items()):
        if v is not None:
            ax.axhline(v, ls="--", lw=1, color=f"C{i + 4}", label=name)
    ax.set_xlabel("generation")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("fitness (higher is better)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return save_png(fig, path)
