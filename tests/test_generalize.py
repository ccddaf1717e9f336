"""Issue 12 protocol on tiny models: structure beats the best uniform on test, the uniform start,
fixed genes, the default budget, the pull, hold-out and overlap, --baselines-only, summary.json."""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from helpers import FITNESS_FILE
from helpers import evolve_cfg as _cfg
from typer.testing import CliRunner

import darwin
from darwin.errors import RecipeError


@pytest.fixture()
def target_env(demo, monkeypatch):
    monkeypatch.setenv("DARWIN_TEST_A", str(demo["parent_a"]))
    monkeypatch.setenv("DARWIN_TEST_B", str(demo["parent_b"]))


def _linear_grid() -> dict:
    return {"linear": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], "slerp": [], "task_arithmetic": [],
            "ties": {"density": [], "lambda": []}, "dare_ties": {"density": [], "lambda": []}}


def test_structured_genome_beats_best_uniform_on_test(demo, target_env, tmp_path):
    """Planted depth structure (layers 0-1 from A, 2-3 from B): the zones child beats the best tuned
    uniform on the test role, with a paired bootstrap CI (over tensors) above 0; summary.json has
    the documented schema; the search started at the best tuned linear merge."""
    fit = [{"python": f"{FITNESS_FILE}:depth_target"}]
    cfg = _cfg(demo, fit, population=8, generations=10, genome="zones", baselines=_linear_grid())
    del cfg["search"]["sigma0"]
    cfg["selection"], cfg["test"] = fit, fit
    res = darwin.evolve(cfg, tmp_path / "run", progress=False)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s == res.summary and s["start"] == "tuned linear" and s["child"] == "best candidate"
    kinds = {m["name"]: m["kind"] for m in s["models"]}
    assert kinds["parent A"] == "parent" and kinds["tuned linear"] == "uniform" and kinds["child"] == "child"
    assert all({"name", "kind", "search_fitness", "selection_fitness", "test_fitness"} <= set(m) for m in s["models"])
    c = s["child_vs_best_uniform"]
    assert c["uniform"] in ("tuned linear", "uniform 0.5") and c["delta_test"] > 0
    lo, hi = c["ci95"]
    assert 0 < lo <= c["delta_test"] <= hi
    assert c["test_documents"] == len(json.loads((tmp_path / "run" / "test_scores.json").read_text())["child"])
    genes = res.best["genes"]
    assert genes["zone_0_ratio"] < 0.3 and genes["zone_2_ratio"] > 0.7  # A early, B late
    card = (tmp_path / "run" / "child" / "README.md").read_text()
    assert "Child − best uniform" in card and "95% CI" in card


def test_uniform_start_reproduces_the_tuned_linear_merge(demo):
    """zones at the uniform start of linear w = 0.3 decodes to (0.7·A + 0.3·B) on every tensor;
    darwin14's start is SLERP-dominated with MRI trust near 0."""
    from darwin.genome.decode import decode, pair_layout, uniform_start
    from darwin.genome.spec import load_genome
    from darwin.io.checkpoint import Checkpoint

    refs = [str(demo["parent_a"]), str(demo["parent_b"])]
    lay = pair_layout({r: Checkpoint(r) for r in refs}, *refs)
    zones = load_genome("zones")
    values = uniform_start(zones, "linear", {"weight_b": 0.3}, lay.num_layers)
    plan = decode(zones, values, lay)
    assert {t.method for t in plan.tasks} == {"linear"}
    assert all(t.parent["weight"] == pytest.approx([0.7, 0.3], abs=1e-9) for t in plan.tasks)
    assert uniform_start(zones, "slerp", {"t": 0.3}, lay.num_layers) is None
    d14 = uniform_start(load_genome("darwin14"), "slerp", {"t": 0.3}, lay.num_layers)
    assert d14["global_ratio"] == 0.3 and d14["merge_method_weight"] == pytest.approx(0.95)
    assert d14["mri_trust"] == pytest.approx(0.05) and d14["attn_ratio"] == 0.5
    edge = uniform_start(zones, "linear", {"weight_b": 1.0}, lay.num_layers)
    assert edge["global_ratio"] == pytest.approx(0.95)  # kept inside the bounds, still searchable


