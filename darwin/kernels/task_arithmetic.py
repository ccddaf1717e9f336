"""The task-vector family: task arithmetic, TIES, DARE, Model Breadcrumbs, DELLA.

All eight methods are one pipeline (sparsify → optional sign election → weighted sum →
optional normalisation → scale by λ → add to base), selected by two switches:

===================  ==============  =========
method               sparsify        consensus
===================  ==============  =========
task_arithmetic      none            no
ties                 magnitude       yes
dare_linear          random          no
dare_ties            random          yes
breadcrumbs          band            no
breadcrumbs_ties     band            yes
della_linear         della           no
della                della           yes
===================  ==============  =========

Sources: Task Arithmetic arXiv 2212.04089; TIES-Merging arXiv 2306.01708; DARE arXiv 2311.03099;
Model Breadcrumbs arXiv 2312.06795; DELLA arXiv 2406.11617.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from darwin.kernels import sparsify as sp

_EPS = 1e-8


@dataclass(frozen=True)
class FamilyConfig:
    """Static switches of one task-vector method.

    Attributes:
        sparsify: ``None``, ``"magnitude"``, ``"random"``, ``"band"`` or ``"della"``.
        consensus: TIES sign election (``sum`` rule: sign of the weighted sum of task vectors).
    """

    sparsify: str | None
    consensus: bool


FAMILY = {
    "task_arithmetic": FamilyConfig(None, False),
    "ties": FamilyConfig("magnitude", True),
    "dare_linear": FamilyConfig("random", False),
    "dare_ties": FamilyConfig("random", True),
    "breadcrumbs": FamilyConfig("band", False),
    "breadcrumbs_ties": FamilyConfig("band", True),
    "della_linear": FamilyConfig("della", False),
    "della": FamilyConfig("della", True),
}


def sparsify_deltas(delta: torch.Tensor, cfg: FamilyConfig, *, density: torch.Tensor,
                    gamma: torch.Tensor | None = None, epsilon: torch.Tensor | None = None,
                    seeds: Sequence[Sequence[int]] | None = None, rescale: str | None = None,
                    row_len: int | None = None, mask_rng: str = "cpu_generator") -> torch.Tensor:
    """Apply the method's trim step to flattened task vectors ``delta`` ``[B, N, n]`` (float32).

    ``delta`` is overwritten (it is the caller's temporary); the result may be the same tensor.
    """
    if cfg.sparsify is None:
        return delta
    # delta is the caller's own temporary: sparsify it in place
    if cfg.sparsify == "magnitude":
        return sp.apply_rescale(delta, sp.magnitude_mask(delta, density), density.unsqueeze(-1), rescale, inplace=True)
    if cfg.sparsify == "band":
        assert gamma is not None  # the band methods declare gamma with a default
        return sp.apply_rescale(delta, sp.band_mask(delta, density, gamma), density.unsqueeze(-1), rescale,
                                inplace=True)
    if seeds is None:
        raise ValueError(f"{cfg.sparsify} sparsification needs per-tensor seeds")
    if cfg.sparsify == "random":
        return sp.random_drop(delta, density, seeds, rescale, inplace=True, mask_rng=mask_rng)
    if cfg.sparsify == "della":
        assert epsilon is not None  # the DELLA methods declare epsilon with a default
        return sp.della_drop(delta, density, epsilon, seeds, rescale, row_len or delta.shape[-1], mask_rng)
    raise ValueError(f"unknown sparsification {cfg.sparsify!r}")


def elect_and_combine(wdelta: torch.Tensor, weight: torch.Tensor, consensus: bool,
                      normalize: bool) -> torch.Tensor:
    """Combine weighted task vectors ``wdelta = wᵢ·δ̃ᵢ`` ``[B, N, n]`` into ``[B, n]``.

    With ``consensus`` (TIES "elect" and "disjoint merge"): ``s = sign(Σᵢ wᵢδ̃ᵢ)`` (0 counts as +),
    ``mᵢ = [sign(wᵢδ̃ᵢ) = s]`` (zeros never agree), result ``Σ mᵢwᵢδ̃ᵢ``, normalised by
    ``Σ mᵢwᵢ`` elementwise. Without: ``Σ wᵢδ̃ᵢ``, normalised by ``Σ wᵢ``. Zero divisors become 1.
    ``wdelta`` is overwritten (callers pass their own temporary); masks are bool, and the divisor
    is accumulated parent by parent, so no further tensor of ``wdelta``'s size is allocated.
    """
    w = weight.to(wdelta.dtype)
    if consensus:
        positive = wdelta.sum(1, keepdim=True) >= 0
        agree = (wdelta > 0) == positive
        agree &= wdelta != 0
        mixed = wdelta.mul_(agree).sum(1)
        div = torch.zeros_like(mixed)
        for i in range(wdelta.shape[1]):
            div.add_(agree[:, i] * w[:, i:i + 1])
        div = torch.where(div == 0, torch.ones_like(div), div)
    else:
        mixed = wdelta.sum(1)
        div = w.sum(1, keepdim=True)
        div = torch.where(div.abs() < _EPS, torch.ones_like(div), div)
    return mixed / div if normalize else mixed


def task_vector_merge(x: torch.Tensor, base: torch.Tensor, method: str, *, weight: torch.Tensor,
                      density: torch.Tensor | None = None, lam: torch.Tensor | None = None,
                      normalize: bool = False, rescale: str | None = None,
                      gamma: torch.Tensor | None = None, epsilon: torch.Tensor | None = None,
                      seeds: Sequence[Sequence[int]] | None = None, inplace: bool = False,
                      mask_rng: str = "cpu_generator") -> torch.Tensor:
    """Merge B tensors with one method of the task-vector family.

    ``θ = θ₀ + λ · combine(wᵢ · sparsify(θᵢ − θ₀))`` (see the module table).

    Args:
        x: ``[B, N, *S]`` float32 fine-tuned parents.
        base: ``[B, *S]`` float32 base model.
        method: a key of :data:`FAMILY`.
        weight: ``[B, N]`` per-parent weights wᵢ.
        density: ``[B, N]`` fraction kept ρᵢ (default 1).
        lam: ``[B]`` scale λ of the merged task vector (default 1).
        normalize: divide by the (elected) sum of weights.
        rescale: after sparsification, ``"paper"``, ``"l1"`` or ``None`` (see :mod:`darwin.kernels.sparsify`).
        gamma: ``[B, N]`` breadcrumbs outlier fraction.
        epsilon: ``[B, N]`` DELLA probability spread.
        seeds: ``B × N`` seeds for random masks.
        inplace: ``x`` may be overwritten (the executor passes its own stacked copy; saves one
            tensor-sized temporary).
        mask_rng: random-mask convention, ``cpu_generator`` or ``counter`` (:mod:`darwin.kernels.masks`).

    Returns:
        ``[B, *S]`` float32.
    """
    cfg = FAMILY[method]
    B, N = x.shape[:2]
    shape = x.shape[2:]
    delta = (x.sub_(base.unsqueeze(1)) if inplace else x - base.unsqueeze(1)).reshape(B, N, -1)
    if density is None:
        density = torch.ones((B, N), dtype=x.dtype, device=x.device)
    row_len = shape[-1] if len(shape) >= 1 else 1
    delta = sparsify_deltas(delta, cfg, density=density, gamma=gamma, epsilon=epsilon, seeds=seeds,
                            rescale=rescale, row_len=row_len, mask_rng=mask_rng)
    mixed = elect_and_combine(delta.mul_(weight.unsqueeze(-1).to(delta.dtype)), weight, cfg.consensus, normalize)
    if lam is not None:
        mixed = mixed * lam.unsqueeze(-1)
    return base + mixed.reshape((B,) + tuple(shape))
