"""Python fitness functions used by the evolve tests (loaded as ``file.py:function``)."""

from __future__ import annotations

import math
import os

import torch
from safetensors.torch import load_file

_TARGET: dict[str, torch.Tensor] = {}
_CALLS = [0]


def _target() -> dict[str, torch.Tensor]:
    if not _TARGET:
        a = load_file(os.path.join(os.environ["DARWIN_TEST_A"], "model.safetensors"))
        b = load_file(os.path.join(os.environ["DARWIN_TEST_B"], "model.safetensors"))
        _TARGET.update({k: 0.7 * a[k].float() + 0.3 * b[k].float() for k in a})
    return _TARGET


def distance_to_target(model, tokenizer) -> float:
    """Minus the L2 distance of the model's weights to 0.7·A + 0.3·B (optimum 0).

    With DARWIN_TEST_KILL_AFTER=N the process dies hard (os._exit) on the N-th call, like a
    killed run. With DARWIN_TEST_DIE_ONCE=PATH the first process to reach its 4th call creates
    PATH and dies (a Ray worker killed mid-generation); later calls anywhere go on normally.
    """
    _CALLS[0] += 1
    kill = os.environ.get("DARWIN_TEST_KILL_AFTER")
    if kill and _CALLS[0] >= int(kill):
        os._exit(9)
    marker = os.environ.get("DARWIN_TEST_DIE_ONCE")
    if marker and _CALLS[0] >= 4:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # exactly one process wins
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os._exit(1)
    sd = model.state_dict()
    sq = sum(float(((sd[k].float() - t) ** 2).sum()) for k, t in _target().items())
    return -math.sqrt(sq)


def fails_when_b_heavy(model, tokenizer) -> float:
    """Raises for some candidates and returns NaN for others, to test failure handling."""
    w = model.state_dict()["model.layers.0.mlp.up_proj.weight"]
    s = float(w.float().sum())
    if s > 0 and int(abs(s) * 1e4) % 3 == 0:
        raise RuntimeError("synthetic failure")
    if int(abs(s) * 1e4) % 3 == 1:
        return float("nan")
    return -abs(s)


def nll_fixed_ids(model, tokenizer) -> float:
    """−mean NLL of a fixed random sequence of 24 tokens (ids < 128; tokenizer-free)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 128, (1, 24), generator=g)
    with torch.no_grad():
        return -float(model(input_ids=ids, labels=ids).loss)


def counted_nll(model, tokenizer) -> float:
    """:func:`nll_fixed_ids`, appending a line to the file DARWIN_TEST_CALLS on every call."""
    with open(os.environ["DARWIN_TEST_CALLS"], "a") as f:
        f.write("call\n")
    return nll_fixed_ids(model, tokenizer)


def weight_noise(model, tokenizer) -> float:
    """Pure noise: a deterministic pseudo-random number of the weights (nothing to learn)."""
    s = float(model.state_dict()["model.layers.0.mlp.up_proj.weight"].double().sum())
    return (int(abs(s) * 1e9) % 10_007) / 10_007


def distance_to_uniform(model, tokenizer) -> float:
    """Minus the L2 distance of the weights to 0.5·A + 0.5·B: the uniform merge is the optimum (0)."""
    a = load_file(os.path.join(os.environ["DARWIN_TEST_A"], "model.safetensors"))
    b = load_file(os.path.join(os.environ["DARWIN_TEST_B"], "model.safetensors"))
    sd = model.state_dict()
    return -math.sqrt(sum(float(((sd[k].float() - 0.5 * a[k].float() - 0.5 * b[k].float()) ** 2).sum()) for k in a))


def constant_zero(model, tokenizer) -> float:
    return 0.0


_DEPTH: dict[str, torch.Tensor] = {}


def _depth_target() -> dict[str, torch.Tensor]:
    """Layers 0-1 from A, layers 2-3 from B, everything else 0.5·A + 0.5·B: a depth structure no
    uniform merge has, which the ``zones`` genome (zone 0 = layers 0-1 of 4) can reach."""
    if not _DEPTH:
        a = load_file(os.path.join(os.environ["DARWIN_TEST_A"], "model.safetensors"))
        b = load_file(os.path.join(os.environ["DARWIN_TEST_B"], "model.safetensors"))
        for k in a:
            layer = int(k.split(".")[2]) if k.startswith("model.layers.") else None
            w = 0.5 if layer is None else (0.0 if layer < 2 else 1.0)
            _DEPTH[k] = (1 - w) * a[k].float() + w * b[k].float()
    return _DEPTH


def depth_tensor_scores(model, tokenizer) -> list[float]:
    """Per tensor (the "documents"): minus the RMS distance of the weights to the depth target."""
    sd = model.state_dict()
    return [-math.sqrt(float(((sd[k].float() - t) ** 2).mean())) for k, t in sorted(_depth_target().items())]


def depth_target(model, tokenizer) -> float:
    """Mean of :func:`depth_tensor_scores` (optimum 0); document-level, so a paired bootstrap applies."""
    s = depth_tensor_scores(model, tokenizer)
    return sum(s) / len(s)


depth_target.doc_scores = depth_tensor_scores  # type: ignore[attr-defined]
