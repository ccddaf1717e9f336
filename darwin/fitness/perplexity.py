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
        windows = self.windows(tokenizer)
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for i in range(0, len(windows), self.batch_size):
            chunk = windows[i:i + self.batch_size]
            lens = [w.numel() for w in chunk]
            batch = torch.zeros(len(chunk), max(lens), dtype=torch.long)
            mask = torch.zeros_like(batch)
            for j, w in enumerate(chunk):
                batch[j, : lens[j]] = w
                mask[j, : lens[j]] = 1
            logits = model(input_ids=batch.to(device), attention_mask=mask.to(device)).logits
            tgt = batch[:, 1:].to(device)
            for j, n in enumerate(lens):  # one window at a time: the float32 log-softmax is [T, V], not [B, T, V]
                nll = torch.nn.functional.cross_entropy(logits[j, : n - 1].float(), tgt[j, : n - 1], reduction="sum")
                total += float(nll.double())
                count += n - 1
            del logits
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
