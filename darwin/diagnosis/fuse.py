"""MRI for a pair of parents: per-tensor ratio r_MRI = importance_B / (importance_A + importance_B).

darwin's definition (scale-free, so the two signals can be weighed against each other):

``r_MRI = w_s · s_B/(s_A + s_B) + w_p · p_B/(p_A + p_B)``

with ``s`` the tensor's static V5 score in each parent, ``p`` the Block Influence of the tensor's
layer (overall probe family) in each parent, ``w_s = 0.4``, ``w_p = 0.6`` by default (Darwin
engine V6: 0.4·static + 0.6·probe). Tensors outside the layers use the static term alone. A pair
that is zero in both parents gets the neutral 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping


def _share(a: float, b: float) -> float:
    s = a + b
    return 0.5 if s <= 0 else b / s


def pair_ratios(static_a: Mapping[str, float], static_b: Mapping[str, float],
                layer_of: Mapping[str, int | None], probe_a: list[float] | None, probe_b: list[float] | None,
                w_static: float = 0.4, w_probe: float = 0.6) -> dict[str, float]:
    """r_MRI per tensor (fraction that should come from parent B), in [0, 1].

    Args:
        static_a, static_b: tensor name → V5 score in A and B.
        layer_of: tensor name → layer index or None.
        probe_a, probe_b: per-layer Block Influence of A and B (None: static only).
        w_static, w_probe: weights of the two signals (normalised to sum 1).
    """
    tot = w_static + w_probe
    ws, wp = w_static / tot, w_probe / tot
    out = {}
    for name in static_a:
        if name not in static_b:
            continue
        rs = _share(static_a[name], static_b[name])
        layer = layer_of.get(name)
        if layer is None or probe_a is None or probe_b is None:
            out[name] = rs
        else:
            out[name] = ws * rs + wp * _share(max(probe_a[layer], 0.0), max(probe_b[layer], 0.0))
    return out
