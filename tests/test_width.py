"""Width pruning: exact re-fits, native loading of the child, the budget, calibration statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import darwin
from darwin.plan.width import (
    SCORES,
    InputStats,
    WidthPlan,
    keep_top,
    llama_like_params,
    neuron_scores,
    prune_attention,
    prune_ffn,
    refit,
    widest_ffn,
)


def _stats(h: torch.Tensor) -> InputStats:
    h = h.double()
    return InputStats(h.T @ h, h.sum(0), h.shape[0])


def test_keeping_every_neuron_reproduces_the_layer():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(200, 16, generator=g, dtype=torch.float64)
    w = torch.randn(8, 16, generator=g, dtype=torch.float64)
    out = refit(w, _stats(h), torch.arange(16), ridge=0.0)
    torch.testing.assert_close(out, w)
    gate, up = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    pg, pu, pd = prune_ffn(gate, up, w.float(), torch.arange(16), _stats(h), ridge=0.0)
    torch.testing.assert_close(pd, w.float(), atol=1e-5, rtol=1e-5)
    assert torch.equal(pg, gate) and torch.equal(pu, up)


@settings(max_examples=25, deadline=None)
@given(st.integers(4, 24), st.integers(1, 6), st.integers(0, 10_000))
def test_refit_is_the_least_squares_solution(n_in, n_out, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(4 * n_in + 10, n_in, generator=g, dtype=torch.float64)
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    keep = torch.sort(torch.randperm(n_in, generator=g)[: max(1, n_in // 2)]).values
    ours = refit(w, _stats(h), keep, ridge=0.0).numpy()
    want = np.linalg.lstsq(h[:, keep].numpy(), (h @ w.T).numpy(), rcond=None)[0].T  # independent: numpy lstsq
    np.testing.assert_allclose(ours, want, rtol=1e-6, atol=1e-8)
    def err(m):
        return float(np.square((h @ w.T).numpy() - h[:, keep].numpy() @ m.T).sum())
    assert err(ours) <= err(w[:, keep].numpy()) + 1e-9  # the re-fit never does worse than plain pruning


def test_scores_and_keep_top():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(100, 12, generator=g, dtype=torch.float64) * torch.arange(1, 13, dtype=torch.float64)
    w = torch.ones(4, 12)
    for kind in SCORES:
        s = neuron_scores(kind, _stats(h), w, torch.ones(12, 4), torch.ones(12, 4))
        assert s.shape == (12,) and torch.isfinite(s).all()
    s = neuron_scores("second_moment", _stats(h), w)
    assert keep_top(s, 3).tolist() == [9, 10, 11]  # the largest activations carry the most energy
    with pytest.raises(ValueError, match="needs calibration"):
        neuron_scores("flap", None, w)


def test_attention_groups_keep_all_and_refit():
    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(12, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    o = torch.randn(8, 12, generator=g)
    z = torch.randn(300, 12, generator=g, dtype=torch.float64)
    args = dict(q_per_group=3, head_dim=2)
    outs = prune_attention(q, k, v, o, torch.tensor([0, 1]), _stats(z), ridge=0.0, **args)
    torch.testing.assert_close(outs[3], o, atol=1e-5, rtol=1e-5)
    q1, k1, v1, o1 = prune_attention(q, k, v, o, torch.tensor([1]), _stats(z), ridge=0.0, **args)
    assert q1.shape == (6, 8) and k1.shape == (2, 8) and o1.shape == (8, 6)
    torch.testing.assert_close(q1, q[6:]) and torch.testing.assert_close(k1, k[2:])


CFG = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
       "num_hidden_layers": 30, "vocab_size": 49152, "tie_word_embeddings": True}


def test_parameter_count_of_smollm2_and_the_budget():
    assert llama_like_params(CFG, WidthPlan(1536, 3)) == 134_515_008  # SmolLM2-135M as published
    for budget in (100_000_000, 99_500_000, 120_000_000):
        for groups in (1, 2, 3):
            f = widest_ffn(CFG, groups, budget, vocab=19_034)
            assert llama_like_params(CFG, WidthPlan(f, groups), 19_034) < budget
            assert llama_like_params(CFG, WidthPlan(f + 1, groups), 19_034) >= budget or f == 1536
    assert widest_ffn(CFG, 3, 100_000_000, vocab=19_034) == 1204  # the reference sheet's width


@pytest.fixture(scope="module")
def calib(demo, tmp_path_factory):
    from pydoc_data.topics import topics

    f = tmp_path_factory.mktemp("calib") / "c.txt"
    f.write_text(" ".join(topics[k] for k in sorted(topics)[:30]))
    return f


def test_pruned_child_loads_natively_and_keep_all_reproduces_the_parent(demo, calib, tmp_path):
    from transformers import AutoModelForCausalLM

    parent = AutoModelForCausalLM.from_pretrained(demo["parent_a"], dtype=torch.float32).eval()
    cfg = parent.config
    r = darwin.prune(demo["parent_a"], tmp_path / "all", calibration=[calib], ffn=cfg.intermediate_size,
                     ridge=0.0, tokens=2048, window=64, progress=False)
    child = AutoModelForCausalLM.from_pretrained(tmp_path / "all", dtype=torch.float32).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(child(ids).logits, parent(ids).logits, atol=2e-3, rtol=1e-3)
    assert r.parameters_after == r.parameters_before
    kv = cfg.num_key_value_heads
    r = darwin.prune(demo["parent_a"], tmp_path / "cut", calibration=[calib], ffn=cfg.intermediate_size // 2,
                     groups=kv - 1, tokens=2048, window=64, progress=False)
    child = AutoModelForCausalLM.from_pretrained(tmp_path / "cut", dtype=torch.float32)
    c = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert c["intermediate_size"] == cfg.intermediate_size // 2 and c["num_key_value_heads"] == kv - 1
    assert c["num_attention_heads"] == (kv - 1) * (cfg.num_attention_heads // kv)
    assert sum(p.numel() for p in child.parameters()) == r.parameters_after
    with torch.no_grad():
        assert torch.isfinite(child(ids).logits).all()


def test_a_budget_is_met_and_bad_options_are_refused(demo, calib, tmp_path):
    from transformers import AutoModelForCausalLM

    from darwin.errors import DarwinError

    full = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(demo["parent_a"]).parameters())
    budget = int(full * 0.8)
    r = darwin.prune(demo["parent_a"], tmp_path / "b", calibration=[calib], max_params=budget, tokens=1024,
                     window=64, progress=False)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert sum(p.numel() for p in loaded.parameters()) == r.parameters_after < budget
    for kw, match in ((dict(), "give ffn"), (dict(ffn=10**6), "neurons per layer"), (dict(groups=99), "groups"),
                      (dict(ffn=8, score="nope"), "score"), (dict(max_params=10), "no FFN width fits")):
        with pytest.raises(DarwinError, match=match):
            darwin.prune(demo["parent_a"], tmp_path / "x", calibration=[calib], tokens=1024, window=64,
                         progress=False, **kw)
        assert not (tmp_path / "x").exists()


def test_sequential_keep_all_reproduces_and_cut_is_at_least_as_good_on_calibration(demo, calib, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from darwin.io.checkpoint import Checkpoint
    from darwin.plan.width import WidthPlan
    from darwin.search.prune import PruneRequest, calibration_windows, check_prunable, sequential_prune

    parent = AutoModelForCausalLM.from_pretrained(demo["parent_a"], dtype=torch.float32).eval()
    cfg = parent.config
    kv = cfg.num_key_value_heads
    ck = Checkpoint(demo["parent_a"])
    lay = check_prunable(dict(ck.config), ck)
    req = PruneRequest(model=str(demo["parent_a"]), calibration=[str(calib)], ridge=0.0, tokens=1024, window=64)
    windows = calibration_windows(AutoTokenizer.from_pretrained(demo["parent_a"]), [str(calib)], 1024, 64)
    model = AutoModelForCausalLM.from_pretrained(demo["parent_a"], dtype=torch.float32).eval()
    kept = sequential_prune(model, windows, req, WidthPlan(cfg.intermediate_size, kv), lay)  # the path, keeping all
    for name, t in kept.items():
        torch.testing.assert_close(t, ck.get(name).float(), atol=2e-4, rtol=1e-3)
    r = darwin.prune(demo["parent_a"], tmp_path / "all", calibration=[calib], ffn=cfg.intermediate_size,
                     tokens=1024, window=64, sequential=True, progress=False)
    assert r.calibration_tokens == 0  # nothing to cut: the weights are copied unchanged, not re-fitted
    from safetensors.torch import load_file

    copied = load_file(str(tmp_path / "all" / "model.safetensors"))
    assert all(torch.equal(copied[n], ck.get(n)) for n in copied)
    assert "copied unchanged" in (tmp_path / "all" / "README.md").read_text()
    for seq in (False, True):
        darwin.prune(demo["parent_a"], tmp_path / f"cut{seq}", calibration=[calib], ffn=cfg.intermediate_size // 2,
                     groups=kv - 1, tokens=1024, window=64, sequential=seq, progress=False)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo["parent_a"])
    x = tok(calib.read_text()[:4000], return_tensors="pt").input_ids[:, :128]
    with torch.no_grad():
        ref = parent(x).logits.log_softmax(-1)
        kl = {s: float(torch.nn.functional.kl_div(
            AutoModelForCausalLM.from_pretrained(tmp_path / f"cut{s}").eval()(x).logits.log_softmax(-1), ref,
            log_target=True, reduction="batchmean")) for s in (False, True)}
    assert kl[True] <= kl[False] * 1.05, kl  # the sequential re-fit tracks the dense model at least as well
