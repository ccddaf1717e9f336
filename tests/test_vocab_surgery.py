"""Vocabulary surgery: parents whose tokenizers differ, merged with rows mapped by token.

Fixtures (CPU, seconds): ``base`` (a 300-token BPE tokenizer, 300 rows), ``a`` (the same plus two
chat tokens, 302 rows, its own chat template and generation config) and ``b`` (a BPE trained on other
text: 320 tokens plus ``<|ghost|>`` at id 320, beyond its 320 rows). mergekit (an independent
reference, run in one subprocess) merges the same recipes; rows are compared by token string, since
mergekit orders appended union tokens by dictionary order, darwin by id.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from mergekit_reference import merge_both
from safetensors.torch import load_file

import darwin
from darwin.errors import CompatibilityError, DarwinWarning

TEMPLATE_A = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def _bpe(texts, n, extra=()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=n, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|pad|>")
    if extra:
        tok.add_special_tokens({"additional_special_tokens": list(extra)})
    return tok


@pytest.fixture(scope="module")
def vocab_parents(tmp_path_factory):
    from pydoc_data.topics import topics

    from transformers import LlamaForCausalLM

    from darwin.demo import tiny_llama_config

    root = tmp_path_factory.mktemp("vocab")
    texts = [topics[k] for k in sorted(topics)]
    ta = _bpe(texts[:20], 300, ["<|im_start|>", "<|im_end|>"])
    ta.chat_template = TEMPLATE_A
    spec = {"base": (_bpe(texts[:20], 300), 300), "a": (ta, 302), "b": (_bpe(texts[20:40], 320, ["<|ghost|>"]), 320),
            "c": (_bpe(texts[40:60], 310), 310)}
    out = {}
    for seed, (name, (tok, rows)) in enumerate(spec.items()):
        torch.manual_seed(seed)
        LlamaForCausalLM(tiny_llama_config(vocab_size=rows, layers=2)).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    gen = json.loads((root / "a" / "generation_config.json").read_text())
    (root / "a" / "generation_config.json").write_text(json.dumps({**gen, "temperature": 0.123}))
    return out


def _recipes(p):
    two = f"""models:
  - model: {p['a']}
    parameters: {{weight: 0.6}}
  - model: {p['b']}
    parameters: {{weight: 0.4}}
"""
    return {
        "union": f"merge_method: linear\nbase_model: {p['a']}\n{two}tokenizer_source: union\ndtype: float32\n",
        "base": f"""merge_method: ties
base_model: {p['base']}
models:
  - model: {p['a']}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {p['b']}
    parameters: {{weight: 0.5, density: 0.7}}
parameters: {{normalize: true}}
tokenizer_source: base
dtype: float32
""",
        "named": f"""merge_method: task_arithmetic
base_model: {p['base']}
models:
  - model: {p['a']}
    parameters: {{weight: 0.7}}
  - model: {p['b']}
    parameters: {{weight: 0.4}}
parameters: {{lambda: 0.9}}
tokenizer_source: {p['a']}
dtype: float32
""",
        "tokens": f"""merge_method: linear
base_model: {p['a']}
models:
  - model: {p['a']}
    parameters: {{weight: 0.3}}
  - model: {p['b']}
    parameters: {{weight: 0.7}}
tokenizer:
  source: union
  pad_to_multiple_of: 64
  tokens:
    <|im_start|>: {{source: {p['a']}, force: true}}
    <|im_end|>:
      source: {{kind: model_token, model: {p['b']}, token: <|endoftext|>}}
    <|endoftext|>: {{source: {p['b']}, force: true}}
    <|new|>: {{source: {{kind: zero}}}}
