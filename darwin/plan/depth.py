"""Depth operators: keep, drop or collapse decoder layers (for sub-budget children).

A depth plan keeps an ordered subset of the parent's layers; every other layer is either dropped
or **collapsed** into the kept layer before it (into the first kept layer when no kept layer
precedes it). Collapse follows LaCo's Reserving-Differences-while-Seamless-Connection rule (Yang
et al., "LaCo: Large Language Model Pruning via Layer Collapse", arXiv 2402.11187): a run of layers
``l, l+1, …, l+m`` is folded into layer ``l`` as ``θ*_l = θ_l + c·Σ_{k=1..m} (θ_{l+k} − θ_l)``,
with ``c = 1`` LaCo's rule and ``c = 0`` a plain drop (ShortGPT-style, arXiv 2403.03853). Since the
result is a linear combination of same-shaped tensors, the task is the ``linear`` kernel with
weights ``1 − c·m`` and ``c`` (unnormalised). In a hybrid (attention and SSM layers) a removed
layer only folds into the tensors it shares with the kept layer. With two parents of the same family the kept layer
is a blend: weights are multiplied by ``1 − r`` for parent A and ``r`` for parent B.
"""

from __future__ import annotations

from dataclasses import dataclass

from darwin.arch.mapper import ArchMap
from darwin.errors import RecipeError
from darwin.plan.plan import Source, TensorTask, copy_task, linear_task


@dataclass(frozen=True)
class DepthChoice:
    """Which parent layers the child keeps and where the others go.

    Attributes:
        keep: kept parent layer indices, ascending (child layer ``k`` is parent layer ``keep[k]``).
        folded: per kept layer, the parent layers collapsed into it (empty: none).
        collapse: ``c`` in ``θ_l + c·Σ(θ_f − θ_l)`` (0 drops the removed layers).
    """

    keep: tuple[int, ...]
    folded: tuple[tuple[int, ...], ...]
    collapse: float


def choose_depth(num_layers: int, keep: list[int], collapse: float) -> DepthChoice:
    """Fold every removed layer into the nearest kept layer before it (or the first kept layer).

    Raises:
        RecipeError: no layer kept, an index out of range or repeated, ``collapse`` outside [0, 1].
    """
    ks = sorted(set(keep))
    if not ks or len(ks) != len(keep) or ks[0] < 0 or ks[-1] >= num_layers:
        raise RecipeError(f"keep: need distinct layer indices in [0, {num_layers}), got {keep}")
    if not 0.0 <= collapse <= 1.0:
        raise RecipeError(f"collapse must be in [0, 1], got {collapse}")
    folded: dict[int, list[int]] = {k: [] for k in ks}
    for i in range(num_layers):
        if i in folded:
            continue
        before = [k for k in ks if k < i]
        folded[before[-1] if before else ks[0]].append(i)
    return DepthChoice(tuple(ks), tuple(tuple(folded[k]) for k in ks), float(collapse))


def layer_tasks(amap: ArchMap, sources: list[tuple[str, float]], choice: DepthChoice,
                shapes: dict[str, tuple[int, ...]]) -> list[TensorTask]:
    """Tasks for every decoder-layer tensor of the child.

    Args:
        amap: parent A's tensor roles (all parents share the family and names).
        sources: ``(parent reference, weight)`` pairs, weights summing to 1 (one parent: weight 1).
        choice: from :func:`choose_depth`.
        shapes: stored name → shape (parent A).

    Returns:
        one task per child layer tensor: a ``passthrough`` copy when a single parent and nothing
        folded, else an unnormalised ``linear`` combination.
    """
    tasks = []
    c = choice.collapse
    for k, (i, folded) in enumerate(zip(choice.keep, choice.folded)):
        fold = folded if c > 0 else ()
        for role in amap.layer_tensors(i):
            out = role.renamed(k)
            # a folded layer contributes where it has the same tensor (hybrids mix layer kinds)
            same = [f for f in fold if shapes.get(role.renamed(f)) == shapes[role.name]]
            terms = [(role.name, 1.0 - c * len(same))] + [(role.renamed(f), c) for f in same]
            inputs, weights = [], []
            for ref, w_parent in sources:
                for name, w in terms:
                    inputs.append(Source(ref, name))
                    weights.append(w_parent * w)
            shape = shapes[role.name]
            tasks.append(copy_task(out, inputs[0], shape, role.component, k) if len(inputs) == 1 else
                         linear_task(out, inputs, weights, shape, role.component, k, normalize=False))
    return tasks
