"""Model golf: parameter counting, depth operators (drop, collapse), constraints, a tiny golf run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_families import build_parents, load_tensors, read_config
from transformers import AutoModelForCausalLM

import darwin
from darwin.errors import DarwinError
from darwin.genome.golf import GolfBreeder, rank_prior
from darwin.io.checkpoint import Checkpoint
from darwin.plan.depth import choose_depth

FITNESS_FILE = Path(__file__).parent / "data" / "fitness_fns.py"


def _loaded_count(folder: Path) -> int:
    model = AutoModelForCausalLM.from_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def _breeder(folder: Path, budget: int | None = None) -> tuple[GolfBreeder, dict]:
    ck = {str(folder): Checkpoint(folder)}
    return GolfBreeder(ck, [str(folder)], budget or 10**12, torch.float32), ck


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_matches_loaded_model(tmp_path, tied):
    a, _ = build_parents("llama", tmp_path, tie_word_embeddings=tied)
    br, ck = _breeder(a)
    plan = br.plan(choose_depth(2, [1], 0.0))
    res = darwin.merge((plan, ck), tmp_path / "child", progress=False)
    assert plan.num_parameters == _loaded_count(res.out_dir)
    full = br.plan(choose_depth(2, [0, 1], 0.0))
    assert full.num_parameters == _loaded_count(a)
    head = 0 if tied else 128 * 32  # an untied head is a stored tensor; a tied one is counted once
    assert full.num_parameters - plan.num_parameters == br.layer_params[0]
    assert br.fixed_params == 128 * 32 + 32 + head  # embedding + final norm (+ head)


@pytest.mark.parametrize("collapse", [0.0, 0.5, 1.0])
def test_drop_and_collapse_give_loadable_models_with_per_layer_config(tmp_path, collapse):
    a, _ = build_parents("gemma3_text", tmp_path)  # 4 layers, layer_types alternate sliding/full
    br, ck = _breeder(a)
    choice = choose_depth(4, [0, 3], collapse)
    assert choice.folded == ((1, 2), ())
    res = darwin.merge((br.plan(choice), ck), tmp_path / "child", progress=False)
    cfg, parent_cfg = read_config(res.out_dir), read_config(a)
    assert cfg["num_hidden_layers"] == 2
    assert cfg["layer_types"] == [parent_cfg["layer_types"][0], parent_cfg["layer_types"][3]]
    model = AutoModelForCausalLM.from_pretrained(res.out_dir).eval()
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    ids = torch.tensor([[1, 5, 9, 17]])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    # LaCo golden value, computed independently: θ0 + c·((θ1 − θ0) + (θ2 − θ0)); layer 3 → child layer 1 unchanged
    t, child = load_tensors(a), load_tensors(res.out_dir)
    n = "model.layers.{}.mlp.up_proj.weight"
    want = t[n.format(0)] + collapse * ((t[n.format(1)] - t[n.format(0)]) + (t[n.format(2)] - t[n.format(0)]))
    torch.testing.assert_close(child[n.format(0)], want, rtol=1e-6, atol=1e-6)
    assert torch.equal(child[n.format(1)], t[n.format(3)])


def test_budget_fit_and_prior_ranks(tmp_path):
    a, _ = build_parents("llama", tmp_path, num_hidden_layers=4)
    full = _breeder(a)[0]
    budget = full.fixed_params + 2 * full.layer_params[0]
    br, _ = _breeder(a, budget)
    assert br.fit([0.1, 0.9, 0.5, 0.7]) == [1, 3]
    assert rank_prior([0.3, 0.1, 0.9, 0.2]) == pytest.approx([2 / 3, 0.0, 1.0, 1 / 3])
    br.set_prior([0.3, 0.1, 0.9, 0.2])
    assert br.shortgpt().config["num_hidden_layers"] == 2
    assert [t.inputs[0].tensor for t in br.shortgpt().tasks if t.out_name.endswith("0.mlp.up_proj.weight")] == \
        ["model.layers.0.mlp.up_proj.weight"]  # layers 0 and 2 have the highest Block Influence
    with pytest.raises(DarwinError, match="cannot fit"):
        _breeder(a, full.fixed_params)


def test_constraint_violating_candidates_are_never_evaluated(demo, tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    monkeypatch.setenv("DARWIN_TEST_CALLS", str(calls))
    size = _loaded_count(demo["parent_a"])
    cfg = {"parents": [str(demo["parent_a"]), str(demo["parent_b"])], "genome": "darwin14", "mri": {"enabled": False},
           "fitness": [{"python": f"{FITNESS_FILE}:counted_nll"}],
           "search": {"population": 4, "generations": 2, "seed": 0, "constraints": {"max_params": size - 1}},
           "baselines": {"enabled": False}}
    with pytest.raises(DarwinError, match="violated a constraint"):
        darwin.evolve(cfg, tmp_path / "run", progress=False, write_outputs=False)
    assert len(calls.read_text().splitlines()) == 3  # the three baselines only
    hist = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    cands = [c for h in hist for c in h["candidates"]]
    assert len(cands) == 8 and all(c["fitness"] is None and "max_params" in c["error"] for c in cands)
    assert all(c["parameters"] == size and c["violation"] > 0 for c in cands)


def test_tiny_golf_run_meets_budget_loads_and_generates(demo, tmp_path):
    size = _loaded_count(demo["parent_a"])
    br = _breeder(Path(demo["parent_a"]))[0]
    budget = br.fixed_params + 2 * br.layer_params[0] + 10  # 2 of 4 layers fit
    darwin_cli = Path(sys.executable).with_name("darwin")
    p = subprocess.run([darwin_cli, "golf", demo["parent_a"], demo["parent_b"], "-o", tmp_path / "run",
                        "--max-params", str(budget), "--min-context", "200", "--population", "4", "--method", "depth",
                        "--generations", "2"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    child = tmp_path / "run" / "child"
    model = AutoModelForCausalLM.from_pretrained(child).eval()
    n = sum(q.numel() for q in model.parameters())
    assert n <= budget < size and model.config.num_hidden_layers == 2
    rep = json.loads((tmp_path / "run" / "constraints.json").read_text())
    assert rep["parameters"] == n and rep["params_ok"] and rep["context_ok"] and rep["window_tokens"] == 200
    card = (child / "README.md").read_text()
    assert f"{n:,}" in card and "context" in card
    base = json.loads((tmp_path / "run" / "baselines.json").read_text())
    assert "ShortGPT (drop lowest BI)" in base and base["ShortGPT (drop lowest BI)"]["fitness"] is not None
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    assert (tmp_path / "run" / "layer_prior.json").exists()


def test_golf_refuses_unreachable_context_before_writing(demo, tmp_path):
    cfg = {"parents": [str(demo["parent_a"])], "genome": "golf", "mri": {"enabled": False},
           "fitness": [{"python": f"{FITNESS_FILE}:nll_fixed_ids"}],
           "search": {"population": 2, "generations": 1, "constraints": {"max_params": 45_000, "min_context": 1028}}}
    from darwin.errors import RecipeError

    with pytest.raises(RecipeError, match="min_context = 1028.*context window is 256"):
        darwin.evolve(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_golf_on_mamba2_and_on_a_hybrid_with_collapse(demo, tmp_path):
    """Non-finite config values (Mamba-2's time_step_limit) and mixed layer kinds (Bamba) both work."""
    hybrid = darwin.crossover(str(demo["parent_a"]), str(demo["ssm"]), tmp_path / "hybrid", mixers="ABBA",
                              progress=False).out_dir
    for name, folder in (("ssm", Path(demo["ssm"])), ("hybrid", hybrid)):
        full = _breeder(folder)[0]
        br, ck = _breeder(folder, full.fixed_params + sum(sorted(full.layer_params)[:2]))
        plan = br.plan(choose_depth(4, br.fit([0.9, 0.2, 0.1, 0.8]), 0.5))
        res = darwin.merge((plan, ck), tmp_path / f"{name}-child", progress=False)
        model = AutoModelForCausalLM.from_pretrained(res.out_dir).eval()
        assert model.config.num_hidden_layers == 2
        assert sum(p.numel() for p in model.parameters()) == plan.num_parameters <= br.max_params
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits).all()


