"""Vocabulary trimming: consistent tokenizer, exact logits on kept tokens, any text still encodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

import darwin  # noqa: F401
from darwin.arch.vocab import trim_bpe_tokenizer
from darwin.demo import build_tokenizer, save_model, tiny_llama_config
from darwin.errors import CompatibilityError
from darwin.plan.trim import trim_vocab

CORPUS = "The quick brown fox jumps over the lazy dog. def add(a, b):\n    return a + b\n" * 3
OTHER = "Zebras quietly vex jumping wizards: ÄÖÜ ß — 東京 ✓ {x: [1, 2]}"


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def parent(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("trim")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tied=request.param)).eval()
    folder = save_model(model, root / "model", build_tokenizer())
    (root / "corpus.txt").write_text(CORPUS)
    return folder, root / "corpus.txt"


def test_trimmed_model_is_exact_on_kept_tokens_and_encodes_anything(parent, tmp_path):
    folder, corpus = parent
    res = trim_vocab(folder, [corpus], tmp_path / "child")
    old_tok, new_tok = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(res.out_dir)
    old_m = AutoModelForCausalLM.from_pretrained(folder).eval()
    new_m = AutoModelForCausalLM.from_pretrained(res.out_dir).eval()
    assert res.new_vocab < res.old_vocab == 384 and new_m.config.vocab_size == res.new_vocab
    assert new_m.get_input_embeddings().weight.shape == (res.new_vocab, 32)
    assert sum(p.numel() for p in new_m.parameters()) == res.parameters_after
    assert sum(p.numel() for p in old_m.parameters()) == res.parameters_before
    # the corpus tokenizes into the same pieces, and the logits on the kept columns are unchanged
    old_ids, new_ids = old_tok(CORPUS).input_ids, new_tok(CORPUS).input_ids
    assert old_tok.convert_ids_to_tokens(old_ids) == new_tok.convert_ids_to_tokens(new_ids)
    kept = [old_tok.convert_tokens_to_ids(t) for t in new_tok.convert_ids_to_tokens(list(range(res.new_vocab)))]
    with torch.no_grad():
        lo = old_m(input_ids=torch.tensor([old_ids])).logits[..., kept]
        ln = new_m(input_ids=torch.tensor([new_ids])).logits
    torch.testing.assert_close(ln, lo, rtol=0, atol=0)
    # text outside the corpus still encodes (in shorter pieces) and decodes back exactly
    ids = new_tok(OTHER, add_special_tokens=False).input_ids
    assert max(ids) < res.new_vocab and new_tok.decode(ids) == OTHER
    assert len(ids) >= len(old_tok(OTHER, add_special_tokens=False).input_ids)
    # special-token ids follow the renumbering
    assert new_tok.convert_ids_to_tokens(new_m.config.eos_token_id) == old_tok.convert_ids_to_tokens(
        old_m.config.eos_token_id)
    lineage = json.loads((res.out_dir / "lineage.json").read_text())
    assert lineage["vocab_after"] == res.new_vocab


def test_trim_refuses_unsupported_tokenizers_and_existing_output(parent, tmp_path):
    folder, corpus = parent
    with pytest.raises(CompatibilityError, match="BPE"):
        trim_bpe_tokenizer({"model": {"type": "WordPiece", "vocab": {"a": 0}}}, {0})
    with pytest.raises(CompatibilityError, match="byte_fallback"):
        trim_bpe_tokenizer({"model": {"type": "BPE", "byte_fallback": True, "vocab": {"a": 0}, "merges": []}}, {0})
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("x")
    darwin_cli = Path(sys.executable).with_name("darwin")
    p = subprocess.run([darwin_cli, "trim-vocab", folder, "-o", tmp_path / "exists", "--corpus", corpus],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "exists" in p.stderr
    assert (tmp_path / "exists" / "keep.txt").read_text() == "x"
    p = subprocess.run([darwin_cli, "trim-vocab", folder, "-o", tmp_path / "ok", "--corpus", corpus],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "vocabulary 384" in p.stdout


def test_licence_is_inherited_through_a_trimmed_parent(parent, tmp_path):
    import shutil

    from darwin.search.constraints import parent_licence

    folder, corpus = parent
    shutil.copytree(folder, tmp_path / "licensed")
    (tmp_path / "licensed" / "ZOO.json").write_text(json.dumps({"licence": "Apache-2.0 (test)"}))
    res = trim_vocab(tmp_path / "licensed", [corpus], tmp_path / "child")
    assert parent_licence(res.out_dir) == "Apache-2.0 (test)"
    assert parent_licence(folder) is None
