"""Benchmark: does a bred child beat the best *tuned* uniform merge on text no decision of the search saw?

The composition design of ``../shared/reference/evaluation-protocol.md`` on real SmolLM2-135M
(fixtures: ``generalize_fixtures.py``; fine-tuned parents, labelled as such):

* parents: ``prose`` (fortunes + Devil's Dictionary) and ``code`` (CPython stdlib), base SmolLM2;
* fitness / selection / test: the target split by document (pydoc topics 25 / 15 / 39, HumanEval
  50 / 30 / 84), every document scored on its first ``--window`` tokens (mean NLL, nats);
* arms: ``darwin14`` and ``zones`` (the reduced genome), ``--seeds`` seeds each, every one against
  the tuned uniform grids (linear, SLERP, task arithmetic, TIES, DARE-TIES), the default budget
  (10 × genome dimension) and early stopping (``--patience``); the MRI ablation (``--mri``) runs
  darwin14 with τ fixed at 0 and at 1 at the same budget; the positive control (``--control``)
  runs zones on two fine-tunes of disjoint layer halves (every seed of ``--seeds``);
* guard: perplexity of the US Constitution (forgetting), child vs the best uniform.

The tuned grids are scored once per parent pair and shared by every arm and seed (same parents,
same data; the DARE-TIES grid uses seed 0's masks): each later run folder is seeded with that
``baselines.json`` and ``run.json`` and then resumed, which is exactly what a resumed run reads.

Pre-registered success: the child beats the best tuned uniform on test with the 95% CI above 0 in
≥ 2 of 3 seeds, and the guard regresses ≤ 0.5%. Nothing here reads the test split to decide.

Usage::

    .venv/bin/python benchmarks/generalize_fixtures.py          # once: data and parents (cached)
    .venv/bin/python benchmarks/bench_generalize.py [--arms darwin14,zones] [--seeds 0,1,2] [--mri] [--control]
    .venv/bin/python benchmarks/bench_generalize.py --mri --control --finished   # the table of what has run

Writes ``benchmarks/_work/generalize/<arm>-s<seed>/`` (run folders) and ``results.json``,
``results.md`` there; prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("DARWIN_CACHE", HERE.parent / ".cache"))
GEN = CACHE / "generalize"


def config(arm: str, seed: int, window: int, patience: int, pair: tuple[str, str]) -> dict[str, Any]:
    """The run's parents.yaml as a dict (arm: ``darwin14``, ``zones``, ``tau0``, ``tau1``)."""
    data = GEN / "data"
    docs = lambda role: [{"perplexity": {"files": [str(data / f"target_{role}.jsonl")], "window": window,
                                         "documents": True, "batch_size": 16}}]
    genome = "zones" if arm.startswith("zones") else "darwin14"
    search: dict[str, Any] = {"seed": seed, "patience": patience}
    if arm in ("tau0", "tau1"):  # the same budget as darwin14's default (10 × 14 genes)
        search.update(fixed={"mri_trust": 0.0 if arm == "tau0" else 1.0}, max_evaluations=140)
    return {"parents": [str(GEN / "parents" / pair[0]), str(GEN / "parents" / pair[1])],
            "base": str(CACHE / "zoo" / "smollm2"), "genome": genome, "mri": {"enabled": genome == "darwin14"},
            "fitness": docs("search"), "selection": docs("selection"), "test": docs("test"),
            "search": search, "dtype": "bfloat16",
            "baselines": {"slerp": [0.1, 0.3, 0.5, 0.7, 0.9]}}


