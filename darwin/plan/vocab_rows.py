"""Merge the vocabulary tensors (input embeddings, untied heads) of parents whose tokenizers differ.

Every parent's rows are first mapped to the child's ids (:class:`darwin.arch.tokenizers.ChildVocab`).
Where a parent lacks a token, its row is filled as mergekit fills it (``PermutedVocabulary`` in
mergekit 0.1.x): with the row of the only parent that has the token; else with the base model's row
when the base has it; else with the mean of the rows of the parents that have it; with zeros when no
parent has it. Rows beyond the tokenizer (``pad_to_multiple_of``) are each parent's mean row, the
vocabulary-expansion rule of Hewitt (2021, "Initializing new word embeddings for pretrained language
models"). The method then runs over the whole filled tensors, so TIES trimming and DARE masks see
every row, exactly as in a merge of parents that share a tokenizer.

A filled row must not vote. For most merges it does not: a filled task vector is zero (the base
row), which a TIES sign election ignores and an un-normalised sum adds nothing to; with two parents
the filled row equals the only present row. Where a filled row would count (three or more parents in
``linear``; ``linear`` with ``normalize: false``; a base method whose weights are normalised over
every parent, such as ``task_arithmetic`` with ``normalize: true``; ``model_stock``; ``nuslerp``
with a base), those rows are merged again with only the parents that have the token, whose weights
renormalise over them; where those weights sum to zero they become equal, so rows stay finite. This
is where darwin differs from mergekit on purpose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from darwin.arch.tokenizers import ChildVocab
from darwin.errors import CompatibilityError
from darwin.kernels.methods import get_method
from darwin.kernels.task_arithmetic import FAMILY
from darwin.plan.plan import Source, TensorTask

Merge = Callable[[list[TensorTask], Callable[[str, str], torch.Tensor], torch.device], torch.Tensor]


def _effective(model: str, vocab: ChildVocab, mats: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[n_tokens, *S]`` float32: ``model``'s row for each child id (its own, a ``tokens:``
    substitute, or zeros where absent or a zero substitute)."""
    em, er = vocab.eff_model[model], vocab.eff_row[model]
    ref = next(iter(mats.values()))
    out = torch.zeros((vocab.n_tokens, *ref.shape[1:]), dtype=torch.float32, device=ref.device)
    for k in em.unique().tolist():
        if k >= 0:
            sel = em == k
            out[sel] = mats[vocab.models[k]][er[sel].to(ref.device)].float()
    return out


def filled_rows(task: TensorTask, vocab: ChildVocab, load: Callable[[str, str], torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Every task model's rows in the child's id order, filled where absent (module docstring).

    Returns:
        ``(rows, present)``: per model, ``[vocab.rows, *S]`` float32 (padding rows included) and
        ``BoolTensor[n_tokens]``.
    """
    sources = task.inputs + ([task.base] if task.base is not None else [])
    mats = {s.model: load(s.model, s.tensor) for s in sources}
    for k in {int(c) for m in mats for c in vocab.eff_model[m].unique().tolist() if c >= 0}:
        name = vocab.models[k]
        if name not in mats:
            raise CompatibilityError(f"{task.out_name}: tokenizer.tokens takes rows from {name}, which is not "
                                     "a source of this tensor")
    x = {m: _effective(m, vocab, mats) for m in mats}
    present = {m: vocab.present(m).to(x[m].device) for m in mats}
    count = torch.stack([present[m] for m in mats]).sum(0)
    fill = sum(x[m] for m in mats) / count.clamp(min=1).unsqueeze(-1).to(torch.float32)
    if task.base is not None:
        b = task.base.model
        fill = torch.where(present[b].unsqueeze(-1), x[b], fill)
    out = {}
    for m in mats:
        rows = torch.empty((vocab.rows, *x[m].shape[1:]), dtype=torch.float32, device=x[m].device)
        rows[:vocab.n_tokens] = torch.where(present[m].unsqueeze(-1), x[m], fill)
        if vocab.rows > vocab.n_tokens:
            rows[vocab.n_tokens:] = rows[:vocab.n_tokens].mean(0)
        out[m] = rows
    return out, present


def _votes_when_filled(task: TensorTask, n_present: int) -> bool:
    """Whether filled rows of absent parents would change this method's result (module docstring)."""
    if task.base is not None:
        fam = FAMILY.get(task.method)
        return fam is None or (not fam.consensus and bool(task.shared.get("normalize", False)))
    return n_present >= 2 or (task.method == "linear" and not task.shared.get("normalize", True))


def merge_vocab_task(task: TensorTask, vocab: ChildVocab, load: Callable[[str, str], torch.Tensor],
                     device: torch.device, merge: Merge) -> torch.Tensor:
    """Merge one vocabulary tensor of a surgery plan.

    Args:
        task: the child tensor (``shape[0] == vocab.rows``); its inputs are the parents' tensors.
        vocab: the child vocabulary and row maps.
        load: ``(model, tensor name) → tensor``.
        device: kernel device.
        merge: the executor's batch merge (``merge_batch``).

    Returns:
        ``[vocab.rows, *S]`` float32 on ``device``.
    """
    rows, present = filled_rows(task, vocab, load)
    rows = {m: r.to(device) for m, r in rows.items()}
    full = replace(task, shape=tuple(next(iter(rows.values())).shape), vocab=False)
    out = merge([full], lambda m, n: rows[m], device)[0]
    spec = get_method(task.method)
    names = [s.model for s in task.inputs]
    codes = torch.zeros(vocab.n_tokens, dtype=torch.long, device=out.device)
    for j, m in enumerate(names):
        codes |= present[m].to(out.device).long() << j
    for code in codes.unique().tolist():
        keep = [j for j in range(len(names)) if code >> j & 1]
        if len(keep) == len(names) or not keep or not _votes_when_filled(task, len(keep)):
            continue
        if len(keep) < spec.min_parents or (spec.max_parents is not None and len(keep) > spec.max_parents):
            continue
        ids = (codes == code).nonzero().squeeze(1).to(device)
        out[ids] = _merge_subset(task, keep, rows, ids, device, merge)
    return out


def _merge_subset(task: TensorTask, keep: list[int], rows: dict[str, torch.Tensor], ids: torch.Tensor,
                  device: torch.device, merge: Merge) -> torch.Tensor:
    """Rows ``ids`` merged with only the inputs ``keep`` (their weights renormalise over them)."""
    parent = {k: [v[j] for j in keep] for k, v in task.parent.items()}
    if "weight" in parent and sum(parent["weight"]) == 0:
        parent["weight"] = [1.0] * len(keep)
    sub = replace(task, inputs=[Source(task.inputs[j].model, task.inputs[j].tensor) for j in keep], parent=parent,
                  seeds=[task.seeds[j] for j in keep] if task.seeds is not None else None,
                  shape=(len(ids), *task.shape[1:]), vocab=False)
    return merge([sub], lambda m, n: rows[m][ids], device)[0]
