"""The merge plan: a plain, printable, saveable description of how every child tensor is made.

Recipes (``darwin merge``) and genomes (``darwin evolve``) both decode into a :class:`MergePlan`;
the executor turns a plan into tensors without knowing where it came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from darwin.arch.mapper import Component
from darwin.arch.tokenizers import ChildVocab

#: report label of a task: merged from several inputs, or one input copied whole
TaskAction = Literal["blend", "transplant"]


@dataclass(frozen=True)
class Source:
    """One input tensor: a parent (its reference string) and the tensor's stored name."""

    model: str
    tensor: str


@dataclass(kw_only=True)
class TensorTask:
    """How one child tensor is made.

    Attributes:
        out_name: child tensor name.
        shape: tensor shape (equal for all inputs).
        method: merge method name (see :data:`darwin.kernels.methods.METHODS`).
        inputs: non-base parents, in order (``[N]``).
        base: the base input, or None.
        shared: per-tensor scalar parameters (``t``, ``lambda``, ``normalize``…).
        parent: per-parent parameters, each a list of N floats (``weight``, ``density``…).
        seeds: N mask seeds for random sparsification, else None.
        component: canonical component of the child tensor (``attn``, ``ffn``…).
        layer: child layer index, or None.
        action: ``blend`` or ``transplant`` (report label).
        units: independent tensors stored in this one (a fused mixture-of-experts tensor holds one
            per expert, :func:`darwin.arch.mapper.merge_units`); each is merged as its own tensor.
        vocab: a vocabulary tensor of a plan whose parents' tokenizers differ: its rows are
            mapped by token (:mod:`darwin.plan.vocab_rows`), and ``shape[0]`` is the child's rows.
    """

    out_name: str
    shape: tuple[int, ...]
    method: str
    inputs: list[Source]
    base: Source | None = None
    shared: dict[str, Any] = field(default_factory=dict)
    parent: dict[str, list[float]] = field(default_factory=dict)
    seeds: list[int] | None = None
    component: Component = "other"
    layer: int | None = None
    action: TaskAction = "blend"
    units: int = 1
    vocab: bool = False

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for s in self.shape:
            n *= s
        return n


def copy_task(out: str, src: Source, shape: tuple[int, ...] | list[int], component: Component = "other",
              layer: int | None = None) -> TensorTask:
    """A whole-tensor transplant: ``out`` is ``src`` unchanged (``passthrough``, scale 1)."""
    return TensorTask(out_name=out, shape=tuple(shape), method="passthrough", inputs=[src], parent={"scale": [1.0]},
                      component=component, layer=layer, action="transplant")


def linear_task(out: str, inputs: list[Source], weights: list[float], shape: tuple[int, ...] | list[int],
                component: Component = "other", layer: int | None = None, *, normalize: bool = True) -> TensorTask:
    """``Σ wᵢ·inputᵢ`` (divided by ``Σ wᵢ`` when ``normalize``; the ``linear`` kernel)."""
    return TensorTask(out_name=out, shape=tuple(shape), method="linear", inputs=list(inputs),
                      shared={"normalize": normalize}, parent={"weight": list(weights)}, component=component,
                      layer=layer)


@dataclass(frozen=True)
class ReportRow:
    """A line of the pre-flight action report.

    Attributes:
        tensor: child tensor name (or the input name where no child tensor can be made).
        action: ``blend``, ``transplant``, ``only-in-<letters>`` or ``shape-mismatch``.
        detail: shapes or sources, human readable.
    """

    tensor: str
    action: str
    detail: str = ""


@dataclass(kw_only=True)
class MergePlan:
    """A complete merge: tasks plus what the child folder needs besides weights.

    Attributes:
        tasks: one per child tensor.
        models: parent references in order; ``labels`` maps each to a letter (A, B, …).
        reference: the parent whose config, generation config and tokenizer the child starts from.
        config: the child's config dict.
        out_dtype: storage dtype of the child.
        tied: the child ties its output head to its input embedding.
        tokenizer_source: parent whose tokenizer files are copied.
        chat_template: template text or None (keep the tokenizer source's).
        report: pre-flight action rows, one per tensor.
        checks: config-level pre-flight checks ``(name, ok, detail)``.
        method: merge method (for the model card).
        recipe: the recipe or genome that produced the plan (for the card), as plain data.
        vocab: the child vocabulary when the parents' tokenizers differ (the child's tokenizer and
            every parent's row map), else None (the tokenizer source's files are copied).
    """

    tasks: list[TensorTask]
    models: list[str]
    reference: str
    config: dict[str, Any]
    out_dtype: torch.dtype
    tied: bool
    tokenizer_source: str | None
    chat_template: str | None = None
    report: list[ReportRow] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    method: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    vocab: ChildVocab | None = None

    @property
    def labels(self) -> dict[str, str]:
        """Parent reference → letter used in reports (``A``, ``B``, …)."""
        return {m: chr(ord("A") + i) if i < 26 else f"M{i}" for i, m in enumerate(self.models)}

    @property
    def num_parameters(self) -> int:
        """Parameters as a published checkpoint counts them: every stored tensor once (a tied head
        is not stored, so it is not counted twice); equals ``sum(p.numel() for p in
        model.parameters())`` of the loaded child."""
        return sum(t.numel for t in self.tasks)

    @property
    def output_bytes(self) -> int:
        """Size of the child's weights in bytes."""
        es = torch.empty((), dtype=self.out_dtype).element_size()
        return sum(t.numel for t in self.tasks) * es

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (JSON-serialisable) of the plan."""
        return {
            "models": self.models, "reference": self.reference, "method": self.method,
            "out_dtype": str(self.out_dtype).removeprefix("torch."), "tied": self.tied,
            "tasks": [{**asdict(t), "inputs": [asdict(s) for s in t.inputs],
                       "base": asdict(t.base) if t.base else None, "shape": list(t.shape)}
                      for t in self.tasks],
        }
