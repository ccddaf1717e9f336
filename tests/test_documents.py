"""Document-level fitness, document loading and the paired bootstrap (golden values by hand)."""

from __future__ import annotations

import json

import pytest
import torch

from darwin.errors import DarwinError
from darwin.fitness.stats import paired_bootstrap
from darwin.io.documents import load_documents


def test_documents_from_files_jsonl_and_separator(tmp_path):
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "record one"}) + "\n\n"
                                      + json.dumps({"prompt": "def f():", "canonical_solution": " return 1"}) + "\n")
    docs = load_documents([tmp_path])
    assert [d.text for d in docs] == ["first file", "record one", "def f(): return 1"]
    assert docs[1].name.endswith("b.jsonl#0")
    (tmp_path / "c.txt").write_text("x\n===\ny\n===\n  \n")
    chunks = load_documents([tmp_path / "c.txt"], separator="===")
    assert [d.text.strip() for d in chunks] == ["x", "y"]


def test_bad_documents_are_named_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(DarwinError, match="bad.jsonl: line 2"):
        load_documents([bad])
    bad.write_text('{"body": "no text field"}\n')
    with pytest.raises(DarwinError, match="no string field 'text'"):
        load_documents([bad])
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(DarwinError, match="no document"):
        load_documents([tmp_path / "empty.txt"])


def test_document_fitness_equals_per_document_nll(demo, tmp_path):
    """Golden: each document's score is −(mean NLL) of its first `window` tokens, from the model's own loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from darwin.fitness.perplexity import DocumentFitness

    texts = ["the quick brown fox jumps over the lazy dog " * 3, "hello world, hello merge", "a b c d e f g"]
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    model = AutoModelForCausalLM.from_pretrained(demo["parent_a"]).eval()
    tok = AutoTokenizer.from_pretrained(demo["parent_a"])
    fit = DocumentFitness([f], window=8, batch_size=2)
    scores = fit.doc_scores(model, tok)
    expect = []
    for t in texts:
        ids = tok(t, add_special_tokens=False, return_tensors="pt").input_ids[:, :8]
        with torch.no_grad():
            expect.append(-float(model(input_ids=ids, labels=ids).loss))
    assert scores == pytest.approx(expect, abs=1e-5)
    assert fit(model, tok) == pytest.approx(sum(expect) / 3, abs=1e-5)
    assert len(fit.document_names(tok)) == 3


def test_paired_bootstrap_golden():
    # two documents with differences 0 and 1: resampled means are 0, ½, 1 with P = ¼, ½, ¼,
    # so the 2.5 % and 97.5 % quantiles are exactly 0 and 1
    assert paired_bootstrap([1.0, 2.0], [1.0, 1.0]) == (0.5, 0.0, 1.0)
    # three documents 1, 2, 3: the smallest mean (all 1s) has P = 1/27 > 2.5 %, so the CI is [1, 3]
    assert paired_bootstrap([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]) == (2.0, 1.0, 3.0)
    # constant difference: a zero-width interval
    assert paired_bootstrap([0.3] * 5, [0.1] * 5) == pytest.approx((0.2, 0.2, 0.2))
    # same inputs, same seed: the same interval; a clear gain excludes 0
    g = torch.Generator().manual_seed(0)
    b = torch.randn(200, generator=g).tolist()
    a = [x + 0.05 + 0.01 * float(torch.randn(1, generator=g)) for x in b]
    d, lo, hi = paired_bootstrap(a, b)
    assert lo > 0 and lo < d < hi and paired_bootstrap(a, b) == (d, lo, hi)
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_documents_config_keys_are_checked():
    from darwin.search.config import PerplexitySpec

    assert PerplexitySpec(files=["x"], documents=True, separator="\n\n").documents
    with pytest.raises(ValueError, match="need documents: true"):
        PerplexitySpec(files=["x"], separator="\n\n")
