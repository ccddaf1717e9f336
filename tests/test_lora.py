"""``base+adapter`` parents: a PEFT LoRA adapter merged into its base as tensors are read.

The reference is peft itself (``merge_and_unload``) on the same adapter: rsLoRA, per-module
rank/alpha patterns, LoRA on the embedding and a saved embedding layer all in one adapter.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import darwin
from darwin.errors import CheckpointError


@pytest.fixture(scope="module")
def adapter(demo, tmp_path_factory):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(demo["parent_a"], dtype=torch.float32)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
                          use_rslora=True, rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3},
                          init_lora_weights=False)
    pm = peft.get_peft_model(model, cfg)
    pm.save_pretrained(root / "adapter")
    merged = pm.merge_and_unload()
    return root / "adapter", {k: v.detach().clone() for k, v in merged.state_dict().items()}


def test_lora_parent_equals_peft_merge_and_unload(demo, adapter, tmp_path):
    folder, want = adapter
    ref = f"{demo['parent_a']}+{folder}"
    darwin.merge({"merge_method": "passthrough", "dtype": "float32", "models": [{"model": ref}]}, tmp_path / "m",
                 progress=False)
    got = load_file(str(tmp_path / "m" / "model.safetensors"))
    changed = [k for k in got if not torch.equal(got[k], load_file(str(demo["parent_a"] / "model.safetensors"))[k])]
    assert any("q_proj" in k for k in changed) and "model.embed_tokens.weight" in changed
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], atol=1e-6, rtol=1e-5, msg=k)


def test_lora_parent_in_a_merge_and_bad_adapters(demo, adapter, tmp_path):
    folder, _ = adapter
    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": f"{demo['parent_a']}+{folder}", "parameters": {"weight": 0.5}},
                         {"model": str(demo["parent_b"]), "parameters": {"weight": 0.5}}]}
    darwin.merge(recipe, tmp_path / "ok", progress=False)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    for change, match in (({"use_dora": True}, "DoRA"), ({"peft_type": "IA3"}, "cannot be merged")):
        bad = tmp_path / f"bad-{next(iter(change))}"
        bad.mkdir()
        (bad / "adapter_model.safetensors").write_bytes((folder / "adapter_model.safetensors").read_bytes())
        (bad / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
        recipe["models"][0]["model"] = f"{demo['parent_a']}+{bad}"
        with pytest.raises(CheckpointError, match=match):
            darwin.merge(recipe, tmp_path / "x", progress=False)
    recipe["models"][0]["model"] = f"{demo['parent_a']}+{tmp_path / 'nope'}"
    with pytest.raises(CheckpointError, match="adapter folder"):
        darwin.merge(recipe, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
