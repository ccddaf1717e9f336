"""Genome definitions and decoding: hand-computed ratios, transplant thresholds, MRI fusion."""

from __future__ import annotations

import math

import pytest
import yaml

from darwin.arch.mapper import TensorRole
from darwin.errors import RecipeError
from darwin.genome.decode import Slot, darwin14_ratio, decode, pair_layout, tensor_ratio
from darwin.genome.spec import Gene, load_genome
from darwin.io.checkpoint import Checkpoint


def _values(spec, **over):
    v = {g.name: g.start for g in spec.genes}
    v.update({k: 0.5 for k in v if k.endswith("ratio")})
    v.update(over)
    return v


def _role(comp, layer=None):
    return TensorRole("t", comp, layer, "model.layers" if layer is not None else None, "x")


def test_builtin_genomes_load():
    d = load_genome("darwin14")
    assert [g.name for g in d.genes] == [
        "global_ratio", "attn_ratio", "ffn_ratio", "embed_ratio", "density_a", "density_b",
        *[f"block_{i}_ratio" for i in range(6)], "mri_trust", "merge_method_weight"]
    lw = load_genome("layerwise")
    assert len(lw.expand(4)) == len(lw.genes) + 8
    assert load_genome("my-genome").decoder == "darwin14"


def test_misspelt_genome_field_is_an_error(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({"name": "g", "decoder": "darwin14", "genez": []}))
    with pytest.raises(RecipeError, match="genez"):
        load_genome(p)
    with pytest.raises(RecipeError, match="no such file or built-in genome"):
        load_genome("nope")


def test_gene_encoding_roundtrip():
    g = Gene(name="x", low=0.2, high=1.0, start=0.9)
    assert g.decode(g.encode(0.9)) == pytest.approx(0.9)
    assert g.decode(0.0) == pytest.approx(0.6)
    assert 0.2 <= g.decode(-100) < g.decode(0) < g.decode(100) <= 1.0


def test_darwin14_ratio_hand_computed():
    spec = load_genome("darwin14")
    # σ(logit .6 + logit .7 + logit .4) = 1.5·(7/3)·(2/3) / (1 + that) = 0.7 exactly
    v = _values(spec, global_ratio=0.6, attn_ratio=0.7, block_0_ratio=0.4)
    assert darwin14_ratio(v, _role("attn", 0), 12, 0.5) == pytest.approx(0.7)
    # layer 2 of 12 is block ⌊6·2/12⌋ = 1 (ratio 0.5): σ(logit .6 + logit .7) = 1.5·(7/3)/(1+3.5) = 7/9
    assert darwin14_ratio(v, _role("attn", 2), 12, 0.5) == pytest.approx(3.5 / 4.5)
    # norms use α = 0.5; tensors outside layers use block 0.5: only γ remains
    assert darwin14_ratio(v, _role("norm"), 12, 0.5) == pytest.approx(0.6)
    # SSM mixers follow attn_ratio, embeddings and the head embed_ratio
    assert darwin14_ratio(v, _role("ssm", 0), 12, 0.5) == pytest.approx(0.7)
    v2 = _values(spec, embed_ratio=0.2)
    assert darwin14_ratio(v2, _role("head"), 12, 0.5) == pytest.approx(0.2)
    # last layer maps to block 5
    v3 = _values(spec, block_5_ratio=0.9)
    assert darwin14_ratio(v3, _role("ffn", 11), 12, 0.5) == pytest.approx(0.9)


def test_mri_fusion():
    spec = load_genome("darwin14")
    v = _values(spec, global_ratio=0.7, mri_trust=0.5)
    slot = Slot("w", _role("norm"), (2,), "w", "w", None)
    assert tensor_ratio(spec, v, slot, 4, {"w": 0.2}) == pytest.approx(0.5 * 0.2 + 0.5 * 0.7)
    assert tensor_ratio(spec, v, slot, 4, None) == pytest.approx(0.7)


@pytest.fixture(scope="module")
def layout(demo):
    ck = {str(demo[k]): Checkpoint(demo[k]) for k in ("parent_a", "parent_b", "base")}
    return pair_layout(ck, str(demo["parent_a"]), str(demo["parent_b"]), str(demo["base"]))


def test_decode_plan_transplants_and_blends(layout):
    spec = load_genome("darwin14")
    v = _values(spec, attn_ratio=0.9, ffn_ratio=0.1, global_ratio=0.5)
    # attn: σ(logit .9 + 0 + 0) = 0.9 > 0.85 → B; ffn 0.1 < 0.15 → A; norms 0.5 → blend
    plan = decode(spec, v, layout)
    by = {t.out_name: t for t in plan.tasks}
    q = by["model.layers.1.self_attn.q_proj.weight"]
    assert q.method == "passthrough" and q.inputs[0].model == layout.b and q.action == "transplant"
    up = by["model.layers.1.mlp.up_proj.weight"]
    assert up.method == "passthrough" and up.inputs[0].model == layout.a
    n = by["model.layers.1.input_layernorm.weight"]
    assert n.method == "darwin_blend" and n.shared["t"] == pytest.approx(0.5)
    assert n.base.model == layout.base and n.parent["density"] == [v["density_a"], v["density_b"]]
    assert len(plan.tasks) == 39


def test_decode_thresholds_configurable(layout):
    spec = load_genome("darwin14")
    spec = spec.model_copy(update={"options": spec.options.model_copy(update={"transplant_high": 0.95})})
    plan = decode(spec, _values(spec, attn_ratio=0.9), layout)
    q = next(t for t in plan.tasks if t.out_name.endswith("layers.1.self_attn.q_proj.weight"))
    assert q.method == "darwin_blend" and q.shared["t"] == pytest.approx(0.9)


def test_layerwise_decoder(layout):
    spec = load_genome("layerwise")
    v = {g.name: g.start for g in spec.expand(4)}
    v["layer_2_attn"] = 0.3
    v["layer_2_ffn"] = 0.6
    plan = decode(spec, v, layout)
    by = {t.out_name: t for t in plan.tasks}
    assert by["model.layers.2.self_attn.k_proj.weight"].shared["t"] == pytest.approx(0.3)
    assert by["model.layers.2.mlp.gate_proj.weight"].shared["t"] == pytest.approx(0.6)
    assert by["model.layers.1.mlp.gate_proj.weight"].shared["t"] == pytest.approx(0.5)


def test_bad_gene_values(layout):
    spec = load_genome("darwin14")
    v = _values(spec)
    v["global_ratio"] = 1.5
    with pytest.raises(RecipeError, match="outside"):
        decode(spec, v, layout)
    v = _values(spec)
    del v["mri_trust"]
    with pytest.raises(RecipeError, match="mri_trust"):
        decode(spec, v, layout)


def test_darwin_blend_extremes_equal_parents(layout, demo):
    """λ = 1 with r = 0 or 1 through the kernel gives a parent exactly (no transplant shortcut)."""
    import torch

    from darwin.plan.execute import execute

    spec = load_genome("darwin14")
    spec = spec.model_copy(update={"options": spec.options.model_copy(update={"transplant_low": -1,
                                                                              "transplant_high": 2})})
    v = _values(spec, global_ratio=1e-7, merge_method_weight=1.0)
    ck = {layout.a: Checkpoint(layout.a), layout.b: Checkpoint(layout.b), layout.base: Checkpoint(layout.base)}
    out = dict(execute(decode(spec, v, layout), ck, device="cpu"))
    a = ck[layout.a]
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(out[k], a.get(k), atol=1e-5)
    assert math.isfinite(float(out[k].sum()))
