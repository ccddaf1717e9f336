"""MRI outputs: ``mri.json``, a rich table, and the ``mri.png`` heatmap.

``mri.json`` schema (version 1)::

    {"version": 1,
     "models": {"A": Scan, "B": Scan},          # B only with --against
     "r_mri": {tensor: float} | null,          # fraction from B per tensor (pair only)
     "weights": {"static": 0.4, "probe": 0.6}}

    Scan = {"model": str, "num_layers": int,
            "tensors": {name: {"layer": int|null, "component": str,
                               "entropy": bits, "std": float, "l2": float, "v5": float}},
            "probe": {"bi": {family: [per-layer float]}, "angular": {family: [...]}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from darwin.diagnosis.scan import Scan
from darwin.io.figures import agg_figure, save_png


def mri_document(scans: dict[str, Scan], r_mri: dict[str, float] | None, w_static: float, w_probe: float
                 ) -> dict[str, Any]:
    """The ``mri.json`` content."""
    return {"version": 1, "models": {k: s.to_dict() for k, s in scans.items()}, "r_mri": r_mri,
            "weights": {"static": w_static, "probe": w_probe}}


def write_json(doc: dict[str, Any], path: Path) -> Path:
    """Write ``mri.json``."""
    path.write_text(json.dumps(doc, indent=1))
    return path


def layer_table(scans: dict[str, Scan]) -> Table:
    """Per layer: overall Block Influence and angular distance per model, plus the mean V5 score."""
    t = Table(title="MRI per layer", show_edge=False)
    t.add_column("layer", justify="right")
    for label in scans:
        t.add_column(f"{label} BI", justify="right")
        t.add_column(f"{label} angular", justify="right")
        t.add_column(f"{label} mean V5", justify="right")
    n = max(s.num_layers for s in scans.values())
    for i in range(n):
        row = [str(i)]
        for s in scans.values():
            bi = s.probe.get("bi", {}).get("overall")
            ang = s.probe.get("angular", {}).get("overall")
            v5 = [v["v5"] for v in s.tensors.values() if v["layer"] == i]
            row += [f"{bi[i]:.4f}" if bi else "-", f"{ang[i]:.4f}" if ang else "-",
                    f"{sum(v5) / len(v5):.3f}" if v5 else "-"]
        t.add_row(*row)
    return t


def bi_norm(m: Any) -> Any:
    """The log colour scale of a Block Influence matrix ``m`` (any shape, float): from its smallest
    positive value (at least 1e-4 of its largest) to its largest; a ``matplotlib`` ``LogNorm``."""
    import numpy as np
    from matplotlib.colors import LogNorm

    m = np.asarray(m, dtype=float)
    pos = m[np.isfinite(m) & (m > 0)]
    top = float(pos.max()) if pos.size else 1.0
    floor = max(float(pos.min()) if pos.size else 0.0, top * 1e-4)
    if floor >= top:  # a single value: a decade below it, so the scale has a width
        floor = top / 10
    return LogNorm(vmin=floor, vmax=top)


def heatmap(scans: dict[str, Scan], path: Path) -> Path | None:
    """``mri.png``: layers × probe families of Block Influence, one panel per model (+ B − A).

    Colours are on a log scale (the difference panel: symmetric log, linear within 1 % of its
    largest magnitude), with matching colour bars: layer 0's Block Influence (≈ 1) is often
    ten to fifty times that of the middle layers, which one linear scale would paint as one colour.
    """
    import numpy as np
    from matplotlib.colors import SymLogNorm

    with_probe = {k: s for k, s in scans.items() if s.probe}
    if not with_probe:
        return None
    panels = list(with_probe.items())
    mats = {}
    for k, s in panels:
        fams = [f for f in s.probe["bi"] if f != "overall"] + ["overall"]
        mats[k] = (fams, np.array([s.probe["bi"][f] for f in fams]))
    extra = len(panels) == 2
    fig = agg_figure(figsize=(4.5 * (len(panels) + extra), 3.2 + 0.12 * max(s.num_layers for _, s in panels)))
    axes = fig.subplots(1, len(panels) + extra, squeeze=False)
    for ax, (k, s) in zip(axes[0], panels):
        fams, m = mats[k]
        norm = bi_norm(m)
        im = ax.imshow(np.clip(m, norm.vmin, None).T, aspect="auto", cmap="viridis", norm=norm)
        ax.set_title(f"{k}: Block Influence (log scale)\n{Path(s.model).name}", fontsize=9)
        ax.set_xticks(range(len(fams)), fams, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("layer")
        ax.yaxis.get_major_locator().set_params(integer=True)
        fig.colorbar(im, ax=ax, fraction=0.046)
    if extra:
        (ka, (fams, ma)), (kb, (_, mb)) = list(mats.items())
        d = (mb - ma).T
        lim = float(np.abs(d).max()) or 1.0
        ax = axes[0][-1]
        im = ax.imshow(d, aspect="auto", cmap="coolwarm", norm=SymLogNorm(linthresh=lim / 100, vmin=-lim, vmax=lim))
        ax.set_title(f"{kb} − {ka} (symmetric log scale)", fontsize=9)
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_xticks(range(len(fams)), fams, rotation=45, ha="right", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return save_png(fig, path)
