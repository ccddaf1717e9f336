"""Map every tensor of a checkpoint onto canonical components.

A tensor name is split into ``prefix + layer index + rest`` by one pattern that covers the
transformers families (``model.layers.3.…``, ``transformer.h.3.…``, ``gpt_neox.layers.3.…``,
``backbone.layers.3.…``), then classified by its first sub-module name. Small per-family rules
cover what names cannot tell (which tensor is the output head, whether embeddings are tied).
Nothing is dropped: a tensor no rule recognises is mapped to ``other`` and still merged.

Components: ``embed``, ``attn``, ``ssm``, ``ffn``, ``norm``, ``head``, ``other``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

Component = Literal["embed", "attn", "ssm", "ffn", "norm", "head", "other"]
COMPONENTS: tuple[Component, ...] = get_args(Component)

_LAYER = re.compile(r"^(?P<prefix>(?:.*?\.)?(?:layers|h|blocks|layer))\.(?P<idx>\d+)\.(?P<rest>.+)$")
_ATTN = {"self_attn", "attn", "attention", "self_attention", "cross_attn"}
_SSM = {"mixer", "mamba", "ssm", "linear_attn", "conv"}
_FFN = {"mlp", "feed_forward", "ffn", "block_sparse_moe", "experts", "shared_mlp", "moe"}
_EMBED_WORDS = ("embed_tokens", "wte", "wpe", "embed_in", "embeddings", "word_embeddings",
                "embed_positions")
_HEAD_NAMES = ("lm_head.weight", "embed_out.weight", "output.weight", "lm_head.bias")
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")

# Per-family facts the names cannot tell: default tying when config.json omits the key (the
# transformers config class default, which is what loading such a checkpoint uses).
_TIED_DEFAULT = {"gemma": True, "gemma2": True, "gemma3_text": True, "gpt2": True, "mamba2": False,
                 "mamba": True, "olmo2": False, "llama": False, "mistral": False, "qwen2": False,
                 "qwen3": False, "phi3": False, "gpt_neox": False, "bamba": False,
                 "granitemoehybrid": False}


@dataclass(frozen=True)
class TensorRole:
    """Where a tensor sits in the network.

    Attributes:
        name: stored tensor name.
        component: one of :data:`COMPONENTS`.
        layer: decoder layer index, or ``None`` for embeddings, final norm and head.
        prefix: text before the layer index (``"model.layers"``) for layer tensors, else ``None``.
        rest: text after the layer index (``"self_attn.q_proj.weight"``), else the whole name.
    """

    name: str
    component: Component
    layer: int | None
    prefix: str | None
    rest: str

    def renamed(self, layer: int) -> str:
        """This tensor's name at another layer index (for slices / frankenmerges)."""
        if self.prefix is None:
            return self.name
        return f"{self.prefix}.{layer}.{self.rest}"


def classify(name: str) -> TensorRole:
    """Classify one tensor name (pure function of the name).

    Examples: ``model.layers.2.self_attn.q_norm.weight`` → attn, layer 2;
    ``backbone.layers.0.mixer.A_log`` → ssm; ``model.layers.0.input_layernorm.weight`` → norm;
    ``model.norm.weight`` → norm, no layer; ``lm_head.weight`` → head.
    """
    comp: Component
    m = _LAYER.match(name)
    if m:
        rest = m.group("rest")
        first = rest.split(".")[0]
        if first in _ATTN:
            comp = "attn"
        elif first in _SSM:
            comp = "ssm"
        elif first in _FFN:
            comp = "ffn"
        elif "norm" in first or first.startswith("ln"):
            comp = "norm"
        else:
            comp = "other"
        return TensorRole(name, comp, int(m.group("idx")), m.group("prefix"), rest)
    if name in _HEAD_NAMES or name.endswith((".lm_head.weight",)):
        comp = "head"
    elif any(w in name for w in _EMBED_WORDS):
        comp = "embed"
    elif "norm" in name or ".ln_f." in name or name.startswith("ln_f"):
        comp = "norm"
    else:
        comp = "other"
    return TensorRole(name, comp, None, None, name)


