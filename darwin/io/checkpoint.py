"""Lazy, read-only access to a Hugging Face checkpoint folder.

A :class:`Checkpoint` reads only the safetensors headers when opened (names, shapes, dtypes) and
memory-maps a tensor's bytes when :meth:`Checkpoint.get` asks for it, so a merge never holds a
whole parent in RAM. Supported layouts, in order of preference:

* ``model.safetensors`` (single file);
* ``model.safetensors.index.json`` + the shards it names;
* ``pytorch_model.bin`` / ``pytorch_model.bin.index.json`` + shards, loaded only with
  ``torch.load(weights_only=True, mmap=True)`` (no arbitrary unpickling).

A hub id (``org/name``) that is not a local folder is fetched with ``huggingface_hub`` (weights,
configs and tokenizer files only); that path needs network access and is not exercised in tests.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from darwin.errors import CheckpointError, DarwinWarning

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: stored names of output heads that an index may list although the head is tied to the embedding
_TIED_ALIASES = ("lm_head.weight", "embed_out.weight")

#: model type → (the prefix transformers' base model adds, names that show a checkpoint lacks it);
#: every other family uses ``model`` and ``layers.`` / ``embed_tokens.``
_BASE_PREFIX = {"gpt2": ("transformer", ("h.", "wte.")), "gpt_neox": ("gpt_neox", ("layers.", "embed_in.")),
                "mamba": ("backbone", ("layers.", "embeddings.")), "mamba2": ("backbone", ("layers.", "embeddings."))}


def canonical_names(meta: dict[str, TensorMeta], config: dict[str, Any]) -> dict[str, TensorMeta]:
    """Tensor metadata keyed by the names transformers loads, for checkpoints saved without the
    base model's prefix (``layers.0.…`` instead of ``model.layers.0.…``): transformers adds the
    prefix when it loads such a file, and so does darwin. ``TensorMeta.name`` keeps the stored name.
    Heads (``lm_head``) stay as they are."""
    prefix, markers = _BASE_PREFIX.get(str(config.get("model_type")), ("model", ("layers.", "embed_tokens.")))
    names = list(meta)
    if any(n.startswith(prefix + ".") for n in names) or not any(n.startswith(markers) for n in names):
        return meta
    return {(n if n.startswith(("lm_head.", "embed_out.")) else f"{prefix}.{n}"): m for n, m in meta.items()}


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorMeta:
    """Where a tensor lives and what it is, read from headers only.

    Attributes:
        name: tensor name as stored, e.g. ``model.layers.0.self_attn.q_proj.weight``.
        shape: tensor shape.
        dtype: storage dtype.
        file: shard file name relative to the checkpoint folder.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str

    @property
    def nbytes(self) -> int:
        """Storage size in bytes."""
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


def _resolve_location(path_or_id: str | os.PathLike, revision: str | None) -> Path:
    p = Path(path_or_id).expanduser()
    if p.exists():
        if not p.is_dir():
            raise CheckpointError(f"{p}: a checkpoint must be a folder, not a file")
        return p.resolve()
    s = str(path_or_id)
    if _HUB_ID.match(s) and not s.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download
        except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
            raise CheckpointError(f"{s}: not a local folder and huggingface_hub is missing") from e
        try:
            return Path(snapshot_download(s, revision=revision, allow_patterns=_HUB_PATTERNS))
        except Exception as e:  # network, auth or missing repo
            raise CheckpointError(f"{s}: not a local folder, and fetching it from the hub failed: {e}") from e
    raise CheckpointError(f"{s}: no such checkpoint folder")