def test_fixed_genes_default_budget_and_pull(demo, target_env, tmp_path):
    """search.fixed removes genes from CMA-ES (13 of 14 searched, the fixed value in every
    candidate); without generations the budget is 10 × dims; the pull adds to the CMA-ES loss only."""
    from darwin.search.cmaes import CmaSearch
    from darwin.search.config import SearchConfig

    assert SearchConfig().num_generations(6) == 7 and SearchConfig().popsize(6) == 9  # ⌈60 / 9⌉
    assert SearchConfig().num_generations(14) == 13  # ⌈140 / 11⌉
    cfg = _cfg(demo, [{"python": f"{FITNESS_FILE}:distance_to_target"}], population=4, generations=2)
    cfg["search"]["fixed"] = {"mri_trust": 0.0, "density_a": 0.8}
    res = darwin.evolve(cfg, tmp_path / "run", progress=False, write_outputs=False)
    cands = [c for h in res.history for c in h["candidates"]]
    assert all(len(c["x"]) == 12 and c["genes"]["mri_trust"] == 0.0 and c["genes"]["density_a"] == 0.8
               for c in cands)
    s = CmaSearch([0.0, 0.0], 0.5, 4, 0, pull=2.0)
    assert s.loss([1.0, 3.0], {"fitness": 1.0}) == pytest.approx(-1.0 + 2.0 * 5.0)
    assert s.loss([1.0, 3.0], {"fitness": None}) == CmaSearch([0.0, 0.0], 0.5, 4, 0).loss([0, 0], {"fitness": None})
    for bad, msg in (({"nope": 1.0}, "has no genes"), ({"mri_trust": 2.0}, "outside")):
        cfg["search"]["fixed"] = bad
        with pytest.raises(RecipeError, match=msg):
            darwin.evolve(cfg, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()
    cfg["search"]["fixed"] = {}
    cfg["search"]["start"] = "uniform"
    with pytest.raises(RecipeError, match="start: uniform needs tuned baselines"):
        darwin.evolve(cfg, tmp_path / "bad", progress=False)


def _docs(folder, texts):
    folder.mkdir()
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(folder / "docs.jsonl")


def test_holdout_without_selection_and_overlap_warning(demo, target_env, tmp_path, caplog):
    """Without selection: a documented share of the fitness documents is held out (by text hash,
    disjoint, deterministic) and the run says so; test text that repeats fitness text is flagged."""
    from darwin.io.documents import load_documents, split_documents
    from darwin.search.config import load_parents_config
    from darwin.search.dataroles import overlap_warnings, with_holdout

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
    texts = [" ".join(words[(i + j) % len(words)] + str(i) for j in range(20)) for i in range(40)]
    fit = _docs(tmp_path / "fit", texts)
    docs = load_documents([fit])
    sel, rest = split_documents(docs, 0.3, "selection"), split_documents(docs, 0.3, "fitness")
    assert len(sel) + len(rest) == 40 and not {d.name for d in sel} & {d.name for d in rest}
    assert 4 <= len(sel) <= 20 and [d.name for d in sel] == [d.name for d in split_documents(docs, 0.3, "selection")]
    entry = {"perplexity": {"files": [fit], "window": 16, "documents": True}}
    cfg = load_parents_config(_cfg(demo, [entry], population=2, generations=1))
    derived, note = with_holdout(cfg)
    assert "holding out 30%" in note and "docs.jsonl" in note
    assert derived.selection[0].perplexity.part == "selection" and derived.fitness[0].perplexity.part == "fitness"
    assert overlap_warnings(derived) == []
    test = _docs(tmp_path / "test", ["unrelated words " * 10, rest[0].text, rest[1].text + " and more"])
    leaky = load_parents_config(_cfg(demo, [entry], population=2, generations=1,
                                     test=[{"perplexity": {"files": [test], "documents": True}}]))
    warn = overlap_warnings(with_holdout(leaky)[0])
    assert len(warn) == 1 and "test data overlaps" in warn[0] and "2 of 3 documents" in warn[0]
    assert str(tmp_path / "test" / "docs.jsonl") in warn[0]
    plain = load_parents_config(_cfg(demo, [{"python": f"{FITNESS_FILE}:constant_zero"}], population=2,
                                     generations=1))
    assert "no document-level fitness" in with_holdout(plain)[1]


def test_baselines_only_writes_the_best_tuned_uniform(demo, target_env, tmp_path):
    """--baselines-only: no search; the child is the best tuned linear merge (w_B = 0.3 for the
    planted target) and recipe.yaml is a plain mergekit recipe."""
    from darwin.cli import app

    cfg = _cfg(demo, [{"python": f"{FITNESS_FILE}:distance_to_target"}], population=2, generations=1,
               baselines=_linear_grid())
    f = tmp_path / "parents.yaml"
    f.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["evolve", str(f), "-o", str(tmp_path / "run"), "--baselines-only"])
    assert res.exit_code == 0, res.output
    recipe = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert recipe["merge_method"] == "linear" and [m["parameters"]["weight"] for m in recipe["models"]] == [0.7, 0.3]
    assert not (tmp_path / "run" / "history.jsonl").exists() or not (tmp_path / "run" / "history.jsonl").read_text()
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["child"] == "tuned linear" and s["candidate_vs_best_uniform"] is None
    assert "tuned linear" in res.output