#: config keys holding the number of routed experts of a mixture-of-experts layer
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def merge_units(name: str, shape: tuple[int, ...], config: dict[str, Any]) -> int:
    """How many independent tensors a stored tensor holds, for the merge's per-tensor statistics.

    A fused mixture-of-experts tensor (transformers ≥ 5 layout, e.g. ``mlp.experts.down_proj``
    ``[E, H, I]`` and ``mlp.experts.gate_up_proj`` ``[E, 2I, H]``) holds E experts; a fused
    ``gate_up_proj`` whose second dimension is twice the expert FFN width holds the gate and the up
    projection of each, so ``2E``. Every other tensor holds 1. Merging each unit as its own tensor
    (TIES/DARE/DELLA densities, SLERP angles, model_stock cosines) makes the child independent of
    the storage layout: a fused and a per-expert checkpoint of the same weights merge alike.

    Args:
        name: stored tensor name.
        shape: its shape.
        config: the model's config dict (``text_config`` is looked into when present).
    """
    text = config.get("text_config")
    cfg: dict[str, Any] = text if isinstance(text, dict) else config
    experts = next((cfg[k] for k in EXPERT_COUNT_KEYS if isinstance(cfg.get(k), int)), None)
    if experts is None or experts < 2 or ".experts." not in f".{name}" or len(shape) < 3 or shape[0] != experts:
        return 1
    width = cfg.get("moe_intermediate_size") or cfg.get("intermediate_size")
    if name.endswith("gate_up_proj") and isinstance(width, int) and shape[1] == 2 * width:
        return 2 * experts
    return experts


def num_layers(config: dict[str, Any]) -> int | None:
    """Decoder layer count from a config dict (``num_hidden_layers``, ``n_layer``, …), or None."""
    cfg = config.get("text_config", config) if "text_config" in config else config
    for k in LAYER_COUNT_KEYS:
        if isinstance(cfg.get(k), int):
            return cfg[k]
    return None


def is_tied(config: dict[str, Any]) -> bool:
    """Whether the output head shares the input embedding (config key, else family default)."""
    if "tie_word_embeddings" in config:
        return bool(config["tie_word_embeddings"])
    return _TIED_DEFAULT.get(config.get("model_type", ""), True)


@dataclass
class ArchMap:
    """Roles of all tensors of one checkpoint, plus the facts needed to merge it.

    Attributes:
        model_type: config ``model_type``.
        num_layers: decoder layer count (from config, else from tensor names).
        roles: tensor name → :class:`TensorRole`, in storage order.
        tied: output head shares the input embedding.
        embed_name: the token-embedding tensor (``None`` if not found).
        head_name: the name a separate output head has (or would have) in this family.
    """

    model_type: str
    num_layers: int
    roles: dict[str, TensorRole]
    tied: bool
    embed_name: str | None
    head_name: str

    @classmethod
    def build(cls, config: dict[str, Any], tensor_names: list[str]) -> ArchMap:
        """Map a checkpoint from its config dict and tensor names (no weights are read)."""
        roles = {n: classify(n) for n in tensor_names}
        layers = num_layers(config)
        seen = [r.layer for r in roles.values() if r.layer is not None]
        if layers is None:
            layers = max(seen) + 1 if seen else 0
        mt = config.get("model_type", "unknown")
        embeds = [n for n, r in roles.items() if r.component == "embed"]
        token = [n for n in embeds if "pos" not in n and "wpe" not in n]
        embed_name = token[0] if token else (embeds[0] if embeds else None)
        heads = [n for n, r in roles.items() if r.component == "head" and n.endswith("weight")]
        head_name = heads[0] if heads else ("embed_out.weight" if mt == "gpt_neox" else "lm_head.weight")
        tied = is_tied(config) and not heads
        return cls(mt, layers, roles, tied, embed_name, head_name)

    def stored_name(self, name: str, present, out_tied: bool) -> str | None:
        """The stored tensor that provides ``name`` in this checkpoint, following tied embeddings.

        Args:
            name: tensor name in the child.
            present: container of this checkpoint's stored names (``in`` is used).
            out_tied: the child ties its head; if not, a tied parent provides its head from its
                token embedding.

        Returns:
            the stored name, or None if this checkpoint cannot provide the tensor.
        """
        if name in present:
            return name
        role = self.roles.get(name)
        is_head = name == self.head_name or (role is not None and role.component == "head")
        if is_head and self.tied and not out_tied and self.embed_name:
            return self.embed_name
        return None

    def layer_tensors(self, layer: int) -> list[TensorRole]:
        """Roles of the tensors of one decoder layer."""
        return [r for r in self.roles.values() if r.layer == layer]
