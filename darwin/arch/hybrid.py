"""Component correspondence between families, for cross-family breeding (data, not code paths).

Every supported family is one :class:`FamilyLayout`: where its embedding, final norm, head and, in
each decoder layer, its mixer (attention or SSM), mixer norm, FFN and FFN norm live. Inside a
component the sub-module names agree across the families listed here (``q_proj`` … ``o_proj``;
``gate_proj``/``up_proj``/``down_proj``; ``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``,
``norm``, ``out_proj``), so mapping a component is a prefix substitution.

The hybrid target is **Bamba** (``BambaForCausalLM``, in transformers since 4.48, no remote code):
every layer is ``input_layernorm → mixer → residual → pre_ff_layernorm → gated FFN → residual``,
where the mixer is Llama-style attention (layers in ``attn_layer_indices``) or a Mamba-2 mixer. That
is exactly a Llama layer with its attention optionally replaced by a Mamba-2 mixer, so both parents'
weights keep their meaning; it runs on CPU through its PyTorch fallback. Why Bamba over NemotronH
and GraniteMoeHybrid: docs/crossover.md. Adding a target or a source family means adding a
:class:`FamilyLayout` (and, for an SSM source, its entry in :data:`SSM_CONFIG_KEYS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FamilyLayout:
    """Where the canonical components of one family live.

    Attributes:
        model_type: config ``model_type``.
        kind: ``transformer`` (every layer attention), ``ssm`` (every layer an SSM mixer) or
            ``hybrid`` (per layer, from the config's ``attn_layer_indices``).
        layer: layer prefix with ``{i}`` for the index (``"model.layers.{i}."``).
        attn: attention sub-module prefix inside a layer, or None.
        ssm: SSM mixer sub-module prefix inside a layer, or None.
        mixer_norm: the norm before the mixer (full tensor name inside a layer).
        ffn: FFN sub-module prefix inside a layer, or None (Mamba-2 blocks have none).
        ffn_norm: the norm before the FFN, or None.
        embed: token embedding tensor.
        final_norm: final norm tensor.
        head: output head tensor (absent from the checkpoint when tied).
    """

    model_type: str
    kind: str
    layer: str
    attn: str | None
    ssm: str | None
    mixer_norm: str
    ffn: str | None
    ffn_norm: str | None
    embed: str
    final_norm: str
    head: str = "lm_head.weight"

    def prefix(self, layer: int, component: str) -> str:
        """Name prefix of ``component`` (``attn``, ``ssm``, ``ffn``) in ``layer``."""
        sub = {"attn": self.attn, "ssm": self.ssm, "ffn": self.ffn}[component]
        if sub is None:
            raise KeyError(f"{self.model_type} layers have no {component}")
        return self.layer.format(i=layer) + sub

    def norm(self, layer: int, which: str) -> str:
        """Name of the ``mixer`` or ``ffn`` norm of ``layer``."""
        name = self.mixer_norm if which == "mixer" else self.ffn_norm
        if name is None:
            raise KeyError(f"{self.model_type} layers have no {which} norm")
        return self.layer.format(i=layer) + name

    def mixers(self, config: dict[str, Any], num_layers: int) -> list[str]:
        """Per layer ``attn`` or ``ssm``."""
        if self.kind == "transformer":
            return ["attn"] * num_layers
        if self.kind == "ssm":
            return ["ssm"] * num_layers
        attn = set(config.get("attn_layer_indices") or [])
        return ["attn" if i in attn else "ssm" for i in range(num_layers)]


_LLAMA_LIKE: dict[str, Any] = dict(kind="transformer", layer="model.layers.{i}.", attn="self_attn.", ssm=None,
                                   mixer_norm="input_layernorm.weight", ffn="mlp.",
                                   ffn_norm="post_attention_layernorm.weight",
                                   embed="model.embed_tokens.weight", final_norm="model.norm.weight")

LAYOUTS: dict[str, FamilyLayout] = {
    "llama": FamilyLayout("llama", **_LLAMA_LIKE),
    "mistral": FamilyLayout("mistral", **_LLAMA_LIKE),
    "mamba2": FamilyLayout("mamba2", "ssm", "backbone.layers.{i}.", None, "mixer.", "norm.weight", None, None,
                           "backbone.embeddings.weight", "backbone.norm_f.weight"),
    "bamba": FamilyLayout("bamba", "hybrid", "model.layers.{i}.", "self_attn.", "mamba.", "input_layernorm.weight",
                          "feed_forward.", "pre_ff_layernorm.weight", "model.embed_tokens.weight",
                          "model.final_layernorm.weight"),
}

# The hybrid family children are written as.
TARGET = "bamba"
TARGET_ARCHITECTURE = "BambaForCausalLM"

# Bamba config key ← SSM parent config key, per SSM-capable source family.
SSM_CONFIG_KEYS: dict[str, dict[str, str]] = {
    "mamba2": {"mamba_n_heads": "num_heads", "mamba_d_head": "head_dim", "mamba_n_groups": "n_groups",
               "mamba_d_state": "state_size", "mamba_d_conv": "conv_kernel", "mamba_expand": "expand",
               "mamba_chunk_size": "chunk_size", "mamba_conv_bias": "use_conv_bias", "mamba_proj_bias": "use_bias",
               "time_step_limit": "time_step_limit"},
    "bamba": {k: k for k in ("mamba_n_heads", "mamba_d_head", "mamba_n_groups", "mamba_d_state", "mamba_d_conv",
                             "mamba_expand", "mamba_chunk_size", "mamba_conv_bias", "mamba_proj_bias",
                             "time_step_limit")},
}

# Bamba config keys taken from the transformer parent (attention, FFN, norms, vocabulary).
TRANSFORMER_CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                           "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps", "max_position_embeddings",
                           "attention_bias", "mlp_bias", "attention_dropout", "initializer_range", "bos_token_id",
                           "eos_token_id", "pad_token_id", "rope_parameters")


def layout_of(config: dict[str, Any], role: str) -> FamilyLayout:
    """The layout of a parent's family.

    Args:
        config: the parent's config dict.
        role: what the parent is used as (``transformer``, ``ssm``, ``any``), for the error message
            and to refuse a family without the needed mixer.

    Raises:
        KeyError: with a message listing the supported families, when none fits.
    """
    mt = config.get("model_type", "?")
    lay = LAYOUTS.get(mt)
    ok = lay is not None and (role == "any" or (role == "transformer" and lay.attn is not None)
                              or (role == "ssm" and lay.ssm is not None))
    if not ok:
        fams = sorted(m for m, lo in LAYOUTS.items()
                      if role == "any" or getattr(lo, "attn" if role == "transformer" else "ssm") is not None)
        raise KeyError(f"model_type {mt!r} has no cross-family mapping as the {role} parent (supported: {fams})")
    assert lay is not None  # ok implies a layout was found
    return lay


def hybrid_config(transformer: dict[str, Any], ssm: dict[str, Any], mixers: list[str], *, tied: bool,
                  dtype: str) -> dict[str, Any]:
    """The Bamba config of a hybrid child.

    Args:
        transformer: full config dict of the transformer parent (defaults filled in, e.g. from
            ``AutoConfig.from_pretrained(...).to_dict()``).
        ssm: full config dict of the SSM parent.
        mixers: per child layer ``attn`` or ``ssm``.
        tied: the child ties its head to its embedding.
        dtype: config spelling of the storage dtype.

    Returns:
        a config dict ``BambaConfig`` accepts. Rotary embedding keeps the transformer's
        ``partial_rotary_factor`` (1.0 for Llama; Bamba's own default is 0.5).
    """
    cfg: dict[str, Any] = {"model_type": TARGET, "architectures": [TARGET_ARCHITECTURE]}
    for k in TRANSFORMER_CONFIG_KEYS:
        if transformer.get(k) is not None:
            cfg[k] = transformer[k]
    rope = dict(transformer.get("rope_parameters") or {"rope_type": "default",
                                                        "rope_theta": transformer.get("rope_theta", 10000.0)})
    rope.setdefault("partial_rotary_factor", transformer.get("partial_rotary_factor", 1.0))
    cfg["rope_parameters"] = rope
    for dst, src in SSM_CONFIG_KEYS[ssm["model_type"]].items():
        if ssm.get(src) is not None:
            cfg[dst] = list(ssm[src]) if isinstance(ssm[src], tuple) else ssm[src]
    cfg["num_hidden_layers"] = len(mixers)
    cfg["attn_layer_indices"] = [i for i, m in enumerate(mixers) if m == "attn"]
    cfg["tie_word_embeddings"] = tied
    cfg["dtype"] = dtype
    # transformers' hybrid cache needs an attention layer to measure its length; an all-SSM child
    # runs (and generates) without the cache
    cfg["use_cache"] = "attn" in mixers
    return cfg