class Checkpoint:
    """A parent checkpoint opened lazily.

    Args:
        path_or_id: a local folder, or a hub id ``org/name`` (downloaded once into the HF cache).
        revision: hub revision when ``path_or_id`` is a hub id.
        allow_bin: accept ``pytorch_model*.bin`` weights (read with ``weights_only=True``).

    Raises:
        CheckpointError: the folder is missing, has no weights, an index names a missing shard or
            tensor, a shard is corrupt or truncated, or a stray ``model*.safetensors`` file is not
            referenced by the index.
    """

    def __init__(self, path_or_id: str | os.PathLike, *, revision: str | None = None,
                 allow_bin: bool = True) -> None:
        self.ref = str(path_or_id)
        self.path = _resolve_location(path_or_id, revision)
        self._allow_bin = allow_bin
        self._handles: dict[str, Any] = {}
        self._bin_cache: dict[str, dict[str, torch.Tensor]] = {}
        self.meta: dict[str, TensorMeta] = canonical_names(self._read_headers(), self.config)

    def __repr__(self) -> str:
        return f"Checkpoint({self.ref!r}, tensors={len(getattr(self, 'meta', {}))})"

    # ------------------------------------------------------------------ discovery
    def _read_headers(self) -> dict[str, TensorMeta]:
        files = {f.name for f in self.path.iterdir() if f.is_file()}
        if SAFE_INDEX in files:
            return self._read_index(SAFE_INDEX, files, safetensors=True)
        if SAFE_SINGLE in files:
            return self._read_safetensors_file(SAFE_SINGLE)
        stray = sorted(f for f in files if f.endswith(".safetensors") and f.startswith("model"))
        if stray:
            raise CheckpointError(
                f"{self.path}: shard files {stray[:3]} found but no {SAFE_INDEX} to say how they fit")
        if self._allow_bin and BIN_INDEX in files:
            return self._read_index(BIN_INDEX, files, safetensors=False)
        if self._allow_bin and BIN_SINGLE in files:
            return self._read_bin_file(BIN_SINGLE)
        raise CheckpointError(f"{self.path}: no model weights ({SAFE_SINGLE}, {SAFE_INDEX} or {BIN_SINGLE})")

    def _read_index(self, index_name: str, files: set[str], *, safetensors: bool) -> dict[str, TensorMeta]:
        index_path = self.path / index_name
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index_path}: not a valid index ({e})") from e
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if s not in files]
        if missing:
            raise CheckpointError(f"{index_path}: names shard {missing[0]!r}, which is not in the folder")
        if safetensors:
            stray = sorted(f for f in files if f.endswith(".safetensors") and f.startswith("model")
                           and f not in shards)
            if stray:  # the index is authoritative, as for transformers
                warnings.warn(f"{self.path}: {', '.join(stray[:3])} {'is' if len(stray) == 1 else 'are'} not named "
                              f"by {index_name} and ignored (the index is authoritative)", DarwinWarning,
                              stacklevel=4)
        meta: dict[str, TensorMeta] = {}
        for shard in shards:
            found = self._read_safetensors_file(shard) if safetensors else self._read_bin_file(shard)
            meta.update(found)
        out: dict[str, TensorMeta] = {}
        for name, shard in weight_map.items():
            if name in meta and meta[name].file == shard:
                out[name] = meta[name]
            elif name.endswith(_TIED_ALIASES) and name not in meta:
                # an index listing the tied head that its shard does not store: the head is the embedding
                warnings.warn(f"{index_path}: lists {name!r}, which {shard!r} does not store; taken as tied to the "
                              "input embedding", DarwinWarning, stacklevel=4)
            else:
                raise CheckpointError(f"{index_path}: tensor {name!r} is not in shard {shard!r}")
        return out

    def _read_safetensors_file(self, fname: str) -> dict[str, TensorMeta]:
        fpath = self.path / fname
        try:
            with safe_open(str(fpath), framework="pt") as f:
                out = {}
                for name in f.keys():
                    sl = f.get_slice(name)
                    dt = _ST_DTYPES.get(sl.get_dtype())
                    if dt is None:
                        raise CheckpointError(f"{fpath}: tensor {name!r} has unsupported dtype {sl.get_dtype()}")
                    out[name] = TensorMeta(name, tuple(sl.get_shape()), dt, fname)
                return out
        except CheckpointError:
            raise
        except Exception as e:  # SafetensorError, OSError: truncated or corrupt
            raise CheckpointError(f"{fpath}: corrupt or truncated safetensors file ({e})") from e

    def _load_bin(self, fname: str) -> dict[str, torch.Tensor]:
        if fname not in self._bin_cache:
            fpath = self.path / fname
            try:
                sd = torch.load(str(fpath), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # legacy (non-zip) files cannot be memory-mapped: read them whole
                    raise CheckpointError(f"{fpath}: cannot be read safely with weights_only=True ({e})") from e
                try:
                    sd = torch.load(str(fpath), map_location="cpu", weights_only=True)
                except Exception as e2:
                    raise CheckpointError(f"{fpath}: cannot be read safely with weights_only=True ({e2})") from e2
            except Exception as e:
                raise CheckpointError(f"{fpath}: cannot be read safely with weights_only=True ({e})") from e
            if not isinstance(sd, dict):
                raise CheckpointError(f"{fpath}: does not hold a state dict")
            self._bin_cache[fname] = sd
        return self._bin_cache[fname]

    def _read_bin_file(self, fname: str) -> dict[str, TensorMeta]:
        sd = self._load_bin(fname)
        return {n: TensorMeta(n, tuple(t.shape), t.dtype, fname) for n, t in sd.items()
                if isinstance(t, torch.Tensor)}

    # ------------------------------------------------------------------ access
    @cached_property
    def config(self) -> dict[str, Any]:
        """The parsed ``config.json`` (empty dict when absent)."""
        p = self.path / "config.json"
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{p}: invalid JSON ({e})") from e

    def require_config(self) -> dict[str, Any]:
        """The config, or a :class:`CheckpointError` naming the folder when it has no ``config.json``."""
        if not (self.path / "config.json").exists():
            raise CheckpointError(f"{self.path}: no config.json (a Hugging Face model folder needs one)")
        return self.config

    def __contains__(self, name: str) -> bool:
        return name in self.meta

    @property
    def tensor_names(self) -> list[str]:
        """Tensor names in storage order."""
        return list(self.meta)

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (memory-mapped, storage dtype, CPU).

        Raises:
            CheckpointError: the tensor is absent or its bytes cannot be read.
        """
        m = self.meta.get(name)
        if m is None:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        if m.file.endswith(".bin"):
            return self._load_bin(m.file)[m.name]
        h = self._handles.get(m.file)
        try:
            if h is None:
                h = safe_open(str(self.path / m.file), framework="pt")
                self._handles[m.file] = h
            return h.get_tensor(m.name)
        except Exception as e:
            raise CheckpointError(f"{self.path / m.file}: cannot read tensor {name!r} ({e})") from e

    def close(self) -> None:
        """Drop open file handles and cached ``.bin`` state dicts."""
        self._handles.clear()
        self._bin_cache.clear()

    @property
    def num_parameters(self) -> int:
        """Number of stored elements over all tensors (tied weights stored once count once)."""
        total = 0
        for m in self.meta.values():
            n = 1
            for s in m.shape:
                n *= s
            total += n
        return total
