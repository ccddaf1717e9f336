"""Probe signals: how much each layer changes the hidden state on five kinds of prompts.

For a decoder layer ℓ with input ``x`` and output ``y`` at every token:

* Block Influence ``BI_ℓ = 1 − E[cos(x, y)]`` (ShortGPT, arXiv 2403.03853);
* angular distance ``E[arccos(cos(x, y))/π]`` (Gromov et al., arXiv 2403.17887).

The expectation runs over all tokens of all prompts of a family. Probe sets ship with darwin
(``darwin/diagnosis/probes/*.txt``: reasoning, code, math, knowledge, language; 16 prompts each, written
for darwin; a file with ``---`` lines holds multi-line prompts separated by them).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from darwin.io.resources import package_dir

FAMILIES = ("reasoning", "code", "math", "knowledge", "language")


def shipped_probe_dir() -> Path:
    """The folder of the shipped probe prompt files (package data, found with importlib.resources)."""
    return package_dir("darwin.diagnosis", "probes")


def load_probes(families: tuple[str, ...] | list[str] = FAMILIES, probe_dir: Path | None = None
                ) -> dict[str, list[str]]:
    """Prompts per family from ``probe_dir`` (default: the shipped sets).

    Raises:
        FileNotFoundError: a family has no ``<family>.txt``.
    """
    d = probe_dir or shipped_probe_dir()
    out = {}
    for fam in families:
        text = (d / f"{fam}.txt").read_text()
        lines = text.splitlines()
        if any(line.strip() == "---" for line in lines):
            prompts = [p.strip("\n") for p in "\n".join(lines).split("\n---\n")]
        else:
            prompts = lines
        out[fam] = [p for p in prompts if p.strip()]
    return out


def decoder_layers(model: torch.nn.Module, num_layers: int) -> torch.nn.ModuleList:
    """The model's list of decoder layers (the ``ModuleList`` of ``num_layers`` blocks).

    Raises:
        ValueError: no such list.
    """
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == num_layers and \
                name.split(".")[-1] in ("layers", "h", "blocks", "layer"):
            return mod
    raise ValueError(f"no list of {num_layers} decoder layers found in {type(model).__name__}")


def _first_tensor(v):
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, (tuple, list)) and v:
        return _first_tensor(v[0])
    if hasattr(v, "last_hidden_state"):
        return v.last_hidden_state
    return None


@contextmanager
def capture_layers(layers: torch.nn.ModuleList) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Record (input, output) hidden states ``[batch, seq, d]`` of every layer during forwards."""
    records: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(layers)  # type: ignore[list-item]

    def hook(i):
        def fn(mod, args, kwargs, output):
            x = _first_tensor(args) if args else _first_tensor(kwargs.get("hidden_states"))
            records[i] = (x.detach().float(), _first_tensor(output).detach().float())
        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def layer_states(model, tokenizer, prompts: list[str], num_layers: int, max_length: int = 64
                 ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per prompt, per layer: (input, output) hidden states ``[seq, d]`` float32 (one prompt per forward)."""
    layers = decoder_layers(model, num_layers)
    device = next(model.parameters()).device
    out = []
    with capture_layers(layers) as rec:
        for p in prompts:
            ids = tokenizer(p, return_tensors="pt", truncation=True, max_length=max_length).input_ids.to(device)
            model(input_ids=ids)
            out.append([(x[0].cpu(), y[0].cpu()) for x, y in rec])
    return out


def layer_importance(model, tokenizer, probes: dict[str, list[str]], num_layers: int, max_length: int = 64
                     ) -> dict[str, dict[str, list[float]]]:
    """Block Influence and angular distance per layer, per probe family and overall.

    Returns:
        ``{"bi": {family: [L floats], "overall": [...]}, "angular": {...}}``; "overall" is the
        token-weighted mean over all families.
    """
    res: dict[str, dict[str, list[float]]] = {"bi": {}, "angular": {}}
    tot_cos = torch.zeros(num_layers, dtype=torch.float64)
    tot_ang = torch.zeros(num_layers, dtype=torch.float64)
    tot_n = 0
    for fam, prompts in probes.items():
        cos_sum = torch.zeros(num_layers, dtype=torch.float64)
        ang_sum = torch.zeros(num_layers, dtype=torch.float64)
        n = 0
        for states in layer_states(model, tokenizer, prompts, num_layers, max_length):
            for i, (x, y) in enumerate(states):
                c = torch.nn.functional.cosine_similarity(x, y, dim=-1).clamp(-1, 1).double()
                cos_sum[i] += c.sum()
                ang_sum[i] += (torch.arccos(c) / math.pi).sum()
            n += states[0][0].shape[0]
        res["bi"][fam] = (1 - cos_sum / n).tolist()
        res["angular"][fam] = (ang_sum / n).tolist()
        tot_cos += cos_sum
        tot_ang += ang_sum
        tot_n += n
    res["bi"]["overall"] = (1 - tot_cos / tot_n).tolist()
    res["angular"]["overall"] = (tot_ang / tot_n).tolist()
    return res