def test_trim_corpus_folder_is_not_overwritten_and_outputs_cannot_replace_parents(demo, tmp_path):
    darwin_cli = Path(sys.executable).with_name("darwin")
    (tmp_path / "c.txt").write_text("The quick brown fox. Hello world.\n")
    keep = tmp_path / "g-trimmed-0"
    keep.mkdir()
    (keep / "precious.txt").write_text("x")
    p = subprocess.run([darwin_cli, "golf", demo["parent_a"], "-o", tmp_path / "g", "--max-params", "45K",
                        "--min-context", "200", "--trim-corpus", tmp_path / "c.txt"], capture_output=True, text=True)
    assert p.returncode == 2 and "exists" in p.stderr and (keep / "precious.txt").read_text() == "x"
    p = subprocess.run([darwin_cli, "golf", demo["parent_a"], "-o", tmp_path / "h", "--max-params", "10K",
                        "--min-context", "200", "--trim-corpus", tmp_path / "c.txt", "--method", "depth"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "cannot fit" in p.stderr
    assert not (tmp_path / "h-trimmed-0").exists() and not (tmp_path / "h").exists()
    import shutil

    shutil.copytree(demo["parent_a"], tmp_path / "pa")
    from darwin.errors import RecipeError
    from darwin.plan.trim import trim_vocab

    with pytest.raises(RecipeError, match="is parent"):
        darwin.crossover(str(tmp_path / "pa"), str(demo["ssm"]), tmp_path / "pa", mixers="ABAB", force=True,
                         progress=False)
    with pytest.raises(RecipeError, match="is the model being trimmed"):
        trim_vocab(tmp_path / "pa", [tmp_path / "c.txt"], tmp_path / "pa", force=True)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DarwinError, match="no text files|no tokens|contain no text"):
        trim_vocab(tmp_path / "pa", [tmp_path / "empty.txt"], tmp_path / "t")
    assert (tmp_path / "pa" / "model.safetensors").exists() and not (tmp_path / "t").exists()


def test_width_golf_is_one_command_meets_the_budget_and_writes_a_contest_card(demo, tmp_path):
    """`darwin golf` (method width, the default): trim the vocabulary, prune to the widest uniform FFN
    under the budget with re-fits, verify the saved child, and state size, context, method,
    calibration data, licence and lineage on its card."""
    from pydoc_data.topics import topics

    corpus = tmp_path / "c.txt"
    corpus.write_text(" ".join(topics[k] for k in sorted(topics)[:30]))
    full = _loaded_count(demo["parent_a"])
    budget = int(full * 0.8)
    darwin_cli = Path(sys.executable).with_name("darwin")
    base = [darwin_cli, "golf", demo["parent_a"], "--max-params", str(budget), "--min-context", "200",
            "--trim-corpus", corpus, "--tokens", "1024"]
    p = subprocess.run([*base, "-o", tmp_path / "run"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    child = tmp_path / "run" / "child"
    model = AutoModelForCausalLM.from_pretrained(child).eval()
    n = sum(q.numel() for q in model.parameters())
    parent_cfg, cfg = read_config(demo["parent_a"]), read_config(child)
    assert n <= budget < full and cfg["intermediate_size"] < parent_cfg["intermediate_size"]
    assert cfg["num_hidden_layers"] == parent_cfg["num_hidden_layers"]  # width, not depth
    run = json.loads((tmp_path / "run" / "golf.json").read_text())
    assert run["constraints"]["parameters"] == n and run["constraints"]["window_tokens"] == 200
    assert run["parameters_original"] == full and run["ffn"] == cfg["intermediate_size"]
    card = (child / "README.md").read_text()
    for needle in (f"**{n:,}**", "golf-width", "context: 256 positions", "licence", "calibration data: 1,024 tokens",
                   "`c.txt`", "## Lineage", "trim-vocab", f"the original model, {full:,} parameters"):
        assert needle in card, needle
    assert json.loads((child / "lineage.json").read_text())["method"] == "golf-width"
    assert f"{full:,} → {n:,}" in " ".join(p.stdout.split())
    # the same model twice is not width golf; an unreachable context leaves nothing behind
    p = subprocess.run([darwin_cli, "golf", demo["parent_a"], demo["parent_b"], "-o", tmp_path / "two"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--method depth" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([*base[:6], "100000", *base[7:], "-o", tmp_path / "ctx"], capture_output=True, text=True)
    assert p.returncode == 2 and "context window of 256" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "ctx").exists() and not (tmp_path / "ctx-trimmed-0").exists()
    p = subprocess.run([*base, "-o", tmp_path / "run"], capture_output=True, text=True)
    assert p.returncode == 2 and "finished golf run" in p.stderr  # no silent overwrite


def test_golf_refuses_the_other_methods_options_and_unknown_scores(demo, tmp_path):
    from darwin.errors import RecipeError

    for kw, match in ((dict(population=4), "population: option\\(s\\) of method depth"),
                      (dict(method="depth", sequential=True), "sequential: option\\(s\\) of method width"),
                      (dict(score="nope"), "score 'nope': one of"), (dict(method="breadth"), "method")):
        with pytest.raises(RecipeError, match=match):
            darwin.golf(demo["parent_a"], tmp_path / "g", max_params="45K", min_context=200, progress=False, **kw)
    assert not (tmp_path / "g").exists()


def test_width_golf_never_replaces_its_inputs_or_a_folder_that_is_not_a_run(demo, tmp_path, monkeypatch):
    import shutil

    from darwin.errors import DarwinError, OutputExistsError, RecipeError

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "c.txt").write_text(" ".join(["the quick brown fox jumps over the lazy dog"] * 60))
    model = tmp_path / "m1"
    shutil.copytree(demo["parent_a"], model)
    kw = dict(max_params=50_000, min_context=200, tokens=1024, progress=False)
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    for out, err, match in ((".", OutputExistsError, "current folder"), ("", OutputExistsError, "current folder|empty"),
                            (model, RecipeError, "is the model"), (tmp_path, RecipeError, "contains the model"),
                            (corpus, RecipeError, "is the text")):
        with pytest.raises(err, match=match):
            darwin.golf(str(model), out, trim_corpus=[corpus], force=True, **kw)
    assert (work / "keep.txt").exists() and (model / "config.json").exists() and (corpus / "c.txt").exists()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "n.txt").write_text("mine")
    for flags in (dict(force=True), dict(resume=True)):
        with pytest.raises(OutputExistsError, match="no golf run|exists"):
            darwin.golf(str(model), notes, trim_corpus=[corpus], **flags, **kw)
    assert (notes / "n.txt").read_text() == "mine"
    run = tmp_path / "run"
    darwin.golf(str(model), run, trim_corpus=[corpus], **kw)
    with pytest.raises(OutputExistsError, match="finished golf run"):
        darwin.golf(str(model), run, trim_corpus=[corpus], resume=True, **kw)
    shutil.rmtree(run)  # the trimmed parent stays: resuming must check it was made from the same inputs
    with pytest.raises(OutputExistsError, match="was trimmed from"):
        darwin.golf(demo["parent_b"], run, trim_corpus=[corpus], resume=True, **kw)
    res = darwin.golf(str(model), run, trim_corpus=[corpus], resume=True, **kw)
    assert res.constraints["parameters"] <= 50_000
    # already under budget: copied unchanged; an explicit width over the budget is refused
    big = darwin.prune(str(model), tmp_path / "same", calibration=str(corpus / "c.txt"), max_params=10**6,
                       progress=False)
    assert big.parameters_after == big.parameters_before and big.calibration_tokens == 0
    for bad, match in ((dict(ffn=60, max_params=30_000), "over max_params"), (dict(ffn=8, ridge=float("inf")), "ridge"),
                       (dict(ffn=8, calibration=None), "calibration"), (dict(ffn=8, calibration=[1]), "calibration")):
        args = {"calibration": [corpus], **bad}
        with pytest.raises(DarwinError, match=match):
            darwin.prune(str(model), tmp_path / "p", progress=False, **args)
    with pytest.raises(RecipeError, match="models"):
        darwin.golf(None, tmp_path / "g", **kw)  # type: ignore[arg-type]
    with pytest.raises(RecipeError, match="out_dir"):
        darwin.golf(str(model), None, **kw)  # type: ignore[arg-type]
