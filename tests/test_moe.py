"""Mixture-of-experts tensors: every expert is merged as its own tensor, whatever the storage layout.

transformers 5 saves a Mixtral per expert (``block_sparse_moe.experts.3.w1.weight``) but loads and
re-saves it fused (``mlp.experts.gate_up_proj`` ``[E, 2I, H]``, ``mlp.experts.down_proj`` ``[E, H, I]``),
which is what mergekit 0.1.5 under transformers 5 merges: its TIES trim then ranks all experts'
magnitudes together, so one expert that moved far takes the density budget of the others. darwin
trims each expert (and the gate and up halves of ``gate_up_proj``) separately, so a fused and a
per-expert checkpoint of the same weights give the same child.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import darwin
from darwin.arch.mapper import merge_units

E, H, FF = 4, 32, 48
CFG = {"model_type": "mixtral", "num_local_experts": E, "intermediate_size": FF, "hidden_size": H}


def test_merge_units_counts_experts_and_gate_up_halves():
    assert merge_units("model.layers.0.mlp.experts.down_proj", (E, H, FF), CFG) == E
    assert merge_units("model.layers.0.mlp.experts.gate_up_proj", (E, 2 * FF, H), CFG) == 2 * E
    assert merge_units("model.layers.0.block_sparse_moe.experts.1.w1.weight", (FF, H), CFG) == 1
    assert merge_units("model.layers.0.mlp.gate.weight", (E, H), CFG) == 1
    assert merge_units("model.layers.0.mlp.down_proj.weight", (E, H, FF), {"model_type": "llama"}) == 1
    assert merge_units("model.layers.0.mlp.experts.down_proj", (E, H, FF), {"text_config": CFG}) == E


def _fused(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The transformers-5 fused layout of a per-expert Mixtral state dict."""
    out = {k: v for k, v in state.items() if ".block_sparse_moe." not in k}
    for i in range(layers):
        p = f"model.layers.{i}.block_sparse_moe"
        out[f"model.layers.{i}.mlp.gate.weight"] = state[f"{p}.gate.weight"]
        out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([state[f"{p}.experts.{e}.w1.weight"], state[f"{p}.experts.{e}.w3.weight"]]) for e in range(E)])
        out[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack(
            [state[f"{p}.experts.{e}.w2.weight"] for e in range(E)])
    return {k: v.contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    from transformers import MixtralConfig, MixtralForCausalLM

    root = tmp_path_factory.mktemp("moe")
    cfg = MixtralConfig(vocab_size=128, hidden_size=H, intermediate_size=FF, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, num_local_experts=E, num_experts_per_tok=2, max_position_embeddings=64)
    torch.manual_seed(0)
    MixtralForCausalLM(cfg).save_pretrained(root / "base")
    base = load_file(str(root / "base" / "model.safetensors"))
    g = torch.Generator().manual_seed(1)
    for name, scale in (("a", 0.02), ("b", 0.03)):
        state = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in base.items()}
        if name == "a":  # expert 0 of parent a moved ten times further than the others
            for k in state:
                if ".experts.0." in k:
                    state[k] = base[k] + 0.2 * torch.randn(base[k].shape, generator=g)
        shutil.copytree(root / "base", root / name)
        save_file(state, str(root / name / "model.safetensors"), metadata={"format": "pt"})
    for name in ("base", "a", "b"):  # the fused copies
        shutil.copytree(root / name, root / f"{name}-fused")
        save_file(_fused(load_file(str(root / name / "model.safetensors")), 2),
                  str(root / f"{name}-fused" / "model.safetensors"), metadata={"format": "pt"})
    return root


def _ties(root, suffix="", density=0.3, method="ties"):
    return {"merge_method": method, "base_model": str(root / f"base{suffix}"), "dtype": "float32",
            "parameters": {"normalize": True},
            "models": [{"model": str(root / f"{m}{suffix}"), "parameters": {"weight": 0.5, "density": density}}
                       for m in ("a", "b")]}


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties"])
def test_fused_and_per_expert_layouts_merge_alike(moe, tmp_path, method):
    recipe, fused = _ties(moe, method=method), _ties(moe, "-fused", method=method)
    darwin.merge(recipe, tmp_path / "per", progress=False)
    darwin.merge(fused, tmp_path / "fused", progress=False)
    per = _fused(load_file(str(tmp_path / "per" / "model.safetensors")), 2)
    got = load_file(str(tmp_path / "fused" / "model.safetensors"))
    assert per.keys() == got.keys()
    for k in per:
        torch.testing.assert_close(got[k], per[k], atol=1e-6, rtol=0, msg=k)


def test_each_expert_keeps_its_own_density(moe, tmp_path):
    """One parent, TIES: the child's task vector is the trimmed one, so each expert keeps ρ of its
    elements, even expert 0 whose changes are ten times larger."""
    recipe = {"merge_method": "ties", "base_model": str(moe / "base-fused"), "dtype": "float32",
              "models": [{"model": str(moe / "a-fused"), "parameters": {"weight": 1.0, "density": 0.3}}]}
    darwin.merge(recipe, tmp_path / "one", progress=False)
    child = load_file(str(tmp_path / "one" / "model.safetensors"))
    base = load_file(str(moe / "base-fused" / "model.safetensors"))
    for k in ("model.layers.0.mlp.experts.down_proj", "model.layers.0.mlp.experts.gate_up_proj"):
        kept = (child[k] != base[k]).flatten(1).float().mean(1)
        torch.testing.assert_close(kept, torch.full((E,), 0.3), atol=0.01, rtol=0)
    gate_up = (child["model.layers.0.mlp.experts.gate_up_proj"] != base["model.layers.0.mlp.experts.gate_up_proj"])
    halves = gate_up.reshape(E, 2, FF, H).flatten(2).float().mean(2)
    torch.testing.assert_close(halves, torch.full((E, 2), 0.3), atol=0.01, rtol=0)
    assert json.loads((tmp_path / "one" / "config.json").read_text())["num_local_experts"] == E


def test_mixed_expert_layouts_are_refused_with_the_reason(moe, tmp_path):
    from darwin.errors import CompatibilityError

    recipe = _ties(moe)
    recipe["models"][0]["model"] += "-fused"
    with pytest.raises(CompatibilityError, match="different layouts"):
        darwin.merge(recipe, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
