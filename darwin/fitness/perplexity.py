"""Perplexity fitness over local text files.

The texts are tokenised once (concatenated in sorted file order, separated by the EOS token if the
tokenizer has one), truncated to ``max_tokens``, and cut into consecutive non-overlapping windows
of ``window`` tokens; the last partial window is kept if it has at least 2 tokens. The fitness is
the negative mean token negative log-likelihood in nats, ``−log(perplexity)``: higher is better,
and ``exp(−fitness)`` is the perplexity. Deterministic: fixed tokens, fixed windows, no sampling.
"""

from __future__ import annotations

import math
import os

import torch

from darwin.errors import DarwinError
from darwin.io.textfiles import collect_files


@torch.no_grad()
def sequence_nll(model, seqs: list[torch.Tensor], batch_size: int) -> list[tuple[float, int]]:
    """Per sequence (``[T]`` int64, T ≥ 2): the NLL sum in nats of its predicted tokens and their count.

    Sequences are right-padded into batches of ``batch_size`` with an attention mask; the
    cross-entropy is taken one sequence at a time, so the float32 log-softmax is ``[T, V]``, never
    ``[B, T, V]``.
    """
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        lens = [w.numel() for w in chunk]
        batch = torch.zeros(len(chunk), max(lens), dtype=torch.long)
        mask = torch.zeros_like(batch)
        for j, w in enumerate(chunk):
            batch[j, : lens[j]] = w
            mask[j, : lens[j]] = 1
        logits = model(input_ids=batch.to(device), attention_mask=mask.to(device)).logits
        tgt = batch[:, 1:].to(device)
        for j, n in enumerate(lens):
            nll = torch.nn.functional.cross_entropy(logits[j, : n - 1].float(), tgt[j, : n - 1], reduction="sum")
            out.append((float(nll.double()), n - 1))
        del logits
    return out


class PerplexityFitness:
    """``−log(perplexity)`` of a model on fixed token windows of local text.

    Args:
        files: text files or folders.
        max_tokens: token budget (the first ``max_tokens`` tokens of the concatenation).
        window: window length in tokens.
        batch_size: windows per forward pass.
    """

    label = "perplexity fitness"

    def __init__(self, files: list[str | os.PathLike], max_tokens: int = 2048, window: int = 512,
                 batch_size: int = 4):
        self.files = collect_files(files, self.label)
        if not any(f.read_text(errors="replace").strip() for f in self.files):
            raise DarwinError(f"{self.label}: {[str(f) for f in self.files]} contain no text")
        self.max_tokens, self.window, self.batch_size = max_tokens, window, batch_size
        self._ids: torch.Tensor | None = None
        self._tok_key: int | None = None

    def token_ids(self, tokenizer) -> torch.Tensor:
        """The fixed token sequence (``[≤ max_tokens]`` int64), tokenised once per tokenizer."""
        if self._ids is None or self._tok_key != id(tokenizer):
            sep = tokenizer.eos_token or "\n\n"
            text = sep.join(f.read_text(errors="replace") for f in self.files)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
            if ids.numel() < 2:
                raise DarwinError(f"{self.label}: fewer than 2 tokens in {[str(f) for f in self.files]}")
            self._ids, self._tok_key = ids[: self.max_tokens], id(tokenizer)
        return self._ids

    def windows(self, tokenizer) -> list[torch.Tensor]:
        """The scored windows (each ``[≤ window]`` int64, at least 2 tokens)."""
        ids = self.token_ids(tokenizer)
        windows = [ids[i:i + self.window] for i in range(0, ids.numel(), self.window)]
        return [w for w in windows if w.numel() >= 2]

    def mean_nll(self, model, tokenizer) -> float:
        """Mean negative log-likelihood per predicted token, in nats."""
        total, count = self.nll_sum(model, tokenizer)
        return total / count

    @torch.no_grad()
    def nll_sum(self, model, tokenizer) -> tuple[float, int]:
        """Total negative log-likelihood (nats) of the predicted tokens, and their count."""
        per = sequence_nll(model, self.windows(tokenizer), self.batch_size)
        total, count = sum(t for t, _ in per), sum(c for _, c in per)
        return total, count

    def __call__(self, model, tokenizer) -> float:
        return -self.mean_nll(model, tokenizer)

    @staticmethod
    def to_perplexity(fitness: float) -> float:
        """Fitness (−mean NLL) → perplexity."""
        return math.exp(-fitness)


