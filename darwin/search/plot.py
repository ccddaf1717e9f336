"""``fitness.png``: fitness per generation (best, mean, best so far) with baseline lines, and, when
the run has selection data, a second panel with the selection scores of each generation's top-k
candidates (best, best so far) against the baselines' selection scores: where the two panels part,
the search is fitting its own data."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from darwin.io.figures import agg_figure, save_png


def _curves(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    gens, best, mean, so_far = [], [], [], []
    running = float("-inf")
    for rec in history:
        vals = [c[key] for c in rec["candidates"] if c.get(key) is not None]
        if not vals:
            continue
        gens.append(rec["generation"])
        best.append(max(vals))
        mean.append(sum(vals) / len(vals))
        running = max(running, best[-1])
        so_far.append(running)
    return gens, best, mean, so_far


def _panel(ax, history: list[dict[str, Any]], key: str, baselines: dict[str, float | None], title: str) -> None:
    gens, best, mean, so_far = _curves(history, key)
    if gens:
        ax.plot(gens, mean, "o-", color="0.6", label="generation mean")
        ax.plot(gens, best, "o-", color="C0", label="generation best")
        ax.plot(gens, so_far, "-", color="C3", lw=2, label="best so far")
    for i, (name, v) in enumerate(baselines.items()):
        if v is not None:
            ax.axhline(v, ls="--", lw=1, color=f"C{i + 4}", label=name)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("generation")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("higher is better")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)


def plot_history(history: list[dict[str, Any]], baselines: dict[str, float | None], path: Path,
                 selection: dict[str, float | None] | None = None, labels: dict[str, str] | None = None) -> Path:
    """Draw the curves from ``history.jsonl`` records (``selection``: baseline → selection score,
    drawn in the second panel when candidates have selection scores; ``labels``: role → what its
    fitness measures, under each panel title); returns ``path``."""
    labels = labels or {}
    sub = lambda role: f"\n{textwrap.shorten(labels[role], 90)}" if role in labels else ""
    has_sel = any(c.get("selection") is not None for rec in history for c in rec["candidates"])
    fig = agg_figure(figsize=(12, 4) if has_sel else (6.5, 4))
    axes = fig.subplots(1, 2 if has_sel else 1, squeeze=False)[0]
    _panel(axes[0], history, "fitness", baselines, "search fitness (what CMA-ES optimises)" + sub("search"))
    if has_sel:
        _panel(axes[1], history, "selection", selection or {},
               "selection (top-k of each generation)" + sub("selection"))
    return save_png(fig, path)
