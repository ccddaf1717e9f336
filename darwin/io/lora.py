"""A parent written ``base+adapter``: a base checkpoint with a PEFT LoRA adapter merged in, lazily.

Each tensor the adapter targets is read as ``W + s·B·A`` (float32 arithmetic, stored dtype out),
with ``s = α/r``, or ``α/√r`` when the adapter uses rank-stabilised LoRA (``use_rslora``; Kalajdzievski,
arXiv 2312.03732); LoRA itself: Hu et al., arXiv 2106.09685. Per-module ranks and alphas
(``rank_pattern``, ``alpha_pattern``), ``fan_in_fan_out`` (GPT-2's transposed ``Conv1D`` weights),
LoRA on embeddings (``Δ = (B·A)ᵀ``) and saved whole modules (``modules_to_save``, saved embedding
layers) are honoured. Adapters that cannot be merged this way (DoRA, a LoRA bias, non-LoRA PEFT
types) are refused with the reason. Nothing is written: the merged tensor exists only while the
merge reads it.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from darwin.errors import CheckpointError
from darwin.io.checkpoint import Checkpoint, TensorMeta

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LORA_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                       r"(?:\.default)?(?:\.weight)?$")


def split_lora_ref(ref: str) -> tuple[str, str] | None:
    """``(base, adapter)`` for a ``base+adapter`` reference, or None for a plain one (a folder
    whose name contains ``+`` stays plain)."""
    if "+" not in ref or Path(ref).expanduser().exists():
        return None
    base, adapter = ref.split("+", 1)
    return base, adapter


def _pattern(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's per-module override: the first key that matches the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The adapter's config, checked for what darwin can merge.

    Raises:
        CheckpointError: missing files, invalid JSON, a PEFT type other than LoRA, DoRA or a LoRA bias.
    """
    cfg_path, w_path = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise CheckpointError(f"{folder}: not a PEFT adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: not a JSON object")
    kind = str(cfg.get("peft_type", "")).upper()
    if kind != "LORA":
        raise CheckpointError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} cannot be merged into weights; only "
                              "LoRA adapters can")
    if cfg.get("use_dora"):
        raise CheckpointError(f"{cfg_path}: DoRA adapters (use_dora: true) are not supported; merge it with peft's "
                              "merge_and_unload and use the result as a parent")
    if cfg.get("lora_bias") or cfg.get("bias", "none") not in ("none", None):
        raise CheckpointError(f"{cfg_path}: adapters that train biases (bias/lora_bias) are not supported")
    return cfg


class LoraCheckpoint(Checkpoint):
    """A base checkpoint read through a LoRA adapter (same interface as :class:`Checkpoint`).

    Args:
        ref: ``base+adapter`` (the base a local folder or hub id; the adapter a local folder).

    Raises:
        CheckpointError: the base or the adapter is missing or unusable, or an adapter tensor names
            a module the base does not have.
    """

    def __init__(self, ref: str, *, allow_bin: bool = True) -> None:
        parts = split_lora_ref(ref)
        if parts is None:
            raise CheckpointError(f"{ref}: not a base+adapter reference")
        base, adapter = parts
        super().__init__(base, allow_bin=allow_bin)
        self.ref = ref
        self.adapter = Path(adapter).expanduser()
        if not self.adapter.is_dir():
            raise CheckpointError(f"{ref}: adapter folder {adapter!r} not found")
        self.adapter_config = read_adapter_config(self.adapter)
        self._lora: dict[str, dict[str, str]] = {}
        self._whole: dict[str, str] = {}
        self._index_adapter()

    def _index_adapter(self) -> None:
        path = self.adapter / ADAPTER_WEIGHTS
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        except Exception as e:  # safetensors raises several types for a corrupt file
            raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({e})") from e
        for key in keys:
            name = key.removeprefix("base_model.model.")
            if "lora_magnitude_vector" in name:
                raise CheckpointError(f"{path}: {key!r} is a DoRA magnitude; DoRA adapters are not supported")
            m = _LORA_KEY.match(name)
            if m:
                self._lora.setdefault(m.group("module") + ".weight", {})[m.group("kind")] = key
                continue
            target = name.replace(".base_layer", "").replace(".modules_to_save.default", "")
            target = target.replace(".modules_to_save", "")
            if target not in self.meta:
                raise CheckpointError(f"{path}: tensor {key!r} matches no tensor of the base {self.path}")
            self._whole[target] = key
            old = self.meta[target]
            self.meta[target] = TensorMeta(old.name, shapes[key], old.dtype, old.file)
        for target, parts in self._lora.items():
            if target not in self.meta:
                raise CheckpointError(f"{path}: adapter targets {target!r}, which the base {self.path} does not have")
            if len(parts) != 2:
                raise CheckpointError(f"{path}: {target!r} has {sorted(parts)}, not an A/B pair")

    def _adapter_tensor(self, key: str) -> torch.Tensor:
        with safe_open(str(self.adapter / ADAPTER_WEIGHTS), framework="pt") as f:
            return f.get_tensor(key)

    def scale(self, target: str) -> float:
        """``α/r`` (or ``α/√r`` with rsLoRA) for the module owning ``target``."""
        cfg, module = self.adapter_config, target.removesuffix(".weight")
        r = _pattern(cfg.get("rank_pattern") or {}, module, cfg.get("r", 8))
        alpha = _pattern(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
        return float(alpha) / (math.sqrt(r) if cfg.get("use_rslora") else float(r))

    def get(self, name: str) -> torch.Tensor:
        """The base tensor with the adapter merged in (``W + s·B·A``), in the stored dtype."""
        base = self._adapter_tensor(self._whole[name]) if name in self._whole else super().get(name)
        parts = self._lora.get(name)
        if parts is None:
            return base
        if "lora_A" in parts:
            a, b = (self._adapter_tensor(parts[k]).float() for k in ("lora_A", "lora_B"))
            delta = b @ a
            if self.adapter_config.get("fan_in_fan_out"):
                delta = delta.T
        else:
            a, b = (self._adapter_tensor(parts[k]).float() for k in ("lora_embedding_A", "lora_embedding_B"))
            delta = (b @ a).T
        if tuple(delta.shape) != tuple(base.shape):
            raise CheckpointError(f"{self.adapter}: the LoRA update of {name!r} has shape {tuple(delta.shape)}, the "
                                  f"base tensor {tuple(base.shape)}")
        return (base.float() + self.scale(name) * delta).to(base.dtype)


def open_checkpoint(ref: str | os.PathLike, *, allow_bin: bool = True) -> Checkpoint:
    """A :class:`LoraCheckpoint` for ``base+adapter``, else a plain :class:`Checkpoint`."""
    text = os.fspath(ref)
    return LoraCheckpoint(text, allow_bin=allow_bin) if split_lora_ref(text) else Checkpoint(text, allow_bin=allow_bin)