class BitsPerByteFitness(PerplexityFitness):
    """``−bits per byte``: the NLL of the predicted tokens in bits over their UTF-8 bytes.

    Comparable across tokenizers (a trimmed vocabulary, another family), unlike perplexity. The
    bytes of a window are those of ``tokenizer.decode(window[1:])`` (the first token of each
    window is context, not predicted). Same windows and determinism as :class:`PerplexityFitness`.
    """

    label = "bits_per_byte fitness"

    def predicted_bytes(self, tokenizer) -> int:
        """UTF-8 bytes covered by the predicted tokens."""
        return sum(len(tokenizer.decode(w[1:].tolist()).encode("utf-8")) for w in self.windows(tokenizer))

    def bits_per_byte(self, model, tokenizer) -> float:
        """NLL in bits per UTF-8 byte."""
        total, _ = self.nll_sum(model, tokenizer)
        return total / math.log(2) / self.predicted_bytes(tokenizer)

    def __call__(self, model, tokenizer) -> float:
        return -self.bits_per_byte(model, tokenizer)


class DocumentFitness:
    """Document-level text fitness: each document scored on its first ``window`` tokens, the mean over documents.

    Documents come from :func:`darwin.io.documents.load_documents` (files, JSONL records or
    separator-delimited chunks); each is tokenised once per tokenizer (no EOS added), cut to its
    first ``window`` tokens, and documents with fewer than 2 tokens are skipped. A document's score
    is ``−mean NLL`` of its predicted tokens in nats (``unit="nats"``) or ``−bits per byte``
    (``unit="bits_per_byte"``: the NLL in bits over the UTF-8 bytes of the predicted tokens). The
    fitness is the unweighted mean of the document scores, so every document counts the same
    whatever its length; :meth:`doc_scores` keeps them for paired comparisons between models.

    Args:
        files: text files, JSONL files or folders.
        window: tokens scored per document (its first ``window``).
        batch_size: documents per forward pass.
        separator: cut files into documents at this string (see :mod:`darwin.io.documents`).
        text_field: JSONL field holding a record's text.
        unit: ``"nats"`` or ``"bits_per_byte"``.
        part, part_share: keep only the ``"fitness"`` or ``"selection"`` side of the hold-out of
            ``part_share`` of the documents (:func:`darwin.io.documents.split_documents`).

    Raises:
        DarwinError: no document, or none with 2 tokens (naming the files).
    """

    def __init__(self, files: list[str | os.PathLike], window: int = 512, batch_size: int = 8,
                 separator: str | None = None, text_field: str = "text", unit: str = "nats",
                 part: str | None = None, part_share: float = 0.3):
        from darwin.io.documents import load_documents, split_documents

        if unit not in ("nats", "bits_per_byte"):
            raise DarwinError(f"document fitness: unit must be nats or bits_per_byte, got {unit!r}")
        self.label = f"{'perplexity' if unit == 'nats' else 'bits_per_byte'} fitness (documents)"
        self.docs = load_documents(files, separator=separator, text_field=text_field, what=self.label)
        if part is not None:
            self.docs = split_documents(self.docs, part_share, part)
        self.window, self.batch_size, self.unit = window, batch_size, unit
        self._ids: list[torch.Tensor] | None = None
        self._names: list[str] = []
        self._tok_key: int | None = None

    def token_ids(self, tokenizer) -> list[torch.Tensor]:
        """Each kept document's first ``window`` token ids (int64), tokenised once per tokenizer."""
        if self._ids is None or self._tok_key != id(tokenizer):
            ids, names = [], []
            for d in self.docs:
                t = tokenizer(d.text, add_special_tokens=False, return_tensors="pt").input_ids[0][: self.window]
                if t.numel() >= 2:
                    ids.append(t)
                    names.append(d.name)
            if not ids:
                raise DarwinError(f"{self.label}: no document has 2 tokens ({len(self.docs)} documents)")
            self._ids, self._names, self._tok_key = ids, names, id(tokenizer)
        return self._ids

    def document_names(self, tokenizer) -> list[str]:
        """Names of the scored documents, in :meth:`doc_scores` order."""
        self.token_ids(tokenizer)
        return list(self._names)

    @torch.no_grad()
    def doc_nll(self, model, tokenizer) -> list[tuple[float, int]]:
        """Per document: (NLL sum in nats of its predicted tokens, their count)."""
        return sequence_nll(model, self.token_ids(tokenizer), self.batch_size)

    def doc_scores(self, model, tokenizer) -> list[float]:
        """Per-document scores (higher is better), in :meth:`document_names` order."""
        nll = self.doc_nll(model, tokenizer)
        if self.unit == "nats":
            return [-s / c for s, c in nll]
        nbytes = [len(tokenizer.decode(w[1:].tolist()).encode("utf-8")) for w in self.token_ids(tokenizer)]
        return [-(s / math.log(2)) / max(b, 1) for (s, _), b in zip(nll, nbytes)]

    def __call__(self, model, tokenizer) -> float:
        scores = self.doc_scores(model, tokenizer)
        return sum(scores) / len(scores)