dtype: float32
""",
    }


@pytest.fixture(scope="module")
def merged(vocab_parents, tmp_path_factory):
    return merge_both(_recipes(vocab_parents), tmp_path_factory.mktemp("vocab-merges"))


def _vocab(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)).get_vocab()


@pytest.mark.parametrize("name", ["union", "base", "named", "tokens"])
def test_rows_match_mergekit_by_token(merged, name):
    dw, mk = merged[name]
    vd, vm = _vocab(dw), _vocab(mk)
    assert set(vd) == set(vm)
    rows_dw = json.loads((dw / "config.json").read_text())["vocab_size"]
    assert rows_dw == json.loads((mk / "config.json").read_text())["vocab_size"]
    wd, wm = load_file(str(dw / "model.safetensors")), load_file(str(mk / "model.safetensors"))
    assert wd.keys() == wm.keys()
    toks = sorted(vd, key=vd.get)
    for k in wd:
        if k.endswith(("embed_tokens.weight", "lm_head.weight")):
            assert wd[k].shape[0] == rows_dw
            torch.testing.assert_close(wd[k][[vd[t] for t in toks]], wm[k][[vm[t] for t in toks]], atol=1e-5, rtol=0)
            torch.testing.assert_close(wd[k][len(vd):], wm[k][len(vm):], atol=1e-5, rtol=0)  # padding rows
        else:
            torch.testing.assert_close(wd[k], wm[k], atol=1e-5, rtol=0)


def test_child_tokenizer_ids_fit_the_rows(merged, vocab_parents):
    for name, (dw, _) in merged.items():
        rows = json.loads((dw / "config.json").read_text())["vocab_size"]
        emb = load_file(str(dw / "model.safetensors"))["model.embed_tokens.weight"]
        vocab = _vocab(dw)
        assert max(vocab.values()) < rows == emb.shape[0], name
        assert "<|ghost|>" not in vocab, name
    union = _vocab(merged["union"][0])
    assert set(_vocab(vocab_parents["a"])) <= set(union) and "<|im_start|>" in union
    assert json.loads((merged["tokens"][0] / "config.json").read_text())["vocab_size"] % 64 == 0


def test_ghost_tokens_are_named_in_a_warning(vocab_parents, tmp_path):
    recipe = _recipes(vocab_parents)["union"]
    with pytest.warns(DarwinWarning, match=r"ids at or beyond the model's 320 embedding rows.*'<\|ghost\|>'"):
        darwin.merge(recipe, tmp_path / "c", progress=False)


def test_tokens_rules_set_the_rows(merged, vocab_parents):
    w = load_file(str(merged["tokens"][0] / "model.safetensors"))["model.embed_tokens.weight"]
    a = load_file(str(vocab_parents["a"] / "model.safetensors"))["model.embed_tokens.weight"]
    b = load_file(str(vocab_parents["b"] / "model.safetensors"))["model.embed_tokens.weight"]
    v, va, vb = _vocab(merged["tokens"][0]), _vocab(vocab_parents["a"]), _vocab(vocab_parents["b"])
    # force: every parent's row is a's, so the weighted mean is a's row
    torch.testing.assert_close(w[v["<|im_start|>"]], a[va["<|im_start|>"]])
    # only a has <|im_end|>: b's row comes from b's <|endoftext|>
    torch.testing.assert_close(w[v["<|im_end|>"]], 0.3 * a[va["<|im_end|>"]] + 0.7 * b[vb["<|endoftext|>"]])
    torch.testing.assert_close(w[v["<|endoftext|>"]], b[vb["<|endoftext|>"]])
    assert torch.count_nonzero(w[v["<|new|>"]]) == 0


def test_generation_config_and_chat_template_follow_the_tokenizer_source(merged):
    named = merged["named"][0]  # tokenizer_source: a (base is 'base')
    assert json.loads((named / "generation_config.json").read_text())["temperature"] == 0.123
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(named)).chat_template == TEMPLATE_A
    base = merged["base"][0]
    assert json.loads((base / "generation_config.json").read_text()).get("temperature") != 0.123


def _three(p, weights, method="linear"):
    return {"merge_method": method, "base_model": str(p["a"]), "dtype": "float32", "tokenizer_source": "union",
            "models": [{"model": str(p[m]), "parameters": {"weight": w}} for m, w in zip("abc", weights)]}


def test_a_parent_lacking_a_token_has_no_vote(vocab_parents, tmp_path):
    p = vocab_parents
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarwinWarning)
        darwin.merge(_three(p, [0.2, 0.5, 0.3]), tmp_path / "m", progress=False)
    v = _vocab(tmp_path / "m")
    vs = {m: _vocab(p[m]) for m in "abc"}
    w = load_file(str(tmp_path / "m" / "model.safetensors"))["model.embed_tokens.weight"]
    e = {m: load_file(str(p[m] / "model.safetensors"))["model.embed_tokens.weight"] for m in "abc"}
    in_bc = [t for t in v if t not in vs["a"] and t in vs["b"] and t in vs["c"] and vs["b"][t] < 320]
    in_all = [t for t in v if all(t in vs[m] for m in "abc")]
    assert in_bc and in_all
    for t in in_bc[:5]:  # weights 0.5 and 0.3 renormalise to 5/8 and 3/8
        torch.testing.assert_close(w[v[t]], (0.5 * e["b"][vs["b"][t]] + 0.3 * e["c"][vs["c"][t]]) / 0.8)
    for t in in_all[:5]:
        torch.testing.assert_close(w[v[t]], sum(x * e[m][vs[m][t]] for m, x in zip("abc", [0.2, 0.5, 0.3])))


def test_zero_weight_rows_stay_finite(vocab_parents, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarwinWarning)
        darwin.merge(_three(vocab_parents, [1.0, 0.0, 0.0]), tmp_path / "z", progress=False)
    w = load_file(str(tmp_path / "z" / "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.isfinite(w).all()


def test_no_tokenizer_option_and_different_vocabularies_is_an_error(vocab_parents, tmp_path):
    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(vocab_parents[m]), "parameters": {"weight": 0.5}} for m in "ab"]}
    with pytest.raises(CompatibilityError, match="tokenizer|vocab_size|shape"):
        darwin.merge(recipe, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_identical_tokenizers_skip_surgery_and_keep_every_row(demo, tmp_path):
    recipe = {"merge_method": "linear", "dtype": "float32", "tokenizer_source": "union",
              "models": [{"model": str(demo[m]), "parameters": {"weight": 0.5}} for m in ("parent_a", "parent_b")]}
    from darwin.plan.run import plan_recipe

    plan, cks = plan_recipe(recipe)
    assert plan.vocab is None and not any(t.vocab for t in plan.tasks)
    emb = next(t for t in plan.tasks if t.out_name == "model.embed_tokens.weight")
    assert emb.shape[0] == cks[str(demo["parent_a"])].config["vocab_size"]


def test_padded_rows_beyond_the_tokenizer_are_kept(vocab_parents, tmp_path):
    """Same tokenizer (300 tokens), 320 rows each: nothing is remapped, all 320 rows survive
    (mergekit truncates to 300 here)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from darwin.demo import tiny_llama_config

    tok = AutoTokenizer.from_pretrained(str(vocab_parents["base"]))
    for i in (1, 2):
        torch.manual_seed(10 + i)
        LlamaForCausalLM(tiny_llama_config(vocab_size=320, layers=2)).save_pretrained(tmp_path / f"p{i}")
        tok.save_pretrained(tmp_path / f"p{i}")
    recipe = {"merge_method": "linear", "dtype": "float32", "tokenizer_source": "base", "base_model": str(tmp_path / "p1"),
              "models": [{"model": str(tmp_path / f"p{i}"), "parameters": {"weight": 0.5}} for i in (1, 2)]}
    darwin.merge(recipe, tmp_path / "out", progress=False)
    w = load_file(str(tmp_path / "out" / "model.safetensors"))["model.embed_tokens.weight"]
    p = [load_file(str(tmp_path / f"p{i}" / "model.safetensors"))["model.embed_tokens.weight"] for i in (1, 2)]
    assert w.shape[0] == 320 == json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"]
    torch.testing.assert_close(w, (p[0] + p[1]) / 2)


