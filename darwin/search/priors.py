"""MRI priors of a search, computed once per run and cached in the run folder.

* ``"tensor"`` decoders get r_MRI per tensor (``OUT/mri.json``, ``OUT/mri.png``), fused with the
  genome through the trust gene τ: ``r = τ·r_MRI + (1 − τ)·r_genome``;
* ``"layer"`` decoders (golf) get parent A's per-layer Block Influence ``1 − cos(h_in, h_out)`` on
  the probe prompts (ShortGPT, arXiv 2403.03853), cached in ``OUT/layer_prior.json``.

Probe forward passes run on the search device (``device:`` of parents.yaml, resolved by
:func:`darwin.plan.execute.resolve_device`: ``cuda:1`` means that GPU, never a silent CPU fallback).
"""

from __future__ import annotations

import logging
from pathlib import Path

from darwin.genome.breeder import mri_prior
from darwin.genome.registry import Breeder
from darwin.genome.spec import GenomeSpec
from darwin.plan.execute import resolve_device
from darwin.search.config import ParentsConfig
from darwin.search.runfolder import cached_json

log = logging.getLogger("darwin.evolve")


def tensor_prior(cfg: ParentsConfig, out: Path, a: str, b: str) -> dict[str, float]:
    """r_MRI per tensor for parents ``a`` and ``b`` (fraction from B), cached in ``out/mri.json``."""
    from darwin.diagnosis.report import heatmap, mri_document
    from darwin.diagnosis.run import pair_r_mri
    from darwin.diagnosis.scan import scan_model

    def compute() -> dict:
        fams, dev = tuple(cfg.mri.probes), str(resolve_device(cfg.device))
        scans = {"A": scan_model(a, families=fams, device=dev), "B": scan_model(b, families=fams, device=dev)}
        r = pair_r_mri(scans["A"], scans["B"], cfg.mri.weights.static, cfg.mri.weights.probe)
        heatmap(scans, out / "mri.png")
        return mri_document(scans, r, cfg.mri.weights.static, cfg.mri.weights.probe)

    return cached_json(out / "mri.json", compute)["r_mri"]


def layer_prior(cfg: ParentsConfig, out: Path, ref: str) -> list[float]:
    """Per-layer Block Influence of ``ref`` on the probe prompts, cached in ``out/layer_prior.json``."""
    from darwin.diagnosis.scan import scan_model

    def compute() -> dict:
        scan = scan_model(ref, families=tuple(cfg.mri.probes), device=str(resolve_device(cfg.device)))
        return {"model": ref, "block_influence": list(scan.probe["bi"]["overall"]),
                "source": "MRI probe, Block Influence 1 − cos(h_in, h_out)"}

    return cached_json(out / "layer_prior.json", compute)["block_influence"]


def apply_priors(cfg: ParentsConfig, out: Path, spec: GenomeSpec, breeder: Breeder) -> dict[str, float] | None:
    """Compute the prior the genome's decoder declares; returns r_MRI (``"tensor"``) or None.

    A ``"layer"`` prior is handed to the breeder (:meth:`Breeder.set_prior`).
    """
    kind = mri_prior(spec)
    if kind is None:
        if cfg.mri.enabled:
            log.info("genome %s does not use an MRI prior (decoder %s)", spec.name, spec.decoder)
        return None
    if kind == "tensor":
        return tensor_prior(cfg, out, breeder.a, breeder.b) if cfg.mri.enabled else None
    breeder.set_prior(layer_prior(cfg, out, breeder.a))
    return None
