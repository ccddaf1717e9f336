"""Transformer × SSM crossover into a Bamba hybrid, and the cross-family genomes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_families import load_tensors, make_model, save
from transformers import AutoModelForCausalLM

import darwin
from darwin.errors import CompatibilityError, RecipeError
from darwin.io.checkpoint import Checkpoint

VOCAB = 384  # the demo tokenizer's
SSM = dict(num_hidden_layers=4, tie_word_embeddings=False, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def tokenizer():
    from darwin.demo import build_tokenizer

    return build_tokenizer(VOCAB)


def _with_tok(folder: Path, tok) -> Path:
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tokenizer):
    """Tiny llama (hidden 32, 4 layers, untied) and tiny Mamba-2 (hidden 32, 4 layers), same tokenizer."""
    root = tmp_path_factory.mktemp("cross")
    llama = save(make_model("llama", 0, num_hidden_layers=4, rms_norm_eps=1e-5, vocab_size=VOCAB),  # = Mamba-2 eps
                 root / "llama")
    mamba = save(make_model("mamba2", 1, **SSM), root / "mamba2")
    return _with_tok(llama, tokenizer), _with_tok(mamba, tokenizer)


def _logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[1, 5, 9, 17, 33, 64, 100, 7, 3, 2, 11, 90]])


@pytest.mark.parametrize("mixers", ["ABAB", "BBAA"])
def test_hybrid_loads_with_chosen_layers_and_copies_bit_for_bit(pair, tmp_path, mixers):
    llama, mamba = pair
    res = darwin.crossover(str(llama), str(mamba), tmp_path / "child", mixers=mixers, progress=False)
    cfg = json.loads((tmp_path / "child" / "config.json").read_text())
    assert cfg["model_type"] == "bamba" and cfg["attn_layer_indices"] == [i for i, m in enumerate(mixers) if m == "A"]
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "child", dtype=torch.float32,
                                                       output_loading_info=True)
    model.eval()
    assert type(model).__name__ == "BambaForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for i, m in enumerate(mixers):
        layer = model.model.layers[i]
        assert hasattr(layer, "self_attn") == (m == "A") and hasattr(layer, "mamba") == (m == "B")
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    assert torch.isfinite(logits).all()
    out = model.generate(IDS[:, :4], max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 9)
    # every child tensor equals its source bit for bit (all copies: ratios are 0)
    child = load_tensors(tmp_path / "child")
    src = {str(llama): load_tensors(llama), str(mamba): load_tensors(mamba)}
    assert len(child) == len(res.plan.tasks)
    for t in res.plan.tasks:
        assert t.method == "passthrough"
        s = t.inputs[0]
        assert torch.equal(child[t.out_name], src[s.model][s.tensor]), t.out_name
    # SSM hyper-parameters land in the config
    m2 = json.loads((mamba / "config.json").read_text())
    assert (cfg["mamba_n_heads"], cfg["mamba_d_head"], cfg["mamba_d_state"], cfg["mamba_n_groups"],
            cfg["mamba_d_conv"], cfg["mamba_chunk_size"]) == (m2["num_heads"], m2["head_dim"], m2["state_size"],
                                                              m2["n_groups"], m2["conv_kernel"], m2["chunk_size"])


def test_all_attention_hybrid_computes_the_transformer(pair, tmp_path):
    """Mixers AAAA, embeddings from A: the Bamba child is the llama parent (same logits)."""
    llama, mamba = pair
    darwin.crossover(str(llama), str(mamba), tmp_path / "child", mixers="AAAA", progress=False)
    torch.testing.assert_close(_logits(tmp_path / "child", IDS), _logits(llama, IDS), rtol=1e-5, atol=1e-5)


def test_all_ssm_hybrid_computes_the_mamba2_parent(pair, tmp_path):
    """Mixers BBBB with a zero FFN output and embeddings from B: the child is the Mamba-2 parent.

    Checks the SSM mapping end to end (in_proj layout, conv, dt, A, D, gated norm, hyper-parameters).
    """
    llama, mamba = pair
    from safetensors.torch import save_file

    t = load_tensors(llama)
    for k in t:
        if k.endswith("mlp.down_proj.weight"):
            t[k] = torch.zeros_like(t[k])
    zero = tmp_path / "llama-zero-ffn"
    zero.mkdir()
    save_file(t, str(zero / "model.safetensors"), metadata={"format": "pt"})
    (zero / "config.json").write_text((llama / "config.json").read_text())
    darwin.crossover(str(zero), str(mamba), tmp_path / "child", mixers="BBBB", embed_from="B", progress=False)
    torch.testing.assert_close(_logits(tmp_path / "child", IDS), _logits(mamba, IDS), rtol=1e-4, atol=1e-4)


def test_ssm_parent_with_fewer_layers_maps_proportionally(pair, tmp_path):
    llama, _ = pair
    short = save(make_model("mamba2", 2, **{**SSM, "num_hidden_layers": 2}), tmp_path / "m2")
    res = darwin.crossover(str(llama), str(short), tmp_path / "child", mixers="BBBB", progress=False)
    srcs = {t.out_name: t.inputs[0].tensor for t in res.plan.tasks if t.component == "ssm"}
    assert srcs["model.layers.1.mamba.A_log"] == "backbone.layers.0.mixer.A_log"
    assert srcs["model.layers.2.mamba.A_log"] == "backbone.layers.1.mixer.A_log"
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "child").config.num_hidden_layers == 4


def _spy_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    orig = Checkpoint.get

    def spy(self, name, *a, **k):
        reads.append(name)
        return orig(self, name, *a, **k)
    monkeypatch.setattr(Checkpoint, "get", spy)
    return reads


@pytest.mark.parametrize("override,match", [({"hidden_size": 64, "head_dim": 32}, "hidden_size differs"),
                                            ({"vocab_size": 512}, "vocab_size differs")])
def test_mismatched_hidden_or_vocab_fails_before_reading_weights(pair, tmp_path, monkeypatch, override, match):
    llama, _ = pair
    other = save(make_model("mamba2", 3, **{**SSM, **override}), tmp_path / "other")
    reads = _spy_reads(monkeypatch)
    with pytest.raises(CompatibilityError, match=match):
        darwin.crossover(str(llama), str(other), tmp_path / "child", mixers="ABAB", progress=False)
    assert reads == [] and not (tmp_path / "child").exists()


def test_bad_mixers_and_unsupported_family(pair, tmp_path):
    llama, mamba = pair
    with pytest.raises(RecipeError, match="need 4 letters"):
        darwin.crossover(str(llama), str(mamba), tmp_path / "c", mixers="ABA", progress=False)
    with pytest.raises(RecipeError, match="need 4 letters"):
        darwin.crossover(str(llama), str(mamba), tmp_path / "c", mixers="ABAC", progress=False)
    with pytest.raises(CompatibilityError, match="as the ssm parent"):
        darwin.crossover(str(llama), str(llama), tmp_path / "c", mixers="ABAB", progress=False)
    gpt2 = save(make_model("gpt2", 0, vocab_size=VOCAB), tmp_path / "gpt2")
    with pytest.raises(CompatibilityError, match="as the transformer parent"):
        darwin.crossover(str(gpt2), str(mamba), tmp_path / "c", mixers="AB", progress=False)
    assert not (tmp_path / "c").exists()


def test_crossover_cli(pair, tmp_path):
    llama, mamba = pair
    darwin_cli = Path(sys.executable).with_name("darwin")
    p = subprocess.run([darwin_cli, "crossover", llama, mamba, "-o", tmp_path / "child", "--mixers", "ABBA"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "ABBA" in p.stdout and (tmp_path / "child" / "model.safetensors").exists()
    p = subprocess.run([darwin_cli, "crossover", llama, mamba, "-o", tmp_path / "child", "--mixers", "ABBA"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "exists" in p.stderr


FITNESS_FILE = Path(__file__).parent / "data" / "fitness_fns.py"


def _evolve_cfg(a, b, genome, population=4, generations=2, mri=True):
    return {"parents": [str(a), str(b)], "genome": genome, "mri": {"enabled": mri},
            "fitness": [{"python": f"{FITNESS_FILE}:nll_fixed_ids"}],
            "search": {"population": population, "generations": generations, "sigma0": 1.0, "seed": 0},
            "fitness_dtype": "float32"}  # the child (float32) must score what its candidate scored


def test_evolve_crossover_genome_and_replay(pair, tmp_path):
    """darwin evolve with darwin/genome/builtin/crossover.yaml: hybrids scored in memory, child written and replayable."""
    from safetensors.torch import load_file

    llama, mamba = pair
    res = darwin.evolve(_evolve_cfg(llama, mamba, "crossover"), tmp_path / "run", progress=False)
    assert set(res.baselines) == {"parent A", "parent B", "hybrid ABAB"}
    assert all(v["fitness"] is not None for v in res.baselines.values())
    cands = [c for h in res.history for c in h["candidates"]]
    assert all(c["error"] is None for c in cands)
    patterns = {"".join("B" if c["genes"][f"layer_{i}_mixer"] >= 0.5 else "A" for i in range(4)) for c in cands}
    assert len(patterns) > 1, "the search should try several layer patterns"
    child = AutoModelForCausalLM.from_pretrained(res.child_dir)
    assert child.config.model_type == "bamba"
    best = "".join("B" if res.best["genes"][f"layer_{i}_mixer"] >= 0.5 else "A" for i in range(4))
    assert child.config.attn_layer_indices == [i for i, m in enumerate(best) if m == "A"]
    # the in-memory score of the best candidate is the written child's score
    from darwin.fitness.python import load_callable

    nll_fixed_ids = load_callable(f"{FITNESS_FILE}:nll_fixed_ids")
    assert abs(nll_fixed_ids(child.eval(), None) - res.best["fitness"]) < 1e-5
    p = subprocess.run([Path(sys.executable).with_name("darwin"), "merge", tmp_path / "run" / "recipe.yaml", "-o",
                        tmp_path / "again"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    a, b = load_file(res.child_dir / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "run" / "health.json").read_text())["finite"]


def test_hybrid_child_is_a_parent_in_a_later_evolve(pair, tmp_path):
    from tiny_families import add_noise

    llama, mamba = pair
    llama2 = save(add_noise(make_model("llama", 0, num_hidden_layers=4, rms_norm_eps=1e-5, vocab_size=VOCAB), 0.05),
                  tmp_path / "l2")
    (tmp_path / "l2").joinpath("tokenizer.json").write_bytes((llama / "tokenizer.json").read_bytes())
    (tmp_path / "l2").joinpath("tokenizer_config.json").write_bytes((llama / "tokenizer_config.json").read_bytes())
    h1 = darwin.crossover(str(llama), str(mamba), tmp_path / "h1", mixers="ABAB", progress=False).out_dir
    h2 = darwin.crossover(str(llama2), str(mamba), tmp_path / "h2", mixers="ABAB", progress=False).out_dir
    res = darwin.evolve(_evolve_cfg(h1, h2, "darwin14", population=3, generations=1), tmp_path / "run",
                        progress=False)
    child = AutoModelForCausalLM.from_pretrained(res.child_dir)
    assert child.config.model_type == "bamba" and child.config.attn_layer_indices == [0, 2]
    assert res.best["fitness"] is not None and (tmp_path / "run" / "mri.json").exists()


def test_ffn_transplant_genome_between_families(pair, tmp_path, tokenizer):
    """Llama recipient, Bamba donor (equal FFN shapes): per-layer FFN transplant keeps A's architecture."""
    from tiny_families import load_tensors as tensors

    llama, _ = pair
    bamba = _with_tok(save(make_model("bamba", 5, vocab_size=VOCAB), tmp_path / "bamba"), tokenizer)
    res = darwin.evolve(_evolve_cfg(llama, bamba, "ffn-transplant", population=4, generations=1), tmp_path / "run",
                        progress=False)
    assert set(res.baselines) == {"parent A", "parent B", "all FFN 0.5"}
    child = tensors(res.child_dir)
    a, b = tensors(llama), tensors(bamba)
    assert child.keys() == a.keys()
    for i in range(4):
        r = res.best["genes"][f"layer_{i}_ffn"]
        got, ga, gb = (child[f"model.layers.{i}.mlp.up_proj.weight"], a[f"model.layers.{i}.mlp.up_proj.weight"],
                       b[f"model.layers.{i}.feed_forward.up_proj.weight"])
        want = ga if r < 0.15 else gb if r > 0.85 else (1 - r) * ga + r * gb
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        q = f"model.layers.{i}.self_attn.q_proj.weight"
        assert torch.equal(child[q], a[q])