# ----------------------------------------------------------------------------- bad and unusual input
def _quiet_merge(recipe, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DarwinWarning)
        return darwin.merge(recipe, out, progress=False, **kw)


def test_a_frankenmerge_of_parents_with_different_tokenizers(vocab_parents, tmp_path):
    p = vocab_parents
    recipe = {"merge_method": "passthrough", "dtype": "float32", "tokenizer_source": "union",
              "slices": [{"sources": [{"model": str(p["a"]), "layer_range": [0, 2]}]},
                         {"sources": [{"model": str(p["b"]), "layer_range": [1, 2]}]}]}
    _quiet_merge(recipe, None, dry_run=True)
    _quiet_merge(recipe, tmp_path / "f")
    v, va = _vocab(tmp_path / "f"), _vocab(p["a"])
    w = load_file(str(tmp_path / "f" / "model.safetensors"))["model.embed_tokens.weight"]
    a = load_file(str(p["a"] / "model.safetensors"))["model.embed_tokens.weight"]
    torch.testing.assert_close(w[[v[t] for t in va]], a[list(va.values())])  # the first slice's embedding
    assert json.loads((tmp_path / "f" / "config.json").read_text())["num_hidden_layers"] == 3


@pytest.mark.parametrize("extra, match", [
    ({"tokenizer_source": "union", "tokenizer": {"source": "base"}}, "not both"),
    ({"tokenizer_source": ""}, "'tokenizer_source' is empty"),
    ({"chat_template": " "}, "'chat_template' is empty"),
    ({"tokenizer": {"source": "union", "pad_to_multiple_of": True}}, "pad_to_multiple_of"),
    ({"tokenizer": {"source": "union", "pad_to_multiple_of": 10 ** 8}}, "from 1 to 65536"),
    ({"pad_to_multiple_of": 64}, "did you mean tokenizer.pad_to_multiple_of"),
    ({"merge_method": "slrep"}, "did you mean 'slerp'"),
    ({"chat_template": "ChatML"}, "did you mean 'chatml'"),
])
def test_bad_tokenizer_options_are_refused_before_any_write(vocab_parents, tmp_path, extra, match):
    from darwin.errors import DarwinError

    recipe = {**_three(vocab_parents, [0.5, 0.5, 0.0]), **extra}
    recipe.pop("tokenizer_source") if "tokenizer" in extra and "tokenizer_source" not in extra else None
    with pytest.raises(DarwinError, match=match):
        _quiet_merge(recipe, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_different_vocabularies_without_an_option_say_how_to_fix_it(vocab_parents, tmp_path):
    recipe = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(vocab_parents[m]), "parameters": {"weight": 0.5}} for m in "ab"]}
    with pytest.raises(CompatibilityError, match="set tokenizer_source"):
        darwin.merge(recipe, tmp_path / "x", progress=False)


