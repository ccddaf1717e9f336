"""Tiny random checkpoints of several transformers families, built locally (CPU, no network).

Helpers only (no tests): :data:`FAMILIES` names each family's config class and tiny settings,
:func:`build_parents` writes parent A (random init, fixed seed) and parent B (A plus small
Gaussian noise on every parameter) as safetensors folders. No tokenizer: tests generate from
``input_ids``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

VOCAB = 128
# bos / eos / pad inside the vocabulary (the family defaults often point past a tiny vocab).
_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
_DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **_IDS)

# family → (config class name, tiny config kwargs)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", dict(_DECODER)),
    "mistral": ("MistralConfig", dict(_DECODER, sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(_DECODER, num_hidden_layers=4, use_sliding_window=True, sliding_window=16,
                                  max_window_layers=2)),
    "qwen3": ("Qwen3Config", dict(_DECODER, head_dim=8)),
    "gemma": ("GemmaConfig", dict(_DECODER, head_dim=8)),
    "gemma2": ("Gemma2Config", dict(_DECODER, head_dim=8, sliding_window=16)),
    "gemma3_text": ("Gemma3TextConfig", dict(_DECODER, num_hidden_layers=4, head_dim=8, sliding_window=16,
                                             layer_types=["sliding_attention", "full_attention",
                                                          "sliding_attention", "full_attention"])),
    "phi3": ("Phi3Config", dict(_DECODER, original_max_position_embeddings=128)),
    "gpt2": ("GPT2Config", dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, **_IDS)),
    "gpt_neox": ("GPTNeoXConfig", dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       max_position_embeddings=128, **_IDS)),
    "olmo2": ("Olmo2Config", dict(_DECODER)),
    # SSM dims: num_heads * head_dim == expand * hidden_size (4 * 16 == 2 * 32)
    "mamba2": ("Mamba2Config", dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=4,
                                    head_dim=16, expand=2, n_groups=1, state_size=16, conv_kernel=4,
                                    chunk_size=16, **_IDS)),
    # mamba_n_heads * mamba_d_head == mamba_expand * hidden_size (4 * 16 == 2 * 32)
    "bamba": ("BambaConfig", dict(_DECODER, num_hidden_layers=4, attn_layer_indices=[1, 3], mamba_n_heads=4,
                                  mamba_d_head=16, mamba_expand=2, mamba_n_groups=1, mamba_d_state=16,
                                  mamba_d_conv=4, mamba_chunk_size=16)),
}

# Families where transformers cannot build or run the tiny model on CPU: family → reason.
XFAIL: dict[str, str] = {}


def make_config(family: str, **overrides: Any):
    """The tiny ``transformers`` config of ``family`` (``overrides`` replace kwargs)."""
    import transformers

    cls_name, kwargs = FAMILIES[family]
    return getattr(transformers, cls_name)(**{**kwargs, **overrides})


def make_model(family: str, seed: int = 0, **overrides: Any):
    """A randomly initialised ``*ForCausalLM`` of ``family`` (eval mode, float32, fixed seed)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(make_config(family, **overrides)).float().eval()


def add_noise(model, scale: float = 0.01, seed: int = 1):
    """``model`` with ``scale`` × N(0, 1) added to every parameter, in place (returns it)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def save(model, folder: Path) -> Path:
    """``model.save_pretrained`` as safetensors into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def build_parents(family: str, root: Path, seed: int = 0, **overrides: Any) -> tuple[Path, Path]:
    """Write parent A (random) and parent B (A + noise) of ``family`` under ``root``; return both paths."""
    model = make_model(family, seed, **overrides)
    a = save(model, root / "A")
    b = save(add_noise(model, seed=seed + 1), root / "B")
    return a, b


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint folder as a dict."""
    return json.loads((Path(folder) / "config.json").read_text())


def tensor_names(folder: Path) -> list[str]:
    """Tensor names stored in a single-file safetensors checkpoint (headers only)."""
    from safetensors import safe_open

    with safe_open(str(Path(folder) / "model.safetensors"), "pt") as f:
        return list(f.keys())


def load_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file safetensors checkpoint."""
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def linear_recipe(a: Path, b: Path, wa: float = 0.5, wb: float = 0.5) -> dict[str, Any]:
    """A float32 linear merge recipe of two parents."""
    return {"merge_method": "linear",
            "models": [{"model": str(a), "parameters": {"weight": wa}},
                       {"model": str(b), "parameters": {"weight": wb}}],
            "dtype": "float32"}


def input_ids(n: int = 6, seed: int = 0) -> torch.Tensor:
    """A ``[1, n]`` batch of token ids inside the tiny vocabulary (avoiding the special ids)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (1, n), generator=g)
