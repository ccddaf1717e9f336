"""Tiny demo parents built locally (no network): a base and two "fine-tuned" children.

``darwin demo-models DIR`` writes ``DIR/base``, ``DIR/parent_a``, ``DIR/parent_b`` (tiny llama,
hidden 32, 4 layers, a 384-token byte-level BPE tokenizer trained on Python's bundled docs) and
``DIR/recipe-*.yaml`` examples. The parents are the base plus independent random task vectors, so
every merge method (including those needing a base) has something meaningful to do. Random
weights: for trying the tool and for tests, not for quality.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

VOCAB = 384
_SPECIALS = ["<|endoftext|>", "<|pad|>"]


def build_tokenizer(vocab_size: int = VOCAB):
    """A byte-level BPE tokenizer trained in-process on ``pydoc_data.topics`` (stdlib text).

    Returns:
        a ``transformers.PreTrainedTokenizerFast`` with ``vocab_size`` entries, eos
        ``<|endoftext|>`` (id 0) and pad ``<|pad|>`` (id 1).
    """
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = [topics[k] for k in sorted(topics)][:20]
    tok.train_from_iterator(text, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=_SPECIALS[0], bos_token=_SPECIALS[0],
                                   pad_token=_SPECIALS[1])


def tiny_llama_config(vocab_size: int = VOCAB, layers: int = 4, tied: bool = False):
    """A hidden-32 llama config (4 heads, 2 KV heads, FFN 64)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0, pad_token_id=1)


def tiny_mamba2_config(vocab_size: int = VOCAB, layers: int = 4):
    """A hidden-32 Mamba-2 config matching :func:`tiny_llama_config` (for crossover demos)."""
    from transformers import Mamba2Config

    # num_heads · head_dim = expand · hidden (4 · 16 = 2 · 32); eps = the llama's rms_norm_eps
    return Mamba2Config(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers, num_heads=4, head_dim=16,
                        expand=2, n_groups=1, state_size=16, conv_kernel=4, chunk_size=16, layer_norm_epsilon=1e-6,
                        tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=1)


def save_model(model, folder: Path, tokenizer=None, dtype: torch.dtype | None = None) -> Path:
    """Save a model (and tokenizer) as safetensors into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def perturbed(model, scale: float, seed: int):
    """A copy of ``model`` plus an independent Gaussian task vector (``scale`` × N(0, 1) per element)."""
    import copy

    child = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in child.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return child


RECIPES = {
    "recipe-ties.yaml": """\
merge_method: ties
base_model: {base}
models:
  - model: {a}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {b}
    parameters: {{weight: 0.4, density: 0.5}}
parameters:
  normalize: true
dtype: float32
""",
    "recipe-slerp.yaml": """\
merge_method: slerp
base_model: {a}
models:
  - model: {a}
  - model: {b}
parameters:
  t:
    - filter: self_attn
      value: [0.0, 0.5, 0.3, 0.7, 1.0]
    - filter: mlp
      value: [1.0, 0.5, 0.7, 0.3, 0.0]
    - value: 0.5
dtype: bfloat16
""",
    "recipe-frankenmerge.yaml": """\
merge_method: passthrough
slices:
  - sources: [{{model: {a}, layer_range: [0, 3]}}]
  - sources: [{{model: {b}, layer_range: [1, 4]}}]
dtype: float32
""",
}


def build_demo_models(out_dir: str | os.PathLike, *, seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Write a tiny base, two parents and example recipes into ``out_dir``.

    Args:
        out_dir: destination folder (created).
        seed: weight seed.
        force: rebuild even if the models are already there.

    Returns:
        name → path for ``base``, ``parent_a``, ``parent_b``, ``ssm`` (a tiny Mamba-2 with the
        same tokenizer, for ``darwin crossover``) and each recipe file.
    """
    from transformers import LlamaForCausalLM, Mamba2ForCausalLM

    out = Path(out_dir).expanduser().resolve()
    paths = {k: out / k for k in ("base", "parent_a", "parent_b", "ssm")}
    if force or not all((p / "config.json").exists() for p in paths.values()):
        torch.manual_seed(seed)
        tok = build_tokenizer()
        base = LlamaForCausalLM(tiny_llama_config()).eval()
        save_model(base, paths["base"], tok)
        save_model(perturbed(base, 0.001, seed + 1), paths["parent_a"], tok)
        save_model(perturbed(base, 0.001, seed + 2), paths["parent_b"], tok)
        save_model(Mamba2ForCausalLM(tiny_mamba2_config()).eval(), paths["ssm"], tok)
    for name, text in RECIPES.items():
        p = out / name
        p.write_text(text.format(base=paths["base"], a=paths["parent_a"], b=paths["parent_b"]))
        paths[name] = p
    return paths
