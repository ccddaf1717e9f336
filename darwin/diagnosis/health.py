"""Health check: compare a child with both parents layer by layer on the probe prompts.

For every decoder layer ℓ, the mean over tokens of ``cos(h_child, h_A)`` and ``cos(h_child, h_B)``
of the layer outputs; a layer is flagged when the child departs from both parents
(both similarities below ``threshold``, 0.9 by default). Non-finite hidden states or logits
are flagged too.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from darwin.diagnosis.probe import layer_states


@torch.no_grad()
def health_check(child, parent_a, parent_b, tokenizer, prompts: list[str], num_layers: int,
                 threshold: float = 0.9, max_length: int = 64, a_layers: list[int] | None = None,
                 a_num_layers: int | None = None, b_layers: list[int] | None = None,
                 b_num_layers: int | None = None) -> dict[str, Any]:
    """Per-layer similarity of the child's hidden states to each parent's.

    Args:
        child, parent_a, parent_b: loaded models of the same architecture.
        tokenizer: shared tokenizer.
        prompts: probe prompts (a few per family is enough).
        num_layers: decoder layers.
        a_layers, b_layers: each parent's layer compared with each child layer, when a parent has
            another depth (a cross-family parent, a pruned child); default: the same index.
        a_num_layers, b_num_layers: each parent's decoder layers (default ``num_layers``).
        threshold: a layer departs from a parent when the mean cosine is below it.

    Returns:
        ``{"layers": [{"layer", "cos_a", "cos_b", "departs"}], "finite": bool, "flags": [str],
        "threshold": float}``.
    """
    a_layers = a_layers if a_layers is not None else list(range(num_layers))
    b_layers = b_layers if b_layers is not None else list(range(num_layers))
    states = {k: layer_states(m, tokenizer, prompts, n, max_length)
              for k, m, n in (("child", child, num_layers), ("a", parent_a, a_num_layers or num_layers),
                              ("b", parent_b, b_num_layers or num_layers))}
    rows: list[dict[str, Any]] = []
    flags: list[str] = []
    finite = True
    for i in range(num_layers):
        sims: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
        for p in range(len(prompts)):
            yc = states["child"][p][i][1]
            if not torch.isfinite(yc).all():
                finite = False
            for k, j in (("a", a_layers[i]), ("b", b_layers[i])):
                sims[k].append(torch.nn.functional.cosine_similarity(yc, states[k][p][j][1], dim=-1))
        ca = float(torch.cat(sims["a"]).mean())
        cb = float(torch.cat(sims["b"]).mean())
        departs = not (ca >= threshold or cb >= threshold)
        rows.append({"layer": i, "cos_a": ca, "cos_b": cb, "departs": departs})
        if departs:
            flags.append(f"layer {i}: cos to A {ca:.3f}, to B {cb:.3f} (both < {threshold})")
    dev = next(child.parameters()).device
    ids = tokenizer(prompts[0], return_tensors="pt").input_ids.to(dev)
    logits = child(input_ids=ids).logits
    if not torch.isfinite(logits).all():
        finite = False
    if not finite:
        flags.insert(0, "non-finite hidden states or logits")
    for r in rows:
        for k in ("cos_a", "cos_b"):
            if not math.isfinite(r[k]):
                r[k] = None
    return {"layers": rows, "finite": finite, "flags": flags, "threshold": threshold}
