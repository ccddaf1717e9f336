"""darwin merge: recipe semantics, planner, batched executor, child folder, CLI errors."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import darwin
from darwin.cli import app
from darwin.errors import RecipeError
from darwin.kernels.slerp import slerp
from darwin.plan.execute import execute
from darwin.plan.params import evaluate
from darwin.plan.recipe import Conditional, load_recipe
from darwin.plan.run import plan_recipe


def _load(folder):
    return load_file(str(folder / "model.safetensors"))


def _recipe(demo, method="linear", **extra):
    r = {"merge_method": method, "dtype": "float32",
         "models": [{"model": str(demo["parent_a"]), "parameters": {"weight": 0.3}},
                    {"model": str(demo["parent_b"]), "parameters": {"weight": 0.7}}]}
    r.update(extra)
    return r


# ----------------------------------------------------------------------------- parameter semantics
def test_gradient_and_filter_semantics():
    assert evaluate(0.3, "x", 0.9) == 0.3
    assert evaluate([0.0, 1.0], "x", 0.25) == pytest.approx(0.25)
    assert evaluate([0.0, 1.0, 0.0], "x", 0.75) == pytest.approx(0.5)
    conds = [Conditional(filter="self_attn", value=0.1), Conditional(filter="mlp", value=[0.0, 1.0]),
             Conditional(value=0.9)]
    assert evaluate(conds, "model.layers.0.self_attn.q_proj.weight", 0.5) == 0.1
    assert evaluate(conds, "model.layers.0.mlp.up_proj.weight", 0.5) == pytest.approx(0.5)
    assert evaluate(conds, "model.norm.weight", 0.0) == 0.9
    assert evaluate(conds[:1], "model.norm.weight", 0.0) is None


def test_misspelt_keys_are_errors(demo):
    bad = _recipe(demo)
    bad["paramters"] = {}
    with pytest.raises(RecipeError, match="unknown key 'paramters'"):
        load_recipe(bad)
    bad = _recipe(demo)
    bad["models"][0]["parameter"] = {"weight": 1}
    with pytest.raises(RecipeError, match="unknown key 'parameter'"):
        load_recipe(bad)
    bad = _recipe(demo, "ties", base_model=str(demo["base"]))
    bad["models"][0]["parameters"]["densty"] = 0.5
    with pytest.raises(RecipeError, match="unknown parameter 'densty'"):
        darwin.merge(bad, dry_run=True)


def test_unknown_method_and_missing_base(demo):
    with pytest.raises(RecipeError, match="unknown merge_method 'tie'"):
        darwin.merge(_recipe(demo, "tie"), dry_run=True)
    with pytest.raises(RecipeError, match="needs a base_model"):
        darwin.merge(_recipe(demo, "ties"), dry_run=True)


# ----------------------------------------------------------------------------- numerics through the engine
def test_linear_child_values(demo, tmp_path):
    res = darwin.merge(_recipe(demo), tmp_path / "c", progress=False)
    a, b, c = _load(demo["parent_a"]), _load(demo["parent_b"]), _load(res.out_dir)
    assert set(c) == set(a)
    for k in a:
        assert torch.allclose(c[k], 0.3 * a[k] + 0.7 * b[k], atol=1e-6), k


def test_slerp_gradient_per_layer(demo, tmp_path):
    r = {"merge_method": "slerp", "base_model": str(demo["parent_a"]), "dtype": "float32",
         "models": [{"model": str(demo["parent_a"])}, {"model": str(demo["parent_b"])}],
         "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 1.0]}, {"value": 0.5}]}}
    res = darwin.merge(r, tmp_path / "c", progress=False)
    a, b, c = _load(demo["parent_a"]), _load(demo["parent_b"]), _load(res.out_dir)
    for layer in range(4):
        k = f"model.layers.{layer}.self_attn.q_proj.weight"
        t = layer / 3
        ref = slerp(torch.stack([a[k], b[k]]).unsqueeze(0), torch.tensor([t]))[0]
        assert torch.allclose(c[k], ref, atol=1e-6)
    k = "model.layers.2.mlp.up_proj.weight"
    assert torch.allclose(c[k], slerp(torch.stack([a[k], b[k]]).unsqueeze(0), torch.tensor([0.5]))[0], atol=1e-6)


def test_frankenmerge_slices(demo, tmp_path):
    res = darwin.merge(demo["recipe-frankenmerge.yaml"], tmp_path / "c", progress=False)
    a, b, c = _load(demo["parent_a"]), _load(demo["parent_b"]), _load(res.out_dir)
    cfg = json.loads((res.out_dir / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 6
    # child layers 0-2 = A 0-2, child 3-5 = B 1-3, bit for bit
    src = [("A", 0), ("A", 1), ("A", 2), ("B", 1), ("B", 2), ("B", 3)]
    for j, (who, i) in enumerate(src):
        p = a if who == "A" else b
        assert torch.equal(c[f"model.layers.{j}.mlp.down_proj.weight"], p[f"model.layers.{i}.mlp.down_proj.weight"])
    assert torch.equal(c["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(c["lm_head.weight"], b["lm_head.weight"])  # post weights follow the last slice
    assert all(r.action == "transplant" for r in res.plan.report)


def test_batched_equals_one_by_one(demo):
    plan, ck = plan_recipe(_recipe(demo, "dare_ties", base_model=str(demo["base"]),
                                   parameters={"density": 0.5}))
    together = dict(execute(plan, ck, device="cpu"))
    alone = dict(execute(plan, ck, device="cpu", batch_bytes=1))
    assert set(together) == set(alone)
    for k in together:
        assert torch.equal(together[k], alone[k]), k


def test_dare_is_deterministic_per_seed(demo, tmp_path):
    r = _recipe(demo, "dare_linear", base_model=str(demo["base"]), parameters={"density": 0.3})
    c1 = _load(darwin.merge(r, tmp_path / "1", progress=False).out_dir)
    c2 = _load(darwin.merge(r, tmp_path / "2", progress=False).out_dir)
    c3 = _load(darwin.merge(r, tmp_path / "3", progress=False, seed=7).out_dir)
    k = "model.layers.1.mlp.up_proj.weight"
    assert all(torch.equal(c1[x], c2[x]) for x in c1)
    assert not torch.equal(c1[k], c3[k])


def _fake_parent(folder, value, dtype=torch.float16, vocab=16):
    folder.mkdir(parents=True)
    cfg = {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": 4, "vocab_size": vocab,
           "tie_word_embeddings": True, "torch_dtype": "float16"}
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({"model.embed_tokens.weight": torch.full((vocab, 4), value, dtype=dtype),
               "model.layers.0.mlp.up_proj.weight": torch.full((8, 4), value, dtype=dtype),
               "model.norm.weight": torch.ones(4, dtype=dtype)}, str(folder / "model.safetensors"))
    return folder


def test_fp16_inputs_accumulate_in_fp32(tmp_path):
    a = _fake_parent(tmp_path / "a", 60000.0)
    b = _fake_parent(tmp_path / "b", 60000.0)
    base = _fake_parent(tmp_path / "base", -60000.0)
    # linear sum 120000 overflows fp16, the normalised result 60000 does not
    r = {"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 1.0}},
                                              {"model": str(b), "parameters": {"weight": 1.0}}]}
    c = _load(darwin.merge(r, tmp_path / "c", progress=False).out_dir)
    assert c["model.layers.0.mlp.up_proj.weight"].dtype == torch.float16
    assert torch.isfinite(c["model.layers.0.mlp.up_proj.weight"]).all()
    assert c["model.layers.0.mlp.up_proj.weight"][0, 0].item() == 60000.0
    # task vectors of 120000 each, averaged by TIES (normalised): back to 60000 exactly
    r = {"merge_method": "ties", "base_model": str(base), "out_dtype": "float16",
         "models": [{"model": str(a), "parameters": {"weight": 1.0, "density": 1.0}},
                    {"model": str(b), "parameters": {"weight": 1.0, "density": 1.0}}]}
    c = _load(darwin.merge(r, tmp_path / "t", progress=False).out_dir)
    assert c["model.layers.0.mlp.up_proj.weight"][0, 0].item() == 60000.0


# ----------------------------------------------------------------------------- the child folder
def test_child_folder_contents(demo, tmp_path):
    res = darwin.merge(demo["recipe-slerp.yaml"], tmp_path / "c", progress=False)
    names = {p.name for p in res.out_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "generation_config.json"} <= names
    cfg = json.loads((res.out_dir / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    card = (res.out_dir / "README.md").read_text()
    assert "slerp" in card and str(demo["parent_b"]) in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_sharded_child_reloads(demo, tmp_path):
    from transformers import AutoModelForCausalLM

    res = darwin.merge(_recipe(demo), tmp_path / "c", progress=False, max_shard_size="40KB")
    assert (res.out_dir / "model.safetensors.index.json").exists()
    m = AutoModelForCausalLM.from_pretrained(res.out_dir)
    out = m.generate(torch.tensor([[2, 3, 4]]), max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 8)


def test_dry_run_report(demo):
    res = darwin.merge(demo["recipe-ties.yaml"], dry_run=True)
    assert res.out_dir is None and res.peak_estimate_bytes > 0
    assert {r.action for r in res.plan.report} == {"blend"}
    assert len(res.plan.report) == len(res.plan.tasks) == 39
    assert all(ok for _, ok, _ in res.plan.checks)


# ----------------------------------------------------------------------------- bad input through the CLI
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _write(tmp_path, recipe):
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(recipe))
    return p


def _assert_failed(result, culprit, out):
    assert result.exit_code == 2, result.output
    assert culprit in result.output.replace("\n", ""), result.output
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_cli_missing_parent(demo, tmp_path):
    r = _recipe(demo)
    r["models"][1]["model"] = str(tmp_path / "no_such_model")
    out = tmp_path / "out"
    _assert_failed(_run("merge", _write(tmp_path, r), "-o", out), "no_such_model", out)


def test_cli_misspelt_key(demo, tmp_path):
    r = _recipe(demo)
    r["merge_methd"] = r.pop("merge_method")
    out = tmp_path / "out"
    _assert_failed(_run("merge", _write(tmp_path, r), "-o", out), "merge_methd", out)


def test_cli_shape_mismatch(demo, tmp_path):
    bad = tmp_path / "bad_parent"
    shutil.copytree(demo["parent_b"], bad)
    sd = load_file(str(bad / "model.safetensors"))
    sd["model.layers.2.mlp.up_proj.weight"] = torch.zeros(65, 32)
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    r = _recipe(demo)
    r["models"][1]["model"] = str(bad)
    out = tmp_path / "out"
    res = _run("merge", _write(tmp_path, r), "-o", out)
    _assert_failed(res, "model.layers.2.mlp.up_proj.weight", out)
    assert "shape-mismatch" in res.output


def _edited_parent(src, dst, edit_weights, **config):
    """A copy of parent ``src`` at ``dst`` with ``edit_weights(state_dict)`` applied and config keys set."""
    shutil.copytree(src, dst)
    sd = edit_weights(load_file(str(dst / "model.safetensors")))
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_cli_vocab_mismatch(demo, tmp_path):
    bad = _edited_parent(demo["parent_b"], tmp_path / "bad_vocab",
                         lambda sd: {**sd, "model.embed_tokens.weight": torch.zeros(400, 32),
                                     "lm_head.weight": torch.zeros(400, 32)}, vocab_size=400)
    r = _recipe(demo)
    r["models"][1]["model"] = str(bad)
    out = tmp_path / "out"
    res = _run("merge", _write(tmp_path, r), "-o", out)
    _assert_failed(res, "vocab_size differs", out)


def test_cli_truncated_safetensors(demo, tmp_path):
    bad = tmp_path / "truncated"
    shutil.copytree(demo["parent_b"], bad)
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    r = _recipe(demo)
    r["models"][1]["model"] = str(bad)
    out = tmp_path / "out"
    _assert_failed(_run("merge", _write(tmp_path, r), "-o", out), str(f), out)


def test_cli_existing_output_needs_force(demo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    res = _run("merge", demo["recipe-ties.yaml"], "-o", out)
    assert res.exit_code == 2 and "--force" in res.output
    assert (out / "keep.txt").exists()
    res = _run("merge", demo["recipe-ties.yaml"], "-o", out, "--force")
    assert res.exit_code == 0, res.output
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_cli_dry_run_prints_report(demo):
    res = _run("merge", demo["recipe-ties.yaml"], "--dry-run")
    assert res.exit_code == 0, res.output
    assert "pre-flight checks" in res.output and "blend" in res.output and "peak" in res.output


def test_yaml_file_relative_paths(demo, tmp_path):
    rec = tmp_path / "r"
    rec.mkdir()
    for k in ("parent_a", "parent_b"):
        shutil.copytree(demo[k], rec / k)
    (rec / "recipe.yaml").write_text("merge_method: linear\nmodels:\n  - model: parent_a\n    parameters: {weight: 1}\n"
                                     "  - model: parent_b\n    parameters: {weight: 1}\n")
    res = darwin.merge(rec / "recipe.yaml", tmp_path / "c", progress=False)
    assert (res.out_dir / "model.safetensors").exists()
    assert math.isclose(len(res.plan.tasks), 39)


def test_bad_parameter_values_and_device(demo, tmp_path):
    r = _recipe(demo, "ties", base_model=str(demo["base"]))
    r["models"][0]["parameters"]["density"] = 1.5
    with pytest.raises(RecipeError, match=r"'density' must be in \[0, 1\]"):
        darwin.merge(r, dry_run=True)
    r = _recipe(demo)
    r["models"][0]["parameters"]["weight"] = float("nan")
    with pytest.raises(RecipeError, match="finite"):
        darwin.merge(r, dry_run=True)
    from darwin.errors import DarwinError

    with pytest.raises(DarwinError, match="device 'gpu9'"):
        darwin.merge(_recipe(demo), tmp_path / "c", device="gpu9")
    if not torch.cuda.is_available():
        with pytest.raises(DarwinError, match="CUDA is not available"):
            darwin.merge(_recipe(demo), tmp_path / "c", device="cuda")
    assert not (tmp_path / "c").exists()


def test_more_bad_inputs_fail_before_any_work(demo, tmp_path):
    from darwin.errors import CheckpointError, CompatibilityError, OutputExistsError

    # parents of different depth in the models form
    shallow = _edited_parent(demo["parent_b"], tmp_path / "shallow",
                             lambda sd: {k: v for k, v in sd.items() if "layers.3." not in k}, num_hidden_layers=3)
    r = _recipe(demo)
    r["models"][1]["model"] = str(shallow)
    with pytest.raises(CompatibilityError, match="num_layers differs"):
        darwin.merge(r, dry_run=True)
    # empty models, a folder as recipe, a missing tokenizer source
    with pytest.raises(RecipeError, match="'models' is empty"):
        darwin.merge({"merge_method": "linear", "models": []}, dry_run=True)
    with pytest.raises(RecipeError, match="is a folder"):
        darwin.merge(tmp_path, dry_run=True)
    with pytest.raises(RecipeError, match="tokenizer_source"):
        darwin.merge(_recipe(demo, tokenizer_source=str(tmp_path / "nope")), dry_run=True)
    # a parent without config.json
    nocfg = tmp_path / "nocfg"
    shutil.copytree(demo["parent_b"], nocfg)
    (nocfg / "config.json").unlink()
    r = _recipe(demo)
    r["models"][1]["model"] = str(nocfg)
    with pytest.raises(CheckpointError, match="no config.json"):
        darwin.merge(r, dry_run=True)
    # output paths that are files or under files
    f = tmp_path / "afile"
    f.write_text("keep me")
    with pytest.raises(OutputExistsError, match="is a file"):
        darwin.merge(_recipe(demo), f, force=True)
    with pytest.raises(OutputExistsError, match="is a file"):
        darwin.merge(_recipe(demo), f / "child")
    assert f.read_text() == "keep me"


def test_float16_overflow_is_refused_naming_the_tensor(demo, tmp_path):
    from darwin.errors import DarwinError

    recipe = {"merge_method": "linear", "dtype": "float16", "parameters": {"normalize": False},
              "models": [{"model": str(demo["parent_a"]), "parameters": {"weight": 1e5}},
                         {"model": str(demo["parent_b"]), "parameters": {"weight": 1e5}}]}
    with pytest.raises(DarwinError, match=r"merged values reach .* beyond what float16 holds \(6\.55e\+04\)"):
        darwin.merge(recipe, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
    recipe["dtype"] = "bfloat16"  # the same values fit bfloat16
    darwin.merge(recipe, tmp_path / "y", progress=False)
    assert all(torch.isfinite(v.float()).all() for v in _load(tmp_path / "y").values())


def test_the_same_model_twice_and_too_few_parents_fail_before_output(demo, tmp_path):
    twice = _recipe(demo)
    twice["models"][1]["model"] = twice["models"][0]["model"] + "/"
    with pytest.raises(RecipeError, match=r"models\[1\] .* is the same model as models\[0\]"):
        darwin.merge(twice, tmp_path / "x", progress=False)
    stock = {"merge_method": "model_stock", "base_model": str(demo["base"]), "models": [{"model": str(demo["parent_a"])}]}
    with pytest.raises(RecipeError, match="needs at least 2 parent.* besides the base model, got 1.*two or more"):
        darwin.merge(stock, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_the_tokenizer_comes_from_whichever_parent_has_one(demo, tmp_path):
    from darwin.errors import DarwinWarning

    bare = tmp_path / "bare"
    shutil.copytree(demo["parent_a"], bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*", "*.jinja"))
    recipe = {"merge_method": "linear", "dtype": "float32", "base_model": str(bare),
              "models": [{"model": str(bare), "parameters": {"weight": 0.5}},
                         {"model": str(demo["parent_b"]), "parameters": {"weight": 0.5}}]}
    with pytest.warns(DarwinWarning, match="no tokenizer files; the child's tokenizer is copied from"):
        darwin.merge(recipe, tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (demo["parent_b"] / "tokenizer.json").read_bytes()


def test_vision_language_checkpoints_are_refused(tmp_path):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from darwin.errors import CompatibilityError

    vc = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          image_size=16, patch_size=8)
    tc = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1)
    LlavaForConditionalGeneration(LlavaConfig(vision_config=vc, text_config=tc, image_token_index=63)).save_pretrained(
        tmp_path / "llava")
    recipe = {"merge_method": "linear", "models": [{"model": str(tmp_path / "llava"), "parameters": {"weight": 1.0}}]}
    with pytest.raises(CompatibilityError, match="vision-language checkpoint"):
        darwin.merge(recipe, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
