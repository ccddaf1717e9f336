"""``darwin mri``: scan one model (or a pair) and write ``mri.json`` and ``mri.png``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from darwin.diagnosis.fuse import pair_ratios
from darwin.diagnosis.probe import FAMILIES
from darwin.diagnosis.report import heatmap, mri_document, write_json
from darwin.diagnosis.scan import Scan, scan_model
from darwin.io.writer import atomic_output_dir, check_output_dir, refuse_input_overlap


def pair_r_mri(a: Scan, b: Scan, w_static: float = 0.4, w_probe: float = 0.6) -> dict[str, float]:
    """r_MRI per tensor for parents A and B (see :mod:`darwin.diagnosis.fuse`)."""
    pa = a.probe.get("bi", {}).get("overall")
    pb = b.probe.get("bi", {}).get("overall")
    return pair_ratios(a.static_scores(), b.static_scores(), a.layer_of(), pa, pb, w_static, w_probe)


def run_mri(model: str, out_dir: str | os.PathLike | None, *, against: str | None = None,
            probes: bool = True, families: tuple[str, ...] = FAMILIES, w_static: float = 0.4,
            w_probe: float = 0.6, device: str = "cpu", force: bool = False, progress: bool = False
            ) -> tuple[dict[str, Any], dict[str, Scan]]:
    """Scan ``model`` (and ``against``), write ``mri.json`` + ``mri.png`` into ``out_dir``.

    Returns:
        (the mri.json document, the scans by label "A"/"B").

    Raises:
        CheckpointError: a model folder is missing or unreadable; OutputExistsError.
    """
    if out_dir is not None:  # before the scan: an output that cannot be written fails at once
        check_output_dir(out_dir, force=force)
        refuse_input_overlap(out_dir, {"the scanned model": model, **({"the --against model": against} if against else {})})
    scans = {"A": scan_model(model, probes=probes, families=families, device=device, progress=progress)}
    if against:
        scans["B"] = scan_model(against, probes=probes, families=families, device=device, progress=progress)
    r = pair_r_mri(scans["A"], scans["B"], w_static, w_probe) if against else None
    doc = mri_document(scans, r, w_static, w_probe)
    if out_dir is not None:
        with atomic_output_dir(out_dir, force=force) as tmp:
            write_json(doc, Path(tmp) / "mri.json")
            heatmap(scans, Path(tmp) / "mri.png")
    return doc, scans