def test_resume_with_selection_reproduces_the_unbroken_run(demo, target_env, tmp_path, caplog):
    """A run stopped after 2 of 4 generations and resumed has the same history as an unbroken one,
    selection scores included."""
    cfg = _cfg(demo, [{"python": f"{FITNESS_FILE}:distance_to_target"}], population=4, generations=4,
               genome="zones", baselines=_linear_grid())
    cfg["selection"] = [{"python": f"{FITNESS_FILE}:distance_to_uniform"}]
    full = darwin.evolve(cfg, tmp_path / "full", progress=False, write_outputs=False)
    short = {**cfg, "search": {**cfg["search"], "generations": 2}}
    darwin.evolve(short, tmp_path / "part", progress=False, write_outputs=False)
    run_json = tmp_path / "part" / "run.json"
    snap = json.loads(run_json.read_text())
    snap["search"]["generations"] = 4  # as if the run had been killed after generation 2
    run_json.write_text(json.dumps(snap))
    with caplog.at_level(logging.WARNING):
        resumed = darwin.evolve(cfg, tmp_path / "part", progress=False, write_outputs=False, resume=True)
    strip = lambda h: [{k: v for k, v in c.items() if k not in ("seconds", "worker")}
                       for g in h for c in g["candidates"]]
    assert strip(resumed.history) == strip(full.history)
    assert sum(c.get("selection") is not None for g in full.history for c in g["candidates"]) == 4 * 3
    assert resumed.summary["models"] == full.summary["models"]


def test_no_decision_reads_the_test_data(demo, target_env, tmp_path):
    """Two runs that differ only in their test data (the planted target vs pure noise) make the same
    decisions: the same history, tuned baselines, best uniform, final pick and child; only the
    test column differs."""
    base = _cfg(demo, [{"python": f"{FITNESS_FILE}:distance_to_target"}], population=4, generations=2,
                genome="zones", baselines=_linear_grid())
    base["selection"] = [{"python": f"{FITNESS_FILE}:distance_to_uniform"}]
    runs = []
    for i, test in enumerate(("depth_target", "weight_noise")):
        cfg = {**base, "test": [{"python": f"{FITNESS_FILE}:{test}"}]}
        runs.append(darwin.evolve(cfg, tmp_path / f"run{i}", progress=False, write_outputs=False))
    a, b = runs
    strip = lambda h: [{k: v for k, v in c.items() if k not in ("seconds", "worker")}
                       for g in h for c in g["candidates"]]
    assert strip(a.history) == strip(b.history) and a.winner == b.winner
    assert {k: v["fitness"] for k, v in a.baselines.items()} == {k: v["fitness"] for k, v in b.baselines.items()}
    assert a.summary["best_uniform"] == b.summary["best_uniform"] and a.summary["child"] == b.summary["child"]
    assert [m["test_fitness"] for m in a.summary["models"]] != [m["test_fitness"] for m in b.summary["models"]]