def seed_folder(run: Path, cfg: dict[str, Any], shared: Path | None, mri: Path | None = None) -> bool:
    """Pre-seed ``run`` with the shared ``baselines.json`` and, when the run uses MRI, the shared
    ``mri.json`` (the same parents and probe prompts; see the module doc); True if it resumes."""
    from darwin.search.config import load_parents_config
    from darwin.search.runfolder import config_snapshot

    if (run / "summary.json").exists():
        return True
    if (run / "run.json").exists():
        return True  # an interrupted run of this benchmark: resume it
    if shared is None or not shared.exists():
        return False
    run.mkdir(parents=True, exist_ok=True)
    (run / "run.json").write_text(json.dumps(config_snapshot(load_parents_config(cfg)), indent=1))
    shutil.copy(shared, run / "baselines.json")
    if cfg["mri"]["enabled"] and mri is not None and mri.exists():
        shutil.copy(mri, run / "mri.json")
    return True


def guard_ppl(folder: Path) -> float:
    """Perplexity of the guard text (first 2048 tokens, windows of 512) for a model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from darwin.fitness.perplexity import PerplexityFitness

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    f = PerplexityFitness([GEN / "data" / "guard.txt"], max_tokens=2048, window=512)
    return f.to_perplexity(f(model, tok))


def best_uniform_folder(run: Path, summary: dict[str, Any], work: Path) -> Path:
    """The best tuned uniform merge of ``run`` written to ``work`` (cached), from its plain recipe."""
    import darwin
    from darwin.search.baselines import PairRefs, recipe_of_setting

    name = summary["best_uniform"]
    out = work / name.replace(" ", "-")
    if (out / "config.json").exists():
        return out
    snap = json.loads((run / "run.json").read_text())
    base = json.loads((run / "baselines.json").read_text())
    a, b = snap["parents"]
    if name == "uniform 0.5":
        recipe = {"merge_method": "linear", "dtype": "bfloat16",
                  "models": [{"model": a, "parameters": {"weight": 0.5}}, {"model": b, "parameters": {"weight": 0.5}}]}
    else:
        recipe = recipe_of_setting(name.removeprefix("tuned "), base[name]["setting"],
                                   PairRefs(a, b, snap["base"], "bfloat16", 0))
    darwin.merge(recipe, out, force=True, progress=False)
    return out


def run_arm(arm: str, seed: int, args: argparse.Namespace, shared: dict[str, Path]) -> dict[str, Any]:
    """One evolve run (resumed or seeded when possible) and its row."""
    import darwin

    pair = ("control-prose-0-14", "control-code-15-29") if arm == "zones-control" else ("prose", "code")
    cfg = config(arm, seed, args.window, args.patience, pair)
    run = args.work / f"{arm}-s{seed}"
    resume = seed_folder(run, cfg, shared.get(pair[0]), shared.get(f"{pair[0]} mri"))
    t0 = time.perf_counter()
    if not (run / "summary.json").exists():
        darwin.evolve(cfg, run, resume=resume, force=not resume, progress=False)
    seconds = time.perf_counter() - t0
    shared.setdefault(pair[0], run / "baselines.json")
    if (run / "mri.json").exists():
        shared.setdefault(f"{pair[0]} mri", run / "mri.json")
    s = json.loads((run / "summary.json").read_text())
    hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines() if x.strip()]
    c, cand = s["child_vs_best_uniform"], s["candidate_vs_best_uniform"]
    guard_child = guard_ppl(run / "child")
    guard_uni = guard_ppl(best_uniform_folder(run, s, args.work / f"uniform-{pair[0]}"))
    return {"arm": arm, "seed": seed, "child": s["child"], "best_uniform": s["best_uniform"],
            "evaluations": sum(len(h["candidates"]) for h in hist), "generations": len(hist),
            "delta_test": c["delta_test"], "ci95": c["ci95"], "gap": c["generalization_gap"],
            "candidate_delta_test": cand["delta_test"] if cand else None,
            "candidate_ci95": cand["ci95"] if cand else None,
            "candidate_delta_search": cand["delta_search"] if cand else None,
            "guard_ppl_child": guard_child, "guard_ppl_uniform": guard_uni,
            "guard_regression": guard_child / guard_uni - 1, "seconds": round(seconds, 1),
            "models": s["models"]}


def finished_shares(work: Path) -> dict[str, Path]:
    """The shared ``baselines.json`` / ``mri.json`` of finished runs in ``work`` (earlier invocations),
    keyed as :func:`run_arm` keys them (parent pair, ``"<pair> mri"``)."""
    shared: dict[str, Path] = {}
    for run in sorted(work.glob("*-s*/summary.json")):
        pair = "control-prose-0-14" if run.parent.name.startswith("zones-control") else "prose"
        shared.setdefault(pair, run.parent / "baselines.json")
        if (run.parent / "mri.json").exists():
            shared.setdefault(f"{pair} mri", run.parent / "mri.json")
    return shared


def render(rows: list[dict[str, Any]]) -> str:
    """Markdown table: per arm and seed, the pick, Δ test vs the best uniform with its CI, the search
    candidate's own Δ, the guard."""
    f = lambda v: "–" if v is None else f"{v:+.4f}"
    ci = lambda c: "–" if not c else f"[{c[0]:+.4f}, {c[1]:+.4f}]"
    lines = ["| arm | seed | evals | child (final pick) | best uniform | Δ test child | 95% CI | "
             "Δ search cand. | Δ test cand. | cand. 95% CI | guard ppl child / uniform |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['seed']} | {r['evaluations']} | {r['child']} | {r['best_uniform']} "
                     f"| {f(r['delta_test'])} | {ci(r['ci95'])} | {f(r['candidate_delta_search'])} "
                     f"| {f(r['candidate_delta_test'])} | {ci(r['candidate_ci95'])} "
                     f"| {r['guard_ppl_child']:.3f} / {r['guard_ppl_uniform']:.3f} ({100 * r['guard_regression']:+.2f}%) |")
    return "\n".join(lines)