def test_tokenizer_only_folder_token_paths_and_special_ids(vocab_parents, tmp_path):
    import shutil

    p = vocab_parents
    tok_only = tmp_path / "tok"
    tok_only.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(p["a"] / f, tok_only / f)
    recipe = {**_three(p, [0.5, 0.5, 0.0]), "tokenizer_source": str(tok_only)}
    _quiet_merge(recipe, tmp_path / "t")
    assert _vocab(tmp_path / "t") == _vocab(p["a"])
    with pytest.raises(darwin.errors.RecipeError, match="the tokenizer source"):  # --force must not delete it
        _quiet_merge(recipe, tok_only, force=True)
    assert (tok_only / "tokenizer.json").exists()
    slash = {**_three(p, [0.5, 0.5, 0.0]), "tokenizer_source": None,
             "tokenizer": {"source": str(p["b"]) + "/", "tokens": {"<|endoftext|>": {"source": str(p["b"]) + "/",
                                                                                    "force": True}}}}
    del slash["tokenizer_source"]
    _quiet_merge(slash, tmp_path / "s")
    cfg, cfg_b = (json.loads((f / "config.json").read_text()) for f in (tmp_path / "s", p["b"]))
    assert cfg["eos_token_id"] == cfg_b["eos_token_id"]


def test_a_parent_without_tokenizer_files(vocab_parents, tmp_path):
    import shutil

    p = vocab_parents
    for name, src in (("same", "a"), ("other", "b")):
        shutil.copytree(p[src], tmp_path / name, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    ok = {**_three(p, [0.5, 0.5, 0.0]), "models": [{"model": str(p["a"]), "parameters": {"weight": 0.5}},
                                                    {"model": str(tmp_path / "same"), "parameters": {"weight": 0.5}},
                                                    {"model": str(p["b"]), "parameters": {"weight": 0.5}}]}
    with pytest.warns(DarwinWarning, match="no tokenizer files; taken to share"):
        darwin.merge(ok, tmp_path / "ok", progress=False)
    bad = {**ok, "models": ok["models"][:1] + [{"model": str(tmp_path / "other"), "parameters": {"weight": 0.5}}]}
    with pytest.raises(CompatibilityError, match="no tokenizer files .* 320 embedding rows differ"):
        _quiet_merge(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
