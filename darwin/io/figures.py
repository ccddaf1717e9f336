"""Figures drawn without touching the process-wide matplotlib state.

``matplotlib.use("Agg")`` or ``pyplot`` would switch a notebook user's backend and keep figures in
pyplot's global registry; a :class:`matplotlib.figure.Figure` with its own Agg canvas does neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def agg_figure(**kwargs: Any) -> Any:
    """A ``matplotlib.figure.Figure`` with its own Agg canvas (``Figure(**kwargs)``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay ``fig`` out tightly and write it to ``path`` as PNG; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path
