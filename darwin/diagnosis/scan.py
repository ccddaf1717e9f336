"""Run an MRI scan of one model: static statistics of every tensor plus layer probe signals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.progress import Progress

from darwin.arch.mapper import ArchMap
from darwin.diagnosis.probe import FAMILIES, layer_importance, load_probes
from darwin.diagnosis.static import tensor_stats
from darwin.io.checkpoint import Checkpoint
from darwin.io.extras import require_tokenizer
from darwin.plan.execute import resolve_device


@dataclass
class Scan:
    """MRI of one model.

    Attributes:
        model: reference (path or hub id).
        num_layers: decoder layers.
        tensors: name → {layer, component, entropy, std, l2, v5}.
        probe: ``{"bi": {family: [L]}, "angular": {family: [L]}}`` or empty without probes.
    """

    model: str
    num_layers: int
    tensors: dict[str, dict[str, Any]]
    probe: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def static_scores(self) -> dict[str, float]:
        """Tensor name → V5 score."""
        return {n: t["v5"] for n, t in self.tensors.items()}

    def layer_of(self) -> dict[str, int | None]:
        """Tensor name → layer index (None outside the layers)."""
        return {n: t["layer"] for n, t in self.tensors.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (see docs/mri.md for the schema)."""
        return {"model": self.model, "num_layers": self.num_layers, "tensors": self.tensors, "probe": self.probe}


def static_scan(ckpt: Checkpoint, progress: bool = False) -> tuple[ArchMap, dict[str, dict[str, Any]]]:
    """Static statistics of every stored tensor (read one at a time)."""
    amap = ArchMap.build(ckpt.config, ckpt.tensor_names)
    out = {}
    with Progress(disable=not progress, transient=True) as bar:
        job = bar.add_task("static scan", total=len(ckpt.tensor_names))
        for name in ckpt.tensor_names:
            role = amap.roles[name]
            out[name] = {"layer": role.layer, "component": role.component, **tensor_stats(ckpt.get(name))}
            bar.advance(job)
    return amap, out


def scan_model(ref: str, *, probes: bool = True, families: tuple[str, ...] = FAMILIES, device: str = "cpu",
               model=None, tokenizer=None, progress: bool = False, max_length: int = 64) -> Scan:
    """Scan a model folder: static statistics always, probe signals unless ``probes=False``.

    Args:
        ref: model folder (or hub id).
        probes: run the probe prompts (loads the model with transformers).
        families: probe families to run.
        device: where the probe forward passes run (``auto``, ``cpu``, ``cuda``, ``cuda:1`` …; the same
            rule as the merge kernels, :func:`darwin.plan.execute.resolve_device`).
        model, tokenizer: an already loaded model/tokenizer to probe instead of loading ``ref``.
        progress: show progress bars.
        max_length: probe prompt truncation, tokens.
    """
    dev = resolve_device(device)  # a bad or missing device fails here, never silently on the CPU
    ckpt = Checkpoint(ref)
    if probes:
        ckpt.require_config()
        if tokenizer is None:
            require_tokenizer(ckpt.path, "the probes need one; run with --no-probes for the static statistics only")
    amap, tensors = static_scan(ckpt, progress)
    probe: dict[str, dict[str, list[float]]] = {}
    if probes and amap.num_layers > 0:
        if model is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            # transformers stubs type from_pretrained(...).to as a decorator wrapper (wants a model)
            model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype="float32").to(dev).eval()  # type: ignore[arg-type]
            tokenizer = AutoTokenizer.from_pretrained(ckpt.path)
        probe = layer_importance(model, tokenizer, load_probes(families), amap.num_layers, max_length)
    ckpt.close()
    return Scan(ref, amap.num_layers, tensors, probe)
