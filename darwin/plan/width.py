"""Width pruning with closed-form re-fits: FFN neurons and attention head groups, no gradients.

Notation (``../shared/reference/golf-compression.md``): a gated FFN computes
``h = act(W_g x) ⊙ (W_u x) ∈ ℝ^I`` and ``y = W_d h``; calibration forward passes give the Gram
``G = Σ h hᵀ`` (``[I, I]``, float64), the mean ``μ`` and the count ``n`` of the inputs of ``down_proj``.
Keeping neurons ``K`` removes rows ``K̄`` of ``W_g``/``W_u`` and columns ``K̄`` of ``W_d``; the re-fit
replaces ``W_d[:, K]`` by the least-squares solution of ``min ‖W_d H − W′ H_K‖²``:

    ``W′ = W_d G[:, K] (G[K, K] + λI)⁻¹``,  ``λ = ridge · mean(diag G[K, K])``

(the ridge-regularised normal equations; MoDeGPT, arXiv 2408.09632; FLAP, arXiv 2312.11983). The same
re-fit of ``o_proj`` on the kept columns of its input ``z`` (the concatenated heads) prunes attention:
a GQA group is one key/value head and the query heads that share it, removed together so the config
stays stock (``num_attention_heads``, ``num_key_value_heads``, ``head_dim``).

Neuron scores (larger = keep):

* ``flap``: ``Var(h_j)·‖W_d[:, j]‖²`` (FLAP's fluctuation metric);
* ``second_moment``: ``E[h_j²]·‖W_d[:, j]‖²`` (the output energy the neuron carries);
* ``leverage``: ``[G (G + λI)⁻¹]_jj`` (ridge leverage);
* ``obs``: ``‖W_d[:, j]‖² / [(G + λI)⁻¹]_jj`` (the OBS saliency of removing neuron ``j`` alone);
* ``magnitude``: ``‖W_d[:, j]‖·(‖W_g[j]‖ + ‖W_u[j]‖)`` (weights only, no calibration: the baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SCORES = ("flap", "second_moment", "leverage", "obs", "magnitude")


@dataclass
class InputStats:
    """Calibration statistics of one linear layer's input.

    Attributes:
        gram: ``[D, D]`` float64, ``Σ x xᵀ`` over calibration tokens.
        total: ``[D]`` float64, ``Σ x``.
        count: number of tokens.
    """

    gram: torch.Tensor
    total: torch.Tensor
    count: int

    @classmethod
    def of(cls, x: torch.Tensor) -> InputStats:
        """The statistics of inputs ``x`` ``[..., D]`` (any float dtype; Gram computed in float32,
        kept in float64)."""
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        return cls((flat.T @ flat).double(), flat.double().sum(0), flat.shape[0])

    def add(self, other: InputStats) -> InputStats:
        """Accumulate ``other`` into these statistics (in place); returns self."""
        self.gram += other.gram
        self.total += other.total
        self.count += other.count
        return self

    @property
    def mean(self) -> torch.Tensor:
        """``[D]`` float64 mean input."""
        return self.total / max(self.count, 1)

    @property
    def second_moment(self) -> torch.Tensor:
        """``[D]`` float64 ``E[x²]``."""
        return torch.diagonal(self.gram) / max(self.count, 1)


def _ridge(gram: torch.Tensor, ridge: float) -> torch.Tensor:
    lam = ridge * float(torch.diagonal(gram).mean().clamp(min=1e-12))
    return gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)


def neuron_scores(kind: str, stats: InputStats | None, w_down: torch.Tensor, w_gate: torch.Tensor | None = None,
                  w_up: torch.Tensor | None = None, ridge: float = 1e-2) -> torch.Tensor:
    """Per-neuron keep scores ``[I]`` float64 (module docstring).

    Args:
        kind: one of :data:`SCORES`.
        stats: the ``down_proj`` input statistics (not needed for ``magnitude``).
        w_down: ``[H, I]``.
        w_gate, w_up: ``[I, H]`` (``magnitude`` only).
        ridge: λ as a fraction of the mean diagonal of the Gram.

    Raises:
        ValueError: an unknown kind, or statistics missing for a calibrated score.
    """
    col = w_down.double().square().sum(0)  # ‖W_d[:, j]‖²
    if kind == "magnitude":
        rows = sum(w.double().norm(dim=1) for w in (w_gate, w_up) if w is not None)
        return col.sqrt() * (rows if isinstance(rows, torch.Tensor) else 1.0)
    if kind not in SCORES:
        raise ValueError(f"unknown neuron score {kind!r}; known: {', '.join(SCORES)}")
    if stats is None:
        raise ValueError(f"the {kind!r} score needs calibration statistics")
    if kind == "flap":
        return (stats.second_moment - stats.mean.square()).clamp(min=0) * col
    if kind == "second_moment":
        return stats.second_moment * col
    inv = torch.linalg.inv(_ridge(stats.gram, ridge))
    if kind == "leverage":
        return torch.diagonal(stats.gram @ inv)
    return col / torch.diagonal(inv)


def keep_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, ascending (ties: the lower index)."""
    order = torch.argsort(-scores, stable=True)[:k]
    return torch.sort(order).values