def main() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default="zones,darwin14")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--mri", action="store_true", help="add the τ = 0 and τ = 1 darwin14 arms")
    ap.add_argument("--control", action="store_true", help="add the positive control (zones, disjoint halves)")
    ap.add_argument("--window", type=int, default=64, help="tokens scored per document")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--work", type=Path, default=HERE / "_work" / "generalize")
    ap.add_argument("--finished", action="store_true",
                    help="only the runs of the plan that have finished (report them; start nothing)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    arms = args.arms.split(",") + (["tau0", "tau1"] if args.mri else [])
    seeds = [int(s) for s in args.seeds.split(",")]
    plan = [(a, s) for s in seeds for a in arms] + ([("zones-control", s) for s in seeds] if args.control else [])
    if args.finished:
        plan = [(a, s) for a, s in plan if (args.work / f"{a}-s{s}" / "summary.json").exists()]
    rows: list[dict[str, Any]] = []
    shared = finished_shares(args.work)
    for arm, seed in plan:
        print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed}", flush=True)
        rows.append(run_arm(arm, seed, args, shared))
        (args.work / "results.json").write_text(json.dumps(rows, indent=1))
        (args.work / "results.md").write_text(render(rows) + "\n")
        r = rows[-1]
        print(f"  child {r['child']}, Δ test {r['delta_test']:+.4f} {r['ci95']}, cand Δ test "
              f"{r['candidate_delta_test']}, guard {100 * r['guard_regression']:+.2f}% ({r['seconds']:.0f} s)",
              flush=True)
    print(render(rows))
    wins = {a: sum(1 for r in rows if r["arm"] == a and r["ci95"] and r["ci95"][0] > 0) for a in arms}
    print("seeds where the child beats the best tuned uniform with the CI above 0:", wins,
          f"(of {len(seeds)}); guard within 0.5%:",
          {a: all(abs(r["guard_regression"]) <= 0.005 or r["guard_regression"] < 0 for r in rows if r["arm"] == a)
           for a in arms})


if __name__ == "__main__":
    main()