def refit(w: torch.Tensor, stats: InputStats, keep: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """``W′ = W G[:, K] (G[K, K] + λI)⁻¹``: the kept columns' least-squares replacement for ``W``.

    Args:
        w: ``[out, D]`` any float dtype.
        stats: statistics of the layer's ``D``-dimensional input.
        keep: ``[k]`` kept column indices.
        ridge: λ as a fraction of the mean diagonal of ``G[K, K]`` (0: plain least squares).

    Returns:
        ``[out, k]`` in ``w``'s dtype.
    """
    return solve_refit(w.double() @ stats.gram, stats, keep, ridge).to(w.dtype)


def solve_refit(cross: torch.Tensor, stats: InputStats, keep: torch.Tensor, ridge: float = 1e-2) -> torch.Tensor:
    """``C[:, K] (G[K, K] + λI)⁻¹``: the least-squares map from the kept inputs to targets ``T`` given
    their cross Gram ``C = Σ t xᵀ`` (``[out, D]``, float64) and the inputs' statistics. With
    ``T = W X`` this is :func:`refit`; with dense targets and pruned inputs it is the sequential
    re-fit.

    Returns:
        ``[out, k]`` float64.
    """
    gkk = stats.gram[keep][:, keep]
    return torch.linalg.solve(_ridge(gkk, ridge) if ridge > 0 else gkk, cross[:, keep].T).T


def prune_ffn(w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, keep: torch.Tensor,
              stats: InputStats | None, *, refit_down: bool = True, ridge: float = 1e-2
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One gated FFN with only neurons ``keep``: ``(W_g[K], W_u[K], W_d′)``, ``W_d′`` re-fitted when
    ``refit_down`` (needs ``stats``), else ``W_d[:, K]``."""
    w_down_k = refit(w_down, stats, keep, ridge) if refit_down and stats is not None else w_down[:, keep]
    return w_gate[keep].contiguous(), w_up[keep].contiguous(), w_down_k.contiguous()


def group_columns(group: int, q_per_group: int, head_dim: int) -> torch.Tensor:
    """The ``o_proj`` input columns of GQA group ``group`` (its query heads, in order)."""
    start = group * q_per_group * head_dim
    return torch.arange(start, start + q_per_group * head_dim)


def group_scores(stats: InputStats, w_o: torch.Tensor, n_groups: int, q_per_group: int, head_dim: int
                 ) -> torch.Tensor:
    """``[n_groups]`` float64: the output energy ``tr(W_o,g G_gg W_o,gᵀ)/n`` each group adds to ``o_proj``."""
    out = []
    w = w_o.double()
    for g in range(n_groups):
        c = group_columns(g, q_per_group, head_dim)
        wg = w[:, c]
        out.append(float((wg @ stats.gram[c][:, c] * wg).sum()) / max(stats.count, 1))
    return torch.tensor(out, dtype=torch.float64)


def prune_attention(w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, w_o: torch.Tensor, keep_groups: torch.Tensor,
                    stats: InputStats | None, *, q_per_group: int, head_dim: int, refit_o: bool = True,
                    ridge: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One attention layer with only GQA groups ``keep_groups``: ``(W_q′, W_k′, W_v′, W_o′)``.

    ``W_q`` rows, ``W_k``/``W_v`` rows and ``W_o`` columns of the removed groups go; ``W_o`` is re-fitted
    on the kept columns of its input when ``refit_o`` (needs ``stats``).
    """
    qcols = torch.cat([group_columns(int(g), q_per_group, head_dim) for g in keep_groups])
    kv = torch.cat([torch.arange(int(g) * head_dim, (int(g) + 1) * head_dim) for g in keep_groups])
    w_o_k = refit(w_o, stats, qcols, ridge) if refit_o and stats is not None else w_o[:, qcols]
    return w_q[qcols].contiguous(), w_k[kv].contiguous(), w_v[kv].contiguous(), w_o_k.contiguous()


@dataclass(frozen=True)
class WidthPlan:
    """A uniform width cut: every layer keeps ``ffn`` neurons and ``groups`` GQA groups."""

    ffn: int
    groups: int


def llama_like_params(config: dict, plan: WidthPlan, vocab: int | None = None) -> int:
    """Parameters (tied embeddings once, as published) of a llama-family child cut to ``plan``.

    Counts embeddings (and an untied head), per layer ``q,k,v,o`` (with the kept heads), the gated FFN,
    two RMSNorm vectors, and the final norm; biases (``attention_bias``/``mlp_bias``) when set.
    """
    h = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_heads)
    hd = int(config.get("head_dim") or h // n_heads)
    qpg = n_heads // n_kv
    v = int(vocab if vocab is not None else config["vocab_size"])
    layers = int(config["num_hidden_layers"])
    q, kv = plan.groups * qpg * hd, plan.groups * hd
    attn = h * q + 2 * h * kv + q * h + (q + 2 * kv + h if config.get("attention_bias") else 0)
    mlp = 3 * h * plan.ffn + (2 * plan.ffn + h if config.get("mlp_bias") else 0)
    tied = bool(config.get("tie_word_embeddings", False))
    return v * h * (1 if tied else 2) + layers * (attn + mlp + 2 * h) + h


def widest_ffn(config: dict, groups: int, budget: int, vocab: int | None = None, multiple: int = 1) -> int:
    """The largest uniform FFN width (a multiple of ``multiple``) whose child stays under ``budget``
    parameters with ``groups`` GQA groups per layer; 0 when none fits."""
    lo, hi = 0, int(config["intermediate_size"])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if llama_like_params(config, WidthPlan(mid, groups), vocab) < budget:
            lo = mid
        else:
            hi = mid - 1
    return lo - lo % multiple
